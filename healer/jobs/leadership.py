"""Leadership of singleton work among replicas sharing one database.

Order work is shared by every replica through the orders' leases; some work must run on one
replica at a time: Stripe reconciliation, the stuck-order sweep, the canary, container restarts.
Each such role is led by whichever replica holds its PostgreSQL session-level advisory lock
(`pg_try_advisory_lock`), on a connection of its own kept open while it leads (AUTOCOMMIT, outside
the engine's pool, so it costs the pool nothing and no lock goes back into it).

No lease to renew and no clock to trust: when the leader dies, its connection drops and the server
frees the lock with it, so a follower's next try takes it. A replica asks `lead(role)` once per
period of the role's work: the leader re-asserts that it still holds the lock (a lost connection,
a terminated backend or a database restart is lost leadership, logged once), a follower tries to
take it. So leadership moves within one period of the leader's death, and a replica that lost it
follows until it can take it again.

On SQLite (dev, `healer demo`: one process on one file) every role is this process's.

What a replica knows of a role is what its last `lead` found (`roles()`: /health's `leader`,
healer_leader), and why a role it does not lead is not its own (`view()`: the status page): another
replica holds it, its last try met a database error, it has not been asked for yet (the canary's
first period, a container to restart), or this replica is stopping. Nothing here asks the database
for a report: a page or a probe reads memory.

Except while the database check fails (`on_check_result`, a health monitor listener): a job
waiting on that check is not run, so its `lead` is not asked, maybe for a whole period (the
canary's is 15 minutes), while the lock's connection may be gone and another replica may lead.
So when the check starts failing, this replica claims no role: it lets go of every lock without
asking the server (closing the connection frees the lock if the server still has it) and says
no_database; once the check passes, it asks for each such role at once, on a new connection.

`AdvisoryLock` is the one advisory lock of the daemon: leadership holds one per role, and
reconciliation (healer.stripe.reconcile_job) takes one around each run, so that a foreground
`healer reconcile` and the leader's scheduled run never overlap.
"""

from __future__ import annotations

import enum
import logging
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from checks.base import CheckResult, Status
from checks.database import DatabaseCheck
from fulfilment.errors import one_line

log = logging.getLogger(__name__)

LOCK_NAMESPACE = 0x6865616C  # "heal" in ASCII: the high half of every role's lock key
LOST = "Lost leadership of %s (%s): following until its lock can be taken again"


def role_key(role: str) -> int:
    """The advisory lock key of a role, the same in every replica and version: "heal" in the high
    32 bits, the CRC-32 of the role's name in the low ones (a positive bigint)."""
    return (LOCK_NAMESPACE << 32) | zlib.crc32(role.encode())


class RoleLock(Protocol):
    def acquire(self) -> bool: ...  # take it if free; never waits

    def held(self) -> bool: ...  # still ours? raises if the database cannot say

    def release(self) -> None: ...

    def drop(self) -> None: ...  # let go without asking the database (it may be gone)


