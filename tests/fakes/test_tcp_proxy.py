"""The cuttable TCP proxy, in front of the real PostgreSQL server: what a database outage looks
like to a client through it, and that it ends on the same address."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from fulfilment.models import database_unreachable
from healer import db
from tests.fakes.tcp_proxy import TcpProxy


def select_one(url: str) -> int:
    engine = create_engine(db.with_driver(url), poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            return int(connection.scalar(text("SELECT 1")) or 0)
    finally:
        engine.dispose()


def test_a_cut_refuses_new_connections_and_closes_open_ones_until_restored(pg_proxy: TcpProxy, pg_url: str) -> None:
    url = pg_proxy.replace_port(pg_url)
    engine = db.make_engine(url)
    open_connection = engine.connect()
    assert open_connection.scalar(text("SELECT 1")) == 1 and select_one(url) == 1

    pg_proxy.cut()

    with pytest.raises(OperationalError) as refused:
        select_one(url)
    assert "Connection refused" in str(refused.value) and database_unreachable(refused.value)
    with pytest.raises(OperationalError) as dropped:
        open_connection.scalar(text("SELECT 1"))
    assert database_unreachable(dropped.value)
    open_connection.close()

    pg_proxy.restore()

    assert pg_proxy.replace_port(pg_url) == url and select_one(url) == 1
    engine.dispose()


def test_replace_port_keeps_the_scheme_user_path_and_query(pg_proxy: TcpProxy) -> None:
    moved = pg_proxy.replace_port("postgresql://healer:pw@db.example:5432/shop?sslmode=disable")

    assert moved == f"postgresql://healer:pw@127.0.0.1:{pg_proxy.port}/shop?sslmode=disable"
    assert TcpProxy(9).replace_port("http://127.0.0.1:9") == "http://127.0.0.1:0"  # not started: no port yet
