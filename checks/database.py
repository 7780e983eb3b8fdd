"""The `database` check: the orders database answers `SELECT 1`, and its schema is at head.

A connection failure is named by what the driver says (wrong password, server down, no such
database...), because each has a different fix. The URL is shown with its password masked; the
driver's own words never contain the password, and are scrubbed of it all the same.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import ClassVar

from sqlalchemy import Connection, Engine, column, inspect, select, table, text
from sqlalchemy.exc import SQLAlchemyError

from checks.base import Check, CheckFailed, CheckWarning, Healthy, Runbook
from fulfilment.secrets import Redactor, mask_url_password, url_passwords

# No restart: a daemon that met this schema running (it was unreachable when the daemon started)
# waits on this check, and carries on once the schema is at head.
UPGRADE_REMEDY = "run `healer db upgrade` with this version of healer; a running daemon carries on by itself"


@dataclass(frozen=True)
class _Fault:
    """A connection failure recognised by a pattern in the driver's message (lower-cased)."""

    pattern: str
    kind: str
    remedy: str  # may name {user}, {host}, {port}, {database}


# First match wins, so the more specific phrases come first.
_FAULTS: tuple[_Fault, ...] = (
    _Fault("password authentication failed", "wrong password",
           "the password in DATABASE_URL is wrong for user {user}: set the current one"),
    _Fault("no password supplied", "no password",
           "the server wants a password for user {user}: add it to DATABASE_URL"),
    _Fault("no pg_hba.conf entry", "connection not allowed",
           "the server's pg_hba.conf refuses this host/user/database: allow it, or fix DATABASE_URL"),
    _Fault(r'role ".*" does not exist', "no such user",
           "user {user} does not exist on {host}: create the role, or fix the user in DATABASE_URL"),
    _Fault(r'database ".*" does not exist', "no such database",
           "database {database} does not exist on {host}: create it, or fix the name in DATABASE_URL"),
    _Fault("too many clients", "too many connections",
           "the server is out of connection slots: lower HEALER_WORKERS or raise max_connections"),
    _Fault("remaining connection slots", "too many connections",
           "the server is out of connection slots: lower HEALER_WORKERS or raise max_connections"),
    _Fault("the database system is", "server starting or stopping",
           "the server is starting up, shutting down or recovering: wait, then check its log"),
    _Fault("could not translate host name", "unknown host",
           "host {host} does not resolve: fix the host in DATABASE_URL or the DNS"),
    _Fault("connection refused", "server down",
           "nothing accepts connections at {host}:{port}: start PostgreSQL, or fix DATABASE_URL's host and port"),
    _Fault("no such file or directory", "server down",
           "no server socket at {host}: start PostgreSQL, or fix DATABASE_URL"),
    _Fault("timeout expired", "server not answering",
           "{host}:{port} did not answer in time: check the network path, firewall and the server's load"),
    _Fault("server closed the connection", "connection lost",
           "the server dropped the connection: check its log (restart, crash, or an idle-killer)"),
    _Fault("unable to open database file", "cannot open the database file",
           "the SQLite file cannot be opened: check HEALER_DATA_DIR exists and is writable"),
    _Fault("database is locked", "database locked",
           "another process holds the SQLite file: stop it, or use PostgreSQL (DATABASE_URL)"),
    _Fault("disk i/o error", "disk I/O error", "the disk under the database reports errors: check it"),
)
_UNKNOWN = _Fault("", "database error", "check DATABASE_URL, the server and its log")


@dataclass(frozen=True, kw_only=True)
class DatabaseCheck(Check):
    name: ClassVar[str] = "database"
    runbook: ClassVar[Runbook] = Runbook.DATABASE

    engine: Engine
    # The migration the code expects (healer.db.head_revision(), passed in so `checks` does not
    # import `healer`); None skips the schema comparison.
    head_revision: str | None = None
    slow_seconds: float = 1.0

    def probe(self) -> Healthy:
        started = time.monotonic()
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
                latency = time.monotonic() - started
                schema = self._schema(connection)
        except SQLAlchemyError as error:
            raise self._failure(error) from None
        where = self._where()
        if latency > self.slow_seconds:
            raise CheckWarning(
                f"slow: SELECT 1 took {latency * 1000:.0f} ms (over {self.slow_seconds * 1000:.0f} ms) "
                f"on {where}",
                "check the database server's load and the network path to it",
                {"query_seconds": latency},
            )
        return Healthy(f"SELECT 1 in {latency * 1000:.0f} ms; {schema}; {where}", {"query_seconds": latency})

    def _schema(self, connection: Connection) -> str:
        if self.head_revision is None:
            return "schema not compared"
        current = stored_revision(connection)
        if current == self.head_revision:
            return f"schema at head ({current})"
        shown = f"at {current}" if current else "empty (no migrations applied)"
        raise CheckFailed(
            f"migrations not at head: schema {shown}, this code expects {self.head_revision}",
            UPGRADE_REMEDY,
        )

    def _failure(self, error: SQLAlchemyError) -> CheckFailed:
        said = self._scrub(_first_line(getattr(error, "orig", None) or error))
        fault = next((f for f in _FAULTS if re.search(f.pattern, said.lower())), _UNKNOWN)
        url = self.engine.url
        remedy = fault.remedy.format(
            user=url.username or "(none)",
            host=url.host or "localhost",
            port=url.port or 5432,
            database=url.database or "(none)",
        )
        return CheckFailed(f"{fault.kind}: {said} ({self._where()})", remedy)

    def _where(self) -> str:
        # libpq also takes the password as a query parameter, which SQLAlchemy's hide_password
        # leaves alone: both are masked.
        return mask_url_password(self._url())

    def _scrub(self, said: str) -> str:
        return Redactor(url_passwords(self._url()))(said)

    def _url(self) -> str:
        return self.engine.url.render_as_string(hide_password=False)


def stored_revision(connection: Connection, version_table: str = "alembic_version") -> str | None:
    """The schema's Alembic revision, read from Alembic's version table; None before any migration.

    Read directly rather than through alembic's MigrationContext: making one logs "Context impl
    ..." and "Will assume transactional DDL" at INFO, which on a probe every few seconds buries the
    log. Turning alembic's logger down instead would be process-wide (checks run on threads), and
    would hide those lines from `healer db upgrade` too, where they belong.
    """
    if not inspect(connection).has_table(version_table):
        return None
    versions = table(version_table, column("version_num"))
    heads = sorted(connection.scalars(select(versions.c.version_num)).all())
    # Unmerged branches leave several rows: shown together, they can never equal the one head.
    return "+".join(heads) or None


def _first_line(error: object) -> str:
    # The driver's message: the first line says what happened; SQLAlchemy's tail (SQL, link) adds
    # nothing for a connection check.
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]