class AdvisoryLock:
    """A PostgreSQL session-level advisory lock on a connection of its own. If the process dies,
    the server drops the connection and the lock with it: no stale lock to expire."""

    def __init__(self, engine: Engine, key: int, *, name: str = "healer") -> None:
        self.engine = engine
        self.key = key
        self.name = name  # the connection's application_name: who holds it, in pg_stat_activity
        self._connection: Connection | None = None

    def acquire(self) -> bool:
        if self._connection is not None:
            return self.held()
        connection = self.engine.connect()
        try:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            # Out of the pool: a connection held for hours must not shrink it, and one that held a
            # session lock must never be handed to other work. Closing it now really closes it.
            connection.detach()
            taken = bool(connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}))
            if taken:
                connection.execute(text("SELECT set_config('application_name', :name, false)"),
                                   {"name": self.name[:63]})
        except BaseException:
            connection.close()
            raise
        if not taken:
            connection.close()
            return False
        self._connection = connection
        return True

    def held(self) -> bool:
        """Whether the lock is still this connection's, from the server's own lock table; a
        connection that fails to answer is dropped (the server frees the lock when it notices)."""
        connection = self._connection
        if connection is None:
            return False
        high, low = divmod(self.key, 1 << 32)
        try:
            held = bool(connection.scalar(text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = pg_backend_pid() AND classid = :high AND objid = :low AND objsubid = 1)"),
                {"high": high, "low": low}))
        except BaseException:
            self.drop()
            raise
        if not held:
            self.drop()
        return held

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
        except SQLAlchemyError:
            pass  # closing the session frees the lock all the same
        finally:
            connection.close()

    def drop(self) -> None:
        """Close the connection without a statement: the server frees the lock with the session
        (at once if it can still hear us), and nothing here waits on a database that is gone."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.invalidate()
            connection.close()


class SoleLock:
    """Where one process owns the database (SQLite): every role is always its own."""

    def acquire(self) -> bool:
        return True

    def held(self) -> bool:
        return True

    def release(self) -> None:
        return None

    def drop(self) -> None:
        return None


class Standing(enum.StrEnum):
    """Where this replica stands on one role, as of its last `lead` of it."""

    LEADS = "leads"
    FOLLOWS = "follows"  # another replica holds the role's lock
    # Its last try met a database error, or the database check has failed since: not led here,
    # maybe by none.
    NO_DATABASE = "no_database"
    NOT_TRIED = "not_tried"  # declared, never asked for yet: its work has not come up here
    RELEASED = "released"  # this replica is stopping and gave it up


@dataclass(frozen=True)
class LeadershipView:
    """Every declared role's standing, read at once with what `roles()` answers (a role is led
    exactly when its standing is LEADS); `sole`: one process owns the database (SQLite), so no
    other replica can lead anything."""

    standings: dict[str, Standing]
    sole: bool

    def having(self, standing: Standing) -> tuple[str, ...]:
        """The roles of that standing, in the order they were declared."""
        return tuple(role for role, found in self.standings.items() if found is standing)


class Leadership:
    """Which roles this replica leads, one lock per role from `make_lock`; thread-safe (jobs and
    the remediator ask from their own threads). `sole`: every lock is this process's whatever
    happens (SoleLock), said so on the status page."""

    def __init__(self, make_lock: Callable[[str], RoleLock], *, sole: bool = False) -> None:
        self._make_lock = make_lock
        self.sole = sole
        self._locks: dict[str, RoleLock] = {}
        self._role_locks: dict[str, threading.Lock] = {}
        self._leading: dict[str, bool] = {}
        self._failing: set[str] = set()  # roles whose last try met a database error, or since (said once)
        self._tried: set[str] = set()  # roles asked for at least once: the others are not contended yet
        self._closed = False
        self._guard = threading.Lock()

    def declare(self, role: str) -> None:
        """A role this replica may lead: reported (as not led) before its first `lead`."""
        with self._guard:
            self._leading.setdefault(role, False)
            self._role_locks.setdefault(role, threading.Lock())

    def lead(self, role: str) -> bool:
        """Keep or take `role`, asking the database: True while this replica leads it. Call it once
        per period of the role's work, right before doing it. Never raises: a database that cannot
        answer is not leading."""
        self.declare(role)
        with self._role_locks[role]:
            if self._closed:
                return False
            lock = self._locks.get(role) or self._locks.setdefault(role, self._make_lock(role))
            if self._leading[role] and self._still_held(role, lock):
                return True
            try:
                taken = lock.acquire()
            except SQLAlchemyError as error:
                self._failed(role, error)
                taken, failing = False, True
            else:
                failing = False
            if taken:
                log.info("Leading %s now: this replica runs it until it stops or loses the database", role)
            self._settle(role, taken, failing=failing)
            return taken

    def leads(self, role: str) -> bool:
        """Whether this replica led `role` at its last `lead`, without asking the database."""
        with self._guard:
            return self._leading.get(role, False)

    def roles(self) -> dict[str, bool]:
        """Every declared role, and whether this replica leads it (healer_leader, /health)."""
        with self._guard:
            return dict(self._leading)

    def view(self) -> LeadershipView:
        """Every declared role's standing (the status page): `roles()` and why a role is not led
        here, from one reading under the same lock, so the two never disagree."""
        with self._guard:
            return LeadershipView({role: self._standing(role, leading) for role, leading in self._leading.items()},
                                  self.sole)

    def _standing(self, role: str, leading: bool) -> Standing:
        # Under self._guard. A role led is led whatever else is known of it (released roles are not).
        if leading:
            return Standing.LEADS
        if self._closed:
            return Standing.RELEASED
        if role in self._failing:
            return Standing.NO_DATABASE
        return Standing.FOLLOWS if role in self._tried else Standing.NOT_TRIED

    def release(self) -> None:
        """Give up every role (shutdown): the others take them at their next period. Later calls
        of `lead` answer False, so a job still finishing cannot take a role back."""
        with self._guard:
            self._closed = True
            roles = list(self._role_locks.items())
        for role, guard in roles:
            with guard:
                lock = self._locks.pop(role, None)
                if lock is not None:
                    lock.release()
                if self._leading.get(role):
                    log.info("Released leadership of %s: another replica takes it over", role)
                self._set(role, False)

    def on_check_result(self, new: CheckResult, previous: CheckResult | None) -> None:
        """A health monitor listener: see the module. Only the database check's transitions count:
        a `lead` that succeeds while it still fails is an answer from the database, and stands."""
        if new.name != DatabaseCheck.name:
            return
        was_failing = previous is not None and previous.status is Status.FAILING
        if new.status is Status.FAILING and not was_failing:
            self._unconfirm()
        elif was_failing and new.status is not Status.FAILING:
            with self._guard:
                waiting = [role for role in self._leading if role in self._failing]
            for role in waiting:
                self.lead(role)

    def _unconfirm(self) -> None:
        with self._guard:
            roles = [role for role in self._leading if role in self._tried and not self._closed]
        for role in roles:
            guard = self._role_locks[role]
            # A try under way settles the role itself, with the database's own answer; waiting for
            # it could hold this check's thread for a connect timeout.
            if not guard.acquire(blocking=False):
                continue
            try:
                lock = self._locks.get(role)
                if lock is not None:
                    lock.drop()
                if self.leads(role):
                    log.warning(LOST, role, "the database check is failing, so its lock cannot be confirmed")
                self._settle(role, False, failing=True)
            finally:
                guard.release()

    def _still_held(self, role: str, lock: RoleLock) -> bool:
        try:
            if lock.held():
                return True
            why = "the lock is no longer this replica's"
        except SQLAlchemyError as error:
            why = f"its database connection failed: {one_line(error, 300)}"
            with self._guard:
                self._failing.add(role)
        log.warning(LOST, role, why)
        self._set(role, False)
        return False

    def _failed(self, role: str, error: SQLAlchemyError) -> None:
        # While the database is down every period fails alike: the database check raises the
        # alarm; one line here when it starts.
        with self._guard:
            level = logging.DEBUG if role in self._failing else logging.WARNING
        log.log(level, "Cannot try to lead %s: %s; trying again next period", role, one_line(error, 300))

    def _set(self, role: str, leading: bool) -> None:
        with self._guard:
            self._leading[role] = leading

    def _settle(self, role: str, leading: bool, *, failing: bool) -> None:
        """The outcome of a try: led or not, and whether the database answered it."""
        with self._guard:
            self._leading[role] = leading
            self._tried.add(role)
            if failing:
                self._failing.add(role)
            else:
                self._failing.discard(role)


def leadership_for(engine: Engine, owner: str) -> Leadership:
    """Advisory locks on PostgreSQL; on SQLite (one process, one file) this process leads all.
    `owner` names this replica on its lock connections (pg_stat_activity.application_name)."""
    if engine.dialect.name == "postgresql":
        return Leadership(lambda role: AdvisoryLock(engine, role_key(role), name=f"healer {role} leader {owner}"))
    return Leadership(lambda _role: SoleLock(), sole=True)
