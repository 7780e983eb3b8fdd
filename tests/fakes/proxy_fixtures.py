"""Fixtures for proxies in front of shared peers: cuttable TCP proxies (tests/fakes/tcp_proxy.py) for
an outage of one peer, and an S3 proxy (tests/fakes/s3_proxy.py) that answers with S3's own errors;
each fails the code under test only, the peer itself untouched, since other tests (and other test
runs) share it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from tests.fakes.s3_proxy import S3FaultProxy
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


@pytest.fixture
def s3_fault_proxy(moto_server: str) -> Iterator[S3FaultProxy]:
    """A started S3FaultProxy in front of the session's moto server (forwarding everything until
    a test sets a fault); point the code under test's endpoint at its `url`."""
    proxy = S3FaultProxy(moto_server).start()
    yield proxy
    proxy.stop()
