"""Pytest fixtures; imported by tests/conftest.py.

`stripe_server` is a `FakeStripeServer` (see tests/fakes/stripe_server.py): one server per session,
reset before and after every test, so tests are isolated (no objects, faults, delay, hang, logged
requests or key changes leak) while paying for one listening socket only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.stripe_server import FakeStripeServer

__all__ = ["stripe_server", "stripe_server_session"]


@pytest.fixture(scope="session")
def stripe_server_session() -> Iterator[FakeStripeServer]:
    with FakeStripeServer() as server:
        yield server


@pytest.fixture
def stripe_server(stripe_server_session: FakeStripeServer) -> Iterator[FakeStripeServer]:
    """The fake Stripe API: `.url`, `.api_key` (sk_test_...), `.webhook_secret` (whsec_...)."""
    stripe_server_session.reset()
    yield stripe_server_session
    # Also on the way out: frees requests a test left hanging before the next test starts.
    stripe_server_session.reset()
