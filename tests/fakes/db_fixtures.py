"""PostgreSQL (the real server on 127.0.0.1:5432) and SQLite databases for tests.

Each test session creates its own PostgreSQL database and drops it at the end; each test starts
from empty tables. A missing server fails the run with the command that starts it.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from fulfilment.models import Base
from healer import db
from healer.db.models import OrderStatusTally  # and so every table of healer's own
from tests.eventually import eventually
from tests.fakes.ports import free_port

PG_ADMIN_URL = os.environ.get("HEALER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
START_HINT = (
    "PostgreSQL is not answering on 127.0.0.1:5432. Start it with:\n"
    "  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
    "(or run the README's test command, which starts it)."
)


def _admin_engine() -> Engine:
    return create_engine(
        db.with_driver(PG_ADMIN_URL),
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"connect_timeout": 5},
    )


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    admin = _admin_engine()
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as error:
        pytest.fail(f"{START_HINT}\n({type(error).__name__}: {str(error).splitlines()[0]})")
    name = f"healer_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    admin.dispose()
    yield url
    admin = _admin_engine()  # a fresh pool: tests may have restarted the server
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A PostgreSQL database of its own with no schema at all (no `healer db upgrade` yet)."""
    name = f"healer_empty_{uuid.uuid4().hex[:10]}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def empty_tables(engine: Engine) -> None:
    """Every row of every table gone: orders and everything else a test or a daemon left."""
    # The order status tally last: deleting the orders appends their -1s to it (migration 0009).
    tally = OrderStatusTally.__table__
    tables = [t for t in reversed(Base.metadata.sorted_tables) if t is not tally]
    with engine.begin() as conn:
        for table in [*tables, tally]:
            conn.execute(table.delete())


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = db.make_engine(pg_url, pool_size=8)
    empty_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'healer.sqlite3'}")
    db.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def any_engine(request: pytest.FixtureRequest) -> Engine:
    """Both databases the daemon supports: the shop's PostgreSQL and the embedded SQLite."""
    return request.getfixturevalue("pg_engine" if request.param == "postgresql" else "sqlite_engine")


@pytest.fixture
def sessions(pg_engine: Engine) -> sessionmaker[Session]:
    return db.make_session_factory(pg_engine)


def unreachable_pg_url(password: str = "outage-pw-never-logged") -> str:
    """A PostgreSQL URL on 127.0.0.1 where nothing listens (a port bound, then released): a real
    database outage (connection refused) without stopping the shared server."""
    return f"postgresql://healer:{password}@127.0.0.1:{free_port()}/shop"


def _pg_ctlcluster(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]
    subprocess.run(command + (["-m", "fast"] if action != "start" else []), check=True, capture_output=True,
                   timeout=60)


def postgresql_outage(seconds: float) -> threading.Thread:
    """Stop the shared server now (every connection cut, new ones refused) and start it again
    `seconds` later, in the background; join the returned thread to know it is back."""
    _pg_ctlcluster("stop")

    def start_later() -> None:
        time.sleep(seconds)  # deliberate: the outage lasts this long
        _pg_ctlcluster("start")
        _wait_until_answering()

    thread = threading.Thread(target=start_later, name="postgresql-outage")  # not a daemon: always restarted
    thread.start()
    return thread


def restart_postgresql() -> None:
    """A real restart of the shared server: every open connection is cut."""
    _pg_ctlcluster("restart")
    _wait_until_answering()


def _wait_until_answering() -> None:
    eventually(_answering, timeout=30, interval=0.2, what="PostgreSQL to come back after a restart")


def _answering() -> bool:
    try:
        with _admin_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


@pytest.fixture
def fresh_pg_engine(pg_url: str) -> Iterator[Engine]:
    """An empty PostgreSQL database of this test's own (the session's one is at head already):
    for migrations, run from nothing."""
    admin = create_engine(db.with_driver(PG_ADMIN_URL), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"healer_empty_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = db.make_engine(pg_url.rsplit("/", 1)[0] + f"/{name}")
    yield engine
    engine.dispose()
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database of each kind the daemon supports, no migration run."""
    if request.param == "postgresql":
        yield request.getfixturevalue("fresh_pg_engine")
        return
    engine = db.make_engine(f"sqlite:///{tmp_path / 'healer.sqlite3'}")
    yield engine
    engine.dispose()
