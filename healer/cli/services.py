"""The database an operator's command works on, opened so that it can never be the wrong one
quietly: a command never creates a database, a data directory or a schema (only `healer run`,
`healer demo` and `healer db upgrade` do). Run from the wrong directory, or against a database that
is not the daemon's, it says which one it looked at and how to point it elsewhere, in one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import SQLAlchemyError

from fulfilment.models import database_unreachable
from fulfilment.secrets import mask_url_password
from healer import db
from healer.config import Settings
from healer.errors import OperatorError
from healer.wiring import Services

POINT_ELSEWHERE = "set DATABASE_URL (or HEALER_DATA_DIR, for the embedded SQLite database) to the daemon's"


class NoDatabase(OperatorError):
    """The database a command would read is not there, not reachable, or not healer's schema."""


def open_services(settings: Settings, *, read_only: bool) -> Services:
    """Services on an existing database whose schema is this healer's. `read_only`: the engine
    cannot write (commands that only look)."""
    require_database_file(settings)
    services = Services.build(settings, read_only=read_only)
    try:
        require_current_schema(settings, services)
    except BaseException:
        services.close()
        raise
    return services


def require_database_file(settings: Settings) -> None:
    if not settings.uses_embedded_database:
        return
    path = settings.data_dir / "healer.sqlite3"
    if not path.is_file():
        raise NoDatabase(f"no healer database at {path} (HEALER_DATA_DIR={settings.data_dir}): "
                         f"run this where the daemon runs, or {POINT_ELSEWHERE}")


def require_current_schema(settings: Settings, services: Services) -> None:
    where = database_name(settings)
    try:
        current = db.current_revision(services.engine)
    except SQLAlchemyError as error:
        raise unreachable(settings, error) from error
    head = db.head_revision()
    if current is None:
        raise NoDatabase(f"the database at {where} has no healer schema: {POINT_ELSEWHERE} "
                         "(or create the schema with `healer db upgrade`)")
    if current != head:
        raise NoDatabase(f"the database at {where} is at schema revision {current}, this healer expects {head}: "
                         "run `healer db upgrade` (or use the healer version that migrated it)")


def unreachable(settings: Settings, error: BaseException) -> NoDatabase:
    """One line for a database that refused the connection or the query."""
    said = _first_line(getattr(error, "orig", None) or error)
    what = "does not answer" if database_unreachable(error) else "refused the query"
    return NoDatabase(f"the database at {database_name(settings)} {what} ({said}): "
                      f"start it, or {POINT_ELSEWHERE}")


def database_name(settings: Settings) -> str:
    """The database's URL, password masked: safe to print."""
    return mask_url_password(settings.effective_database_url)


def _first_line(error: object) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:200]


@contextmanager
def database(settings: Settings, *, read_only: bool) -> Iterator[Services]:
    """`open_services` for the length of a block."""
    services = open_services(settings, read_only=read_only)
    try:
        yield services
    finally:
        services.close()
