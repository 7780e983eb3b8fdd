"""Leases hold on the database's clock, and for as long as a step runs.

A daemon whose clock is far ahead must not take a live lease or an order that is not due yet; one
whose clock is behind must not write leases that are born expired (nor one ahead leases that last
an hour); a render longer than the lease keeps it, so no second daemon works the order meanwhile;
and a lease taken over by another daemon is never renewed back. Against the real PostgreSQL (and
the embedded SQLite, which stores timestamps as text), the peers of tests/fakes and the real
renderer; the only thing faked is a daemon's own clock, which is what the guarantee is about.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.leases import LeaseKeeper, database_time, db_later, db_now
from fulfilment.mailer import OutboxMailer
from fulfilment.models import Order, OrderEvent, OrderStatus, transaction, utcnow
from fulfilment.payments import DisabledPayments
from fulfilment.pipeline import Pipeline
from fulfilment.recording import RetryPolicy
from fulfilment.render import PosterInputs, render_poster
from fulfilment.storage import LocalStore
from healer import db
from tests.eventually import eventually
from tests.fakes.db_fixtures import unreachable_pg_url
from tests.fakes.shop_fixtures import Shop

HOUR = timedelta(hours=1)
LEASE = 60


def skewed(delta: timedelta) -> Callable[[], datetime]:
    return lambda: utcnow() + delta


# -- a bare pipeline on either database: enough to claim, renew and hand back leases ------------


def bare_pipeline(sessions: sessionmaker[Session], tmp_path: Path, *, clock: Callable[[], datetime] = utcnow,
                  lease_seconds: int = LEASE) -> Pipeline:
    def no_render(_inputs: PosterInputs) -> bytes:
        raise AssertionError("these tests never render")

    return Pipeline(
        sessions=sessions, store=LocalStore(tmp_path / "store"), payments=DisabledPayments(),
        mailer=OutboxMailer(tmp_path / "outbox", "posters@shop.example"), render=no_render,
        public_base_url="https://shop.example", retry=RetryPolicy(max_attempts=3, base_seconds=0, max_seconds=0),
        lease_seconds=lease_seconds, clock=clock,
    )


def new_order(sessions: sessionmaker[Session], **columns: Any) -> uuid.UUID:
    order_id = uuid.uuid4()
    values: dict[str, Any] = {"id": order_id, "email": "ada@example.com", "amount_cents": 4900, "currency": "eur",
                                  "template": "a4-portrait", "photo_key": "tmp/p.jpg", "audio_key": "tmp/a.wav",
                                  "status": OrderStatus.PAID.value, "next_attempt_at": utcnow() - timedelta(seconds=1)}
    values.update(columns)
    with transaction(sessions) as session:
        session.add(Order(**values))
    return order_id


def stored(sessions: sessionmaker[Session], order_id: uuid.UUID) -> Order:
    with sessions() as session:
        order = session.get(Order, order_id)
        assert order is not None
        return order


def story(sessions: sessionmaker[Session], order_id: uuid.UUID) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(OrderEvent.outcome).where(OrderEvent.order_id == order_id)))


def lease_left(sessions: sessionmaker[Session], order_id: uuid.UUID) -> float:
    """Seconds the order's lease has left, by the database's own clock (read with plain SQL)."""
    with sessions() as session:
        if session.get_bind().dialect.name == "postgresql":
            now = session.scalar(text("SELECT clock_timestamp()"))
        else:
            now = datetime.fromisoformat(
                session.scalar(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))).replace(tzinfo=UTC)
        expires = session.scalar(select(Order.lease_expires_at).where(Order.id == order_id))
    assert expires is not None and now is not None
    return (expires - now).total_seconds()


def expire_lease(sessions: sessionmaker[Session], order_id: uuid.UUID) -> None:
    """What the passing of time does to a lease, done in the database where the lease lives."""
    with transaction(sessions) as session:
        session.execute(update(Order).where(Order.id == order_id).values(lease_expires_at=db_later(-1)))


@pytest.fixture
def any_sessions(any_engine: Engine) -> sessionmaker[Session]:
    """Sessions on PostgreSQL, then on SQLite: the same guarantees on both."""
    return db.make_session_factory(any_engine)


# -- (a) a clock far ahead ------------------------------------------------------------------------


def test_a_daemon_whose_clock_is_far_ahead_cannot_take_a_live_lease(
        any_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    order_id = new_order(any_sessions)
    assert bare_pipeline(any_sessions, tmp_path).claim_order(order_id, "holder")

    ahead = bare_pipeline(any_sessions, tmp_path, clock=skewed(HOUR))  # the holder's lease is "long gone" to it

    assert ahead.claim("ahead", 10) == []
    assert not ahead.claim_order(order_id, "ahead")
    assert ahead.requeue(order_id, "operator retry") is OrderStatus.PAID
    assert stored(any_sessions, order_id).lease_owner == "holder" and story(any_sessions, order_id) == []
    # Once the lease really runs out, on the database's clock, anyone may take it.
    expire_lease(any_sessions, order_id)
    assert ahead.claim("ahead", 10) == [order_id]


def test_a_daemon_whose_clock_is_far_ahead_does_not_run_an_order_before_it_is_due(
        any_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    # next_attempt_at is compared across hosts too: a backoff must not be cut short by a fast clock.
    backing_off = new_order(any_sessions, next_attempt_at=utcnow() + timedelta(minutes=30))

    assert bare_pipeline(any_sessions, tmp_path, clock=skewed(HOUR)).claim("ahead", 10) == []
    assert stored(any_sessions, backing_off).lease_owner is None


# -- (b) leases are born as long as configured, whatever the daemon's clock says ----------------


@pytest.mark.parametrize("skew", [-HOUR, HOUR], ids=["behind", "ahead"])
def test_a_skewed_daemons_lease_is_as_long_as_configured_on_the_database_clock(
        any_sessions: sessionmaker[Session], tmp_path: Path, skew: timedelta) -> None:
    order_id = new_order(any_sessions)
    daemon = bare_pipeline(any_sessions, tmp_path, clock=skewed(skew))

    assert daemon.claim_order(order_id, "skewed")
    assert 0 < lease_left(any_sessions, order_id) <= LEASE  # not born expired, not an hour too long
    assert not bare_pipeline(any_sessions, tmp_path).claim_order(order_id, "rival")


@pytest.mark.parametrize("skew", [-HOUR, HOUR], ids=["behind", "ahead"])
def test_a_skewed_daemon_stamps_a_full_lease_when_a_step_is_recorded(
        any_sessions: sessionmaker[Session], tmp_path: Path, skew: timedelta) -> None:
    order_id = new_order(any_sessions, status=OrderStatus.PENDING_PAYMENT.value)
    daemon = bare_pipeline(any_sessions, tmp_path, clock=skewed(skew))
    assert daemon.claim_order(order_id, "skewed")

    result = daemon.run_step(order_id, "skewed")  # verify_payment (verification disabled): paid

    assert result is not None and result.status is OrderStatus.PAID
    assert 0 < lease_left(any_sessions, order_id) <= LEASE
    assert not bare_pipeline(any_sessions, tmp_path).claim_order(order_id, "rival")


def test_a_step_is_not_started_once_the_lease_ran_out_on_the_database_clock(
        any_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    # A daemon far behind still believes its lease has an hour left: the database says otherwise.
    order_id = new_order(any_sessions, status=OrderStatus.PENDING_PAYMENT.value)
    behind = bare_pipeline(any_sessions, tmp_path, clock=skewed(-HOUR))
    assert behind.claim_order(order_id, "behind")
    expire_lease(any_sessions, order_id)

    assert behind.run_step(order_id, "behind") is None
    assert stored(any_sessions, order_id).status == OrderStatus.PENDING_PAYMENT.value


# -- SQLite: its clock compares with the text UTCDateTime stores ----------------------------------


STORED_SHAPE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")


def test_on_sqlite_the_database_clock_has_the_shape_of_stored_timestamps(sqlite_engine: Engine) -> None:
    sessions = db.make_session_factory(sqlite_engine)
    new_order(sessions, lease_owner="a", lease_expires_at=utcnow())  # written by Python
    by_sqlite = new_order(sessions, lease_owner="b")
    with transaction(sessions) as session:
        session.execute(update(Order).where(Order.id == by_sqlite).values(lease_expires_at=db_later(LEASE)))

    with sqlite_engine.connect() as connection:
        raw = dict(connection.execute(text("SELECT lease_owner, lease_expires_at FROM orders")).all())
        now = connection.execute(select(db_now())).scalar_one()
    # Same text shape: SQLite compares these byte by byte, so they must sort as the instants do.
    assert STORED_SHAPE.fullmatch(raw["a"]) and STORED_SHAPE.fullmatch(raw["b"]), raw
    assert now.tzinfo is not None and abs((now - utcnow()).total_seconds()) < 60
    assert 0 < lease_left(sessions, by_sqlite) <= LEASE


def test_on_sqlite_a_lease_that_ran_out_a_moment_ago_is_expired(sqlite_engine: Engine) -> None:
    # Within the same second: against CURRENT_TIMESTAMP ('… HH:MM:SS', which sorts before
    # '… HH:MM:SS.800000') this lease could look live for up to a second more.
    sessions = db.make_session_factory(sqlite_engine)
    just_gone = new_order(sessions, lease_owner="a", lease_expires_at=utcnow() - timedelta(milliseconds=200))
    live = new_order(sessions, lease_owner="b", lease_expires_at=utcnow() + HOUR)

    with transaction(sessions) as session:
        expired = set(session.scalars(select(Order.id).where(Order.lease_expires_at < db_now())))
        not_before = database_time(session)
    assert expired == {just_gone} and live not in expired
    assert not_before >= stored(sessions, just_gone).lease_expires_at  # type: ignore[operator]


# -- (c) a step longer than the lease keeps it -----------------------------------------------------


def test_a_render_longer_than_the_lease_keeps_it_and_the_order_is_worked_once(shop: Shop) -> None:
    lease_seconds, render_seconds = 3, 7.0  # the render outlasts two whole leases
    order_id = shop.paid_order()
    rendering, renders = threading.Event(), Counter[str]()

    def slow_render(inputs: PosterInputs) -> bytes:
        renders["holder"] += 1
        rendering.set()
        time.sleep(render_seconds)  # deliberate: the render must outlast two whole leases
        return render_poster(shop.assets_dir, inputs, preview=False)

    holder = shop.pipeline(lease_seconds=lease_seconds, render=slow_render)
    rival = shop.pipeline(lease_seconds=lease_seconds)
    assert holder.claim("holder", 1) == [order_id]
    worker = threading.Thread(target=holder.run, args=(order_id, "holder"))
    worker.start()
    try:
        assert rendering.wait(60)
        rival_got: list[uuid.UUID] = []
        while worker.is_alive():  # for the whole render, and the steps after it
            rival_got += rival.claim("rival", 10)
            rival_got += [order_id] if rival.claim_order(order_id, "rival") else []
            time.sleep(0.2)  # deliberate: the rival's pace of tries for as long as the holder works
    finally:
        worker.join(60)

    assert rival_got == []
    assert shop.order(order_id).status == OrderStatus.COMPLETED.value
    assert renders == {"holder": 1}
    events = shop.events(order_id)
    assert Counter((e.step, e.outcome) for e in events) == Counter(
        {("verify_payment", "ok"): 1, ("migrate_files", "ok"): 1, ("render", "ok"): 1, ("email", "ok"): 1})
    assert {e.worker for e in events} == {"holder"}
    assert len(shop.emails_to("ada@example.com")) == 1


# -- (d) a renewal never takes a lease back --------------------------------------------------------


def test_a_renewal_after_another_owner_took_the_lease_does_not_steal_it_back(
        any_sessions: sessionmaker[Session], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    order_id = new_order(any_sessions)
    pipeline = bare_pipeline(any_sessions, tmp_path)
    assert pipeline.claim_order(order_id, "holder")
    keeper = LeaseKeeper(any_sessions, order_id, "holder", OrderStatus.PAID, LEASE)
    assert keeper.renew() is True  # ours: extended

    expire_lease(any_sessions, order_id)  # the holder stalled past its lease...
    assert pipeline.claim_order(order_id, "rival")  # ...and another daemon took the order
    taken = stored(any_sessions, order_id)

    with caplog.at_level(logging.WARNING, logger="fulfilment.leases"):
        assert keeper.renew() is False
    after = stored(any_sessions, order_id)
    assert (after.lease_owner, after.lease_expires_at) == ("rival", taken.lease_expires_at)
    assert keeper.lost and f"Lease on order {order_id} lost" in caplog.text


@pytest.fixture
def paused_render() -> Iterator[tuple[threading.Event, threading.Event]]:
    started, proceed = threading.Event(), threading.Event()
    yield started, proceed
    proceed.set()  # never leave a render thread waiting


def test_a_step_whose_lease_was_taken_mid_render_stops_renewing_and_records_nothing(
        shop: Shop, paused_render: tuple[threading.Event, threading.Event],
        caplog: pytest.LogCaptureFixture) -> None:
    started, proceed = paused_render

    def render(inputs: PosterInputs) -> bytes:
        started.set()
        assert proceed.wait(60)
        return render_poster(shop.assets_dir, inputs, preview=False)

    order_id = shop.paid_order()
    holder = shop.pipeline(lease_seconds=3, render=render)
    assert holder.claim_order(order_id, "holder")
    while shop.order(order_id).status != OrderStatus.FILES_MIGRATED.value:  # verified, files copied
        assert holder.run_step(order_id, "holder") is not None
    results: list[Any] = []
    caplog.set_level(logging.WARNING, logger="fulfilment")
    worker = threading.Thread(target=lambda: results.append(holder.run_step(order_id, "holder")))
    worker.start()
    try:
        assert started.wait(60)
        # An operator (or a daemon that found the lease run out) hands the order to someone else.
        with transaction(shop.sessions) as session:
            session.execute(update(Order).where(Order.id == order_id)
                            .values(lease_owner="rival", lease_expires_at=db_later(600)))
        eventually(lambda: f"Lease on order {order_id} lost during render" in caplog.text, timeout=60,
                   what="the holder to log its lost lease")
        taken = shop.order(order_id)
    finally:
        proceed.set()
        worker.join(60)

    after = shop.order(order_id)
    assert results == [None]  # the holder's result was refused
    assert (after.status, after.lease_owner) == (OrderStatus.FILES_MIGRATED.value, "rival")
    assert after.lease_expires_at == taken.lease_expires_at
    assert caplog.text.count(f"Lease on order {order_id} lost") == 1


# -- renewals through a database outage -------------------------------------------------------------


def test_a_renewal_the_database_cannot_answer_is_logged_in_one_line_and_retried(
        caplog: pytest.LogCaptureFixture) -> None:
    engine = db.make_engine(unreachable_pg_url())
    order_id = uuid.uuid4()
    try:
        with caplog.at_level(logging.WARNING, logger="fulfilment.leases"):
            with LeaseKeeper(db.make_session_factory(engine), order_id, "holder", OrderStatus.FILES_MIGRATED,
                             LEASE, every_seconds=0.1, doing="render") as keeper:
                eventually(lambda: len(caplog.records) >= 2, timeout=60,
                           what="a second renewal attempt")  # retried at the next tick, not given up
    finally:
        engine.dispose()

    assert not keeper.lost and keeper.renewals == 0
    for record in caplog.records:
        line = record.getMessage()
        assert f"Could not renew the lease on order {order_id} during render" in line
        assert "\n" not in line and record.exc_info is None and "outage-pw-never-logged" not in line
