"""Fixtures for cuttable TCP proxies (tests/fakes/tcp_proxy.py): an outage of one peer for the code
under test, the peer itself untouched, since other tests (and other test runs) share it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from tests.fakes.tcp_proxy import TcpProxy


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[int], TcpProxy]]:
    """Makes started proxies to 127.0.0.1:<port>; all are stopped when the test ends."""
    made: list[TcpProxy] = []

    def make(upstream_port: int) -> TcpProxy:
        proxy = TcpProxy(upstream_port).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.stop()


@pytest.fixture
def pg_proxy(tcp_proxy: Callable[[int], TcpProxy], pg_url: str) -> TcpProxy:
    """A proxy to the test session's PostgreSQL server: cut it for a database outage, never the
    server (other tests and other engineers' runs use it)."""
    return tcp_proxy(urlsplit(pg_url).port or 5432)
