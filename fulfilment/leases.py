"""Leases on the database's clock, and a lease kept alive while a step runs.

Every daemon sharing a database reads the same clock when it asks the database what time it is,
but not when it asks its own host: a daemon whose clock runs five minutes ahead would see every
live lease as expired and take it, one that runs behind would write leases that are born expired.
So lease expiry and due times are SQL expressions evaluated by the database (`db_now()`,
`db_later(seconds)`), never Python datetimes.

PostgreSQL: `statement_timestamp()`, the time the current statement started. Not `now()`, which is
the start of the *transaction*: a lease written late in a longer transaction (a webhook's, say)
would be born short by the transaction's age. Not `clock_timestamp()`, which is volatile: it moves
while one statement runs, so the rows of one `UPDATE` would be judged against different instants,
and the planner cannot use it in an index condition (`next_attempt_at <= …` on `ix_orders_due`).

SQLite (the embedded mode: one host, but one rule): `UTCDateTime` stores
'YYYY-MM-DD HH:MM:SS.ffffff' text there, and SQLite compares text byte by byte. Its own clock is
rendered in exactly that shape (`strftime('%Y-%m-%d %H:%M:%f')` gives milliseconds, padded with
'000' to microseconds), so both sort as the instants they stand for. `CURRENT_TIMESTAMP`
('YYYY-MM-DD HH:MM:SS') would not: it sorts before every stored time within its own second.

A step longer than the lease would otherwise let a second daemon claim the order and work it
twice: `LeaseKeeper` renews the lease every third of it for as long as the step runs.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Collection
from datetime import datetime
from types import TracebackType
from typing import Any

from sqlalchemy import ColumnElement, Float, literal, or_, select, update
from sqlalchemy.exc import CompileError, SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from fulfilment.errors import one_line
from fulfilment.models import Order, OrderStatus, UTCDateTime, transaction

log = logging.getLogger(__name__)

# SQLite's clock in the text shape SQLAlchemy stores UTCDateTime in (see the module docstring):
# %f is seconds with milliseconds, and a '000' appended makes them microseconds.
_SQLITE_FORMAT = "'%Y-%m-%d %H:%M:%f'"
_SQLITE_SHIFT = "'%+.3f seconds'"


class _DbNow(FunctionElement[datetime]):
    type = UTCDateTime()
    inherit_cache = True
    name = "db_now"


class _DbLater(FunctionElement[datetime]):
    """The database's time plus a number of seconds (a bound parameter, so statements cache)."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_later"


def db_now() -> ColumnElement[datetime]:
    """The database's current time, as a SQL expression."""
    return _DbNow()


def db_later(seconds: float) -> ColumnElement[datetime]:
    """The database's current time plus `seconds` (may be negative), as a SQL expression."""
    return _DbLater(literal(float(seconds), Float()))


def database_time(session: Session) -> datetime:
    """The database's current time, read: for comparing with timestamps it wrote."""
    now: datetime | None = session.scalar(select(db_now()))
    assert now is not None
    return now


@compiles(_DbNow, "postgresql")
def _now_postgresql(element: _DbNow, compiler: SQLCompiler, **kw: Any) -> str:
    return "statement_timestamp()"


@compiles(_DbLater, "postgresql")
def _later_postgresql(element: _DbLater, compiler: SQLCompiler, **kw: Any) -> str:
    return f"(statement_timestamp() + make_interval(secs => {compiler.process(element.clauses, **kw)}))"


@compiles(_DbNow, "sqlite")
def _now_sqlite(element: _DbNow, compiler: SQLCompiler, **kw: Any) -> str:
    return f"(strftime({_sqlite(compiler, _SQLITE_FORMAT)}, 'now') || '000')"


@compiles(_DbLater, "sqlite")
def _later_sqlite(element: _DbLater, compiler: SQLCompiler, **kw: Any) -> str:
    # The modifier '+120.000 seconds' shifts 'now'; printf writes the number in a form SQLite reads.
    shift = f"printf({_sqlite(compiler, _SQLITE_SHIFT)}, {compiler.process(element.clauses, **kw)})"
    return f"(strftime({_sqlite(compiler, _SQLITE_FORMAT)}, 'now', {shift}) || '000')"


def _sqlite(compiler: SQLCompiler, literal_text: str) -> str:
    # A '%' in SQL text is doubled for drivers whose parameters are %-style (not pysqlite's).
    return str(compiler.escape_literal_column(literal_text))  # type: ignore[no-untyped-call]


@compiles(_DbNow)
@compiles(_DbLater)
def _unsupported(element: FunctionElement[datetime], compiler: SQLCompiler, **kw: Any) -> str:
    if compiler.dialect.name == "default":  # str(statement): readable, never executed
        return f"{element.name}({compiler.process(element.clauses, **kw)})"
    raise CompileError(f"leases need PostgreSQL or SQLite, not {compiler.dialect.name}")


