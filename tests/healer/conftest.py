"""Fixtures shared by the tests of healer's own modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.healer.listeners import Listeners, daemon_listeners


@pytest.fixture(scope="module")
def listeners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listeners]:
    """The daemon's two apps, as healer.wiring builds them, served by uvicorn on real ports."""
    with daemon_listeners(tmp_path_factory.mktemp("listeners")) as running:
        yield running
