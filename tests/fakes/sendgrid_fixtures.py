"""Pytest fixtures; imported by tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.sendgrid_server import SendGridServer


@pytest.fixture
def sendgrid_server() -> Iterator[SendGridServer]:
    """A fresh fake SendGrid per test: `.url` (the client's host), `.api_key`, `.messages`."""
    with SendGridServer() as server:
        yield server
