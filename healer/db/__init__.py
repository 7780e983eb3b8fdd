"""Database engine, sessions and migrations (Alembic, run from code: `healer db upgrade`)."""

from __future__ import annotations

import ast
import logging
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from checks.database import stored_revision

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic itself (and mako, under it) is imported only to migrate: `healer run` on a migrated
# database never needs it, and it would cost the daemon about 10 MiB for good (issue 17's footprint).

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str, *, pool_size: int = 5, read_only: bool = False) -> Engine:
    """An engine that survives database restarts: stale pooled connections are tested first.

    `read_only`: for the commands that only look. Such an engine can neither write nor create: a
    SQLite file that is not there is an error (not a fresh empty database), and PostgreSQL runs
    every transaction read-only.
    """
    url = with_driver(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        on_disk = bool(path) and path != ":memory:"
        options: dict[str, Any] = {"connect_args": {"timeout": 30, "check_same_thread": False}}
        if on_disk and read_only:  # the URL stays the plain one, for whoever shows it
            options = {"creator": lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30,
                                                          check_same_thread=False)}
        elif on_disk:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **options)
        event.listen(engine, "connect", _sqlite_read_pragmas if read_only else _sqlite_pragmas)
        return engine
    options = {"options": "-c default_transaction_read_only=on"} if read_only else {}
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5, "application_name": "healer", **options},
    )


def with_driver(url: str) -> str:
    """`postgresql://` means the driver we ship (psycopg2), whatever SQLAlchemy's default is."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg2://" + url[len(plain) :]
    return url


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the HTTP app read while the worker writes; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
    _sqlite_read_pragmas(dbapi_connection, _record)


def _sqlite_read_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # Setting the journal mode writes the file: a read-only connection keeps the writer's (WAL).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The schema's revision, without alembic's INFO lines (see checks.database.stored_revision);
    `upgrade` goes through alembic itself and still logs each migration it runs."""
    with engine.connect() as connection:
        return stored_revision(connection)


def head_revision() -> str | None:
    """The newest migration, the one no other revises; None if there is none.

    Read from the migrations' own `revision` and `down_revision` assignments, not through alembic's
    ScriptDirectory (see above; tests compare the two). Several heads are a branch someone forgot
    to merge: an error, as it is to alembic."""
    revises: dict[str, tuple[str, ...]] = {}
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        assigned = {target.id: node.value for node in ast.parse(path.read_text()).body
                    if isinstance(node, ast.Assign) for target in node.targets if isinstance(target, ast.Name)}
        if "revision" in assigned:
            down = ast.literal_eval(assigned.get("down_revision", ast.Constant(None)))
            revises[ast.literal_eval(assigned["revision"])] = (down,) if isinstance(down, str) else tuple(down or ())
    heads = set(revises) - {down for downs in revises.values() for down in downs}
    if len(heads) > 1:
        raise RuntimeError(f"the migrations have several heads: {', '.join(sorted(heads))}")
    return heads.pop() if heads else None
