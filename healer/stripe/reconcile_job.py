"""The scheduled `reconcile` job, and the lock around each run: a PostgreSQL advisory lock held on
its own connection (healer.jobs.leadership), or on SQLite a lease on the reconcile state row.

Among daemons, the `reconcile` job runs on the replica that leads it (healer.jobs.leadership, by the
scheduler); this lock keeps a foreground `healer reconcile` and that replica's run from overlapping."""

from __future__ import annotations

import logging
from typing import ClassVar, Protocol

from sqlalchemy import Engine, or_, update
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.leases import db_later, db_now
from fulfilment.models import transaction
from healer.db.models import ReconcileState, insert_once
from healer.jobs.leadership import AdvisoryLock
from healer.stripe.findings import ReconcileReport
from healer.stripe.reconcile import STATE, Reconciler

log = logging.getLogger(__name__)

LOCK_KEY = 0x6865616C  # the run's advisory lock key every healer agrees on: "heal" in ASCII
LEASE_SECONDS = 1800  # SQLite only: longer than any run, so a crashed holder frees it in time

class RunLock(Protocol):
    def acquire(self) -> bool: ...

    def release(self) -> None: ...


class LeaseLock:
    """For SQLite: a lease on the reconcile state row (owner + expiry, compare-and-set), on the
    database's clock like every lease, so a daemon whose clock is off neither takes the lease
    while its holder reconciles nor writes one that is born expired (fulfilment.leases)."""

    def __init__(self, sessions: sessionmaker[Session], owner: str,
                 lease_seconds: int = LEASE_SECONDS) -> None:
        self.sessions = sessions
        self.owner = owner
        self.lease_seconds = lease_seconds

    def acquire(self) -> bool:
        with transaction(self.sessions) as session:
            insert_once(session, ReconcileState, name=STATE)
            taken = session.execute(
                update(ReconcileState)
                .where(ReconcileState.name == STATE, or_(
                    ReconcileState.lease_expires_at.is_(None),
                    ReconcileState.lease_expires_at < db_now(),
                    ReconcileState.lease_owner == self.owner))
                .values(lease_owner=self.owner, lease_expires_at=db_later(self.lease_seconds))
            )
            return bool(taken.rowcount == 1)  # type: ignore[attr-defined]

    def release(self) -> None:
        with transaction(self.sessions) as session:
            session.execute(update(ReconcileState)
                            .where(ReconcileState.name == STATE, ReconcileState.lease_owner == self.owner)
                            .values(lease_owner=None, lease_expires_at=None))


def run_lock(engine: Engine, sessions: sessionmaker[Session], owner: str) -> RunLock:
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine, LOCK_KEY, name=f"healer reconcile run {owner}")
    return LeaseLock(sessions, owner)


class ReconcileJob:
    """The scheduled job (on the replica leading `reconcile`): reconcile unless a run holds the
    lock (a foreground `healer reconcile`); a failed run is logged, recorded and counted, not
    raised, so a Stripe outage does not read as a wedged scheduler."""

    # It reads Stripe and writes the database: while either's check fails, it waits (the check
    # raises the alarm), instead of failing a run per interval.
    depends_on: ClassVar[tuple[str, ...]] = ("database", "stripe")

    def __init__(self, reconciler: Reconciler, lock: RunLock) -> None:
        self.reconciler = reconciler
        self.lock = lock

    def __call__(self) -> ReconcileReport | None:
        if not self.lock.acquire():
            log.debug("Reconciliation skipped: another run (healer reconcile) holds the lock")
            return None
        try:
            return self.reconciler.run()
        except Exception:  # recorded by the reconciler; the next run starts from the same cursor
            return None
        finally:
            self.lock.release()
