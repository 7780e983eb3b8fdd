"""The healer's own leases hold on the database's clock too: the stuck sweep, its refund hold and
reconciliation (its re-queue of stuck orders, and on SQLite its one-reconciler-at-a-time lease).

A daemon whose clock is an hour ahead must not take over an order, a refund or the reconcile
lease that another owner holds live on the database's clock; a lease a skewed daemon writes must
last what it is configured to last on that clock, not be born expired or an hour too long.
Against the real PostgreSQL and SQLite, the fake Stripe server and the real pipeline. What is
faked is one clock: the daemon's (the `clock` the stuck sweep and the reconciler take for the
facts they stamp), or, where the code under test reads no Python clock at all (the SQLite reconcile
lease), SQLite's own clock set an hour behind the daemon's, which is the same skew seen from the
other side.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Select, event, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.leases import db_later
from fulfilment.models import Order, Outcome, transaction, utcnow
from fulfilment.payments import StripePayments
from healer import db
from healer.db.models import ReconcileState, insert_once
from healer.health.metrics import Metrics
from healer.jobs.refunds import REFUND_HOLDER
from healer.jobs.stuck import StuckOrders, StuckPolicy
from healer.stripe.findings import FindingKind
from healer.stripe.reconcile import STATE, ReconcileConfig, Reconciler
from healer.stripe.reconcile_job import LeaseLock, run_lock
from tests.eventually import eventually
from tests.fakes.shop_fixtures import Shop
from tests.security.test_leases import skewed

HOUR = timedelta(hours=1)
SLA = 600
LEASE = 60
REFUND_HOLD = 600  # healer.jobs.refunds holds an order this long while refunding it


def database_now(session: Session) -> datetime:
    """The database's clock, read with plain SQL (not with the helpers under test)."""
    if session.get_bind().dialect.name == "postgresql":
        now = session.scalar(text("SELECT clock_timestamp()"))
        assert isinstance(now, datetime)
        return now
    raw = session.scalar(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))
    return datetime.fromisoformat(raw).replace(tzinfo=UTC)


def seconds_left(sessions: sessionmaker[Session], expires_at: Select[datetime | None]) -> float:
    """Seconds until the lease `expires_at` selects runs out, by the database's clock."""
    with sessions() as session:
        expires = session.scalar(expires_at)
        assert expires is not None, "no lease"
        return float((expires - database_now(session)).total_seconds())


def with_sessions(shop: Shop, engine: Engine) -> Shop:
    return dataclasses.replace(shop, sessions=db.make_session_factory(engine))


def sweeper(shop: Shop, clock: Callable[[], datetime], **policy: Any) -> StuckOrders:
    client = StripePayments(shop.stripe.api_key, api_base=shop.stripe.url, timeout=5).client
    return StuckOrders(shop.sessions, shop.pipeline(), StuckPolicy(sla_seconds=SLA, **policy),
                       stripe_client=client, metrics=Metrics(), clock=clock)


def reconciler(shop: Shop, clock: Callable[[], datetime]) -> Reconciler:
    client = StripePayments(shop.stripe.api_key, api_base=shop.stripe.url, timeout=5).client
    return Reconciler(shop.sessions, client, shop.pipeline(), Metrics(), ReconcileConfig(sla_seconds=SLA),
                      worker="ahead", clock=clock, sleep=lambda _seconds: None)


def held_order(shop: Shop, owner: str, *, status: str = "paid", paid_minutes_ago: float = 20) -> uuid.UUID:
    """A verified order past the SLA, not queued, whose lease `owner` holds live on the database's
    clock: a daemon working it (or refunding it) right now."""
    at = utcnow() - timedelta(minutes=paid_minutes_ago)
    order_id = shop.paid_order(queued=False, status=status, paid_at=at, payment_verified_at=at)
    with transaction(shop.sessions) as session:
        session.execute(update(Order).where(Order.id == order_id)
                        .values(lease_owner=owner, lease_expires_at=db_later(REFUND_HOLD)))
    return order_id


def expire_order_lease(shop: Shop, order_id: uuid.UUID) -> None:
    """What the passing of time does to a lease, done in the database where the lease lives."""
    with transaction(shop.sessions) as session:
        session.execute(update(Order).where(Order.id == order_id).values(lease_expires_at=db_later(-1)))


def requeues(shop: Shop, order_id: uuid.UUID) -> int:
    return sum(1 for e in shop.events(order_id) if e.outcome == Outcome.REQUEUED.value)


@pytest.fixture
def any_shop(shop: Shop, any_engine: Engine) -> Shop:
    """The shop on PostgreSQL, then on the embedded SQLite: the same guarantees on both."""
    return with_sessions(shop, any_engine)


# -- the stuck sweep ---------------------------------------------------------------------------------


def test_a_stuck_sweep_on_a_clock_far_ahead_does_not_requeue_an_order_held_live(any_shop: Shop) -> None:
    order_id = held_order(any_shop, "holder")
    ahead = sweeper(any_shop, skewed(HOUR))  # the holder's lease is "long gone" to it

    assert ahead() == 0
    order = any_shop.order(order_id)
    assert (order.lease_owner, order.next_attempt_at) == ("holder", None)
    assert requeues(any_shop, order_id) == 0
    # Once the lease really runs out, on the database's clock, the sweep re-queues it.
    expire_order_lease(any_shop, order_id)
    assert ahead() == 1 and requeues(any_shop, order_id) == 1