def renew_lease(session: Session, order_id: uuid.UUID, owner: str, status: OrderStatus, seconds: float) -> bool:
    """Compare-and-set: extend `owner`'s lease on the order to `seconds` from the database's now,
    if the order is still `owner`'s and still in `status`. False if it is not (someone took it,
    it was refunded, it moved on)."""
    renewed = session.execute(
        update(Order).where(Order.id == order_id, Order.lease_owner == owner, Order.status == status)
        .values(lease_expires_at=db_later(seconds))
    )
    return bool(renewed.rowcount == 1)  # type: ignore[attr-defined]


# The read-back UPDATEs of the per-step path run in a session of their own, which holds no object
# the statement could leave stale: SQLAlchemy's default synchronization (evaluating the criteria
# against the session's objects, else fetching the rows) would find nothing to do at a third of
# the statement's CPU (bench/completion_bench.py measures the pipeline's CPU per order).
NOTHING_TO_SYNCHRONIZE = {"synchronize_session": False}


def lease_for_step(
    session: Session, order_id: uuid.UUID, owner: str, statuses: Collection[OrderStatus], seconds: float
) -> Order | None:
    """Before a step starts: a full lease from the database's now, and the order as it stands, in
    one statement; None unless `owner` holds a live lease on it and it is in one of `statuses`.
    A lease that has run out is not renewed here: another daemon may claim the order any moment,
    so nothing new may be started on it."""
    return session.scalars(
        update(Order)
        .where(Order.id == order_id, Order.lease_owner == owner, Order.status.in_(statuses),
               Order.lease_expires_at > db_now())
        .values(lease_expires_at=db_later(seconds))
        .returning(Order)
        .execution_options(**NOTHING_TO_SYNCHRONIZE)
    ).one_or_none()


def lease_free(owner: str) -> ColumnElement[bool]:
    """The order may be leased to `owner`: nobody holds a live lease on it, or `owner` does."""
    return or_(
        Order.lease_expires_at.is_(None),
        Order.lease_expires_at < db_now(),
        Order.lease_owner == owner,  # our own, left behind by a step whose commit failed
    )


def release_lease(session: Session, order_id: uuid.UUID, owner: str) -> None:
    """Hand `owner`'s lease back, so another daemon may claim the order at once."""
    session.execute(
        update(Order).where(Order.id == order_id, Order.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None)
    )


class LeaseKeeper:
    """Renews one order's lease while a step runs: `with LeaseKeeper(...): do_the_step()`.

    A daemon thread renews every `every_seconds` (a third of the lease unless told), so a lease
    survives two missed renewals before it runs out. A renewal does not require the lease to be
    live: like the step's final commit, it is guarded by owner and status only, so while no one
    else has claimed the order, holding on to it is right. A renewal that finds the order gone to
    another owner (or refunded) is logged once and renewing stops; that owner keeps it, and this
    step's commit will be refused. A renewal the database cannot answer is logged and tried again
    at the next tick.
    """

    def __init__(
        self, sessions: sessionmaker[Session], order_id: uuid.UUID, owner: str, status: OrderStatus,
        lease_seconds: float, *, every_seconds: float | None = None, doing: str = "a step",
    ) -> None:
        self.sessions = sessions
        self.order_id = order_id
        self.owner = owner
        self.status = status
        self.lease_seconds = lease_seconds
        self.every = every_seconds if every_seconds is not None else lease_seconds / 3
        self.doing = doing
        self.renewals = 0  # successful ones
        self.lost = False  # another owner (or a refund) took the order while we worked it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        self._thread = threading.Thread(target=self._keep, name=f"lease-{self.order_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            # A renewal in flight is one short UPDATE; should it hang, the step need not wait for
            # it: once stopped it logs nothing, and its guard (the starting status) no longer
            # matches an order the step has moved on, nor an owner the step has handed back.
            self._thread.join(timeout=5.0)

    def renew(self) -> bool | None:
        """One renewal: True if extended, False if the order is no longer ours, None if the
        database could not be asked."""
        try:
            with transaction(self.sessions) as session:
                kept = renew_lease(session, self.order_id, self.owner, self.status, self.lease_seconds)
        except SQLAlchemyError as error:
            if not self._stop.is_set():
                log.warning("Could not renew the lease on order %s during %s (database: %s); trying again "
                            "in %.0fs", self.order_id, self.doing, one_line(error, 300), self.every)
            return None
        if kept:
            self.renewals += 1
        elif not self._stop.is_set():
            self.lost = True
            log.warning("Lease on order %s lost during %s: another worker (or a refund) has it now; this "
                        "step's result will not be recorded", self.order_id, self.doing)
        return kept

    def _keep(self) -> None:
        while not self._stop.wait(self.every):
            if self.renew() is False:
                return