def test_a_refund_sweep_on_a_clock_far_ahead_does_not_refund_an_order_held_live(shop: Shop) -> None:
    # Another daemon is refunding it right now (its hold is live): a second refund must not start.
    order_id = held_order(shop, REFUND_HOLDER, status="needs_attention", paid_minutes_ago=3 * 24 * 60)

    sweeper(shop, skewed(HOUR), refund_on_failure=True)()

    assert [r for r in shop.stripe.requests if r.path == "/v1/refunds"] == []
    order = shop.order(order_id)
    assert (order.status, order.lease_owner) == ("needs_attention", REFUND_HOLDER)


@pytest.mark.parametrize("skew", [-HOUR, HOUR], ids=["behind", "ahead"])
def test_a_refund_hold_written_by_a_skewed_daemon_lasts_what_it_should(shop: Shop, skew: timedelta) -> None:
    gave_up = utcnow() - timedelta(days=3)  # long past the grace period, on either clock
    order_id = shop.paid_order(queued=False, status="needs_attention", paid_at=gave_up,
                               payment_verified_at=gave_up)
    shop.stripe.set_delay(2.0)  # the refund call is in flight long enough to look at the hold
    sweep = threading.Thread(target=sweeper(shop, skewed(skew), refund_on_failure=True))
    sweep.start()
    try:
        eventually(lambda: shop.order(order_id).lease_owner == REFUND_HOLDER, timeout=60, what="the refund hold")
        left = seconds_left(shop.sessions, select(Order.lease_expires_at).where(Order.id == order_id))
    finally:
        sweep.join(60)
        shop.stripe.set_delay(0)

    assert 0 < left <= REFUND_HOLD  # not born expired, not an hour too long
    assert shop.order(order_id).status == "refunded"


# -- reconciliation ----------------------------------------------------------------------------------


def test_reconciliation_on_a_clock_far_ahead_does_not_requeue_an_order_held_live(any_shop: Shop) -> None:
    order_id = held_order(any_shop, "holder")
    ahead = reconciler(any_shop, skewed(HOUR))

    dry, real = ahead.run(dry_run=True), ahead.run()

    assert FindingKind.STUCK not in {f.kind for f in dry.findings + real.findings}
    order = any_shop.order(order_id)
    assert (order.lease_owner, order.next_attempt_at) == ("holder", None)
    assert requeues(any_shop, order_id) == 0
    expire_order_lease(any_shop, order_id)
    assert [f.kind for f in ahead.run().findings] == [FindingKind.STUCK] and requeues(any_shop, order_id) == 1


# -- the SQLite reconcile lease ------------------------------------------------------------------


def _sqlite_an_hour_behind(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    """Replace SQLite's strftime on this connection with one whose 'now' is an hour earlier: the
    database's clock an hour behind the daemon's, as if the daemon's were an hour ahead."""

    def strftime(fmt: str, when: str, *modifiers: str) -> str | None:
        shifted = ("-3600 seconds", *modifiers) if when == "now" else modifiers
        pristine = sqlite3.connect(":memory:")  # its built-in strftime, untouched
        try:
            marks = ", ".join("?" * (2 + len(shifted)))
            row = pristine.execute(f"SELECT strftime({marks})", (fmt, when, *shifted)).fetchone()
            return row[0] if row else None
        finally:
            pristine.close()

    dbapi_connection.create_function("strftime", -1, strftime)


@pytest.fixture
def sqlite_behind(tmp_path: Path) -> Iterator[Engine]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'behind.sqlite3'}")
    event.listen(engine, "connect", _sqlite_an_hour_behind)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def hold_reconcile_lease(sessions: sessionmaker[Session], owner: str, seconds: float) -> None:
    """`owner` holds the reconcile lease for `seconds` more on the database's clock."""
    with transaction(sessions) as session:
        insert_once(session, ReconcileState, name=STATE)
        session.execute(update(ReconcileState).where(ReconcileState.name == STATE)
                        .values(lease_owner=owner, lease_expires_at=db_later(seconds)))


def test_the_sqlite_clock_really_is_an_hour_behind_the_daemon(sqlite_behind: Engine) -> None:
    with db.make_session_factory(sqlite_behind)() as session:
        behind = (utcnow() - database_now(session)).total_seconds()
    assert 3590 < behind < 3610


def test_a_daemon_an_hour_ahead_does_not_take_the_sqlite_reconcile_lease_held_live(
        sqlite_behind: Engine) -> None:
    sessions = db.make_session_factory(sqlite_behind)
    hold_reconcile_lease(sessions, "daemon-1", 1800)
    ahead = run_lock(sqlite_behind, sessions, "daemon-2")  # what the daemon builds on SQLite

    assert not ahead.acquire()
    with sessions() as session:
        assert session.scalar(select(ReconcileState.lease_owner)) == "daemon-1"
    # Once it really runs out, on the database's clock, the next daemon takes it.
    hold_reconcile_lease(sessions, "daemon-1", -1)
    assert ahead.acquire()


def test_the_sqlite_reconcile_lease_of_a_daemon_an_hour_ahead_lasts_what_it_should(
        sqlite_behind: Engine) -> None:
    sessions = db.make_session_factory(sqlite_behind)

    assert LeaseLock(sessions, "daemon-2", lease_seconds=LEASE).acquire()

    lease = select(ReconcileState.lease_expires_at).where(ReconcileState.name == STATE)
    assert 0 < seconds_left(sessions, lease) <= LEASE
    assert not LeaseLock(sessions, "daemon-1", lease_seconds=LEASE).acquire()

