"""Stuck orders re-queued by themselves, and the delay email policy, against PostgreSQL, the
SendGrid and Stripe servers and the real pipeline (refunds: test_refunds.py)."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine

from fulfilment.mailer import SendGridMailer
from fulfilment.models import Outcome, utcnow
from fulfilment.payments import StripePayments
from healer import db
from healer.health.metrics import Metrics
from healer.jobs.stuck import StuckOrders, StuckPolicy, requeue_stuck
from healer.worker import Worker
from tests.eventually import eventually
from tests.fakes.shop_fixtures import FROM_EMAIL, Shop

SLA = 600


def paid(shop: Shop, minutes_ago: float, status: str = "paid", **columns: Any) -> uuid.UUID:
    """A verified order, paid `minutes_ago`, not queued unless `columns` say so."""
    at = utcnow() - timedelta(minutes=minutes_ago)
    columns.setdefault("queued", False)
    return shop.paid_order(status=status, paid_at=at, payment_verified_at=at, **columns)


def sweeper(shop: Shop, **policy: Any) -> StuckOrders:
    mailer = SendGridMailer(shop.sendgrid.api_key, FROM_EMAIL, api_base=shop.sendgrid.url, timeout=5)
    client = StripePayments(shop.stripe.api_key, api_base=shop.stripe.url, timeout=5).client
    return StuckOrders(shop.sessions, shop.pipeline(), StuckPolicy(sla_seconds=SLA, **policy),
                       mailer=mailer, stripe_client=client, metrics=Metrics())


def requeued(shop: Shop, order_id: uuid.UUID) -> int:
    return sum(1 for e in shop.events(order_id) if e.outcome == Outcome.REQUEUED.value)


def test_stuck_orders_are_requeued_oldest_first(shop: Shop) -> None:
    newest, oldest, middle = paid(shop, 60), paid(shop, 180), paid(shop, 120, status="files_migrated")

    first = requeue_stuck(shop.sessions, sla_seconds=SLA, limit=2)

    assert [s.order_id for s in first] == [oldest, middle]
    assert shop.pipeline().claim("worker", 1) == [oldest]  # the longest wait is served first
    assert [s.order_id for s in requeue_stuck(shop.sessions, sla_seconds=SLA)] == [newest]
    line = shop.events(middle)[-1]
    assert (line.step, line.outcome) == ("render", "requeued") and "not completed within" in line.message


def test_orders_that_are_not_stuck_are_left_alone(shop: Shop) -> None:
    now = utcnow()
    leased = paid(shop, 60, lease_owner="other", lease_expires_at=now + timedelta(minutes=1))
    fresh = paid(shop, 5)
    due = paid(shop, 60, next_attempt_at=now - timedelta(seconds=1))
    done = paid(shop, 60, status="completed")
    gave_up = paid(shop, 60, status="needs_attention")
    unpaid = shop.paid_order(queued=False, created_at=now - timedelta(hours=2))

    assert requeue_stuck(shop.sessions, sla_seconds=SLA) == []
    for order_id in (leased, fresh, due, done, gave_up, unpaid):
        assert shop.events(order_id) == []


def test_order_in_a_long_backoff_is_left_to_its_retry(shop: Shop) -> None:
    # Re-queueing it every sweep would spend its attempts in minutes and give up on a paid order
    # during a short outage; it is counted as stuck (metrics, orders check) but waits its turn.
    retry_at = utcnow() + timedelta(minutes=30)
    order_id = paid(shop, 90, attempts=4, next_attempt_at=retry_at)

    assert sweeper(shop)() == 0

    order = shop.order(order_id)
    assert order.attempts == 4 and abs((order.next_attempt_at - retry_at).total_seconds()) < 1


def test_order_whose_lease_expired_long_ago_is_requeued(shop: Shop) -> None:
    order_id = paid(shop, 90, lease_owner="dead-daemon", lease_expires_at=utcnow() - timedelta(minutes=5))

    assert [s.order_id for s in requeue_stuck(shop.sessions, sla_seconds=SLA)] == [order_id]


def test_several_daemons_sweeping_at_once_requeue_each_order_once(shop: Shop) -> None:
    orders = [paid(shop, 60 + i) for i in range(10)]

    with ThreadPoolExecutor(4) as pool:
        swept = list(pool.map(lambda _: len(requeue_stuck(shop.sessions, sla_seconds=SLA)), range(4)))

    assert sum(swept) == 10
    assert Counter(requeued(shop, o) for o in orders) == Counter({1: 10})


def test_requeued_order_waits_without_spending_attempts_while_its_check_fails(shop: Shop) -> None:
    order_id = paid(shop, 60, attempts=2)
    requeue_stuck(shop.sessions, sla_seconds=SLA)
    pipeline = shop.pipeline(gate=lambda checks: "s3 failing: access denied" if "s3" in checks else None)

    [claimed] = pipeline.claim("worker", 5)
    [result] = pipeline.run(claimed, "worker")

    assert result.outcome is Outcome.WAITING and shop.order(order_id).attempts == 2


def test_requeued_stuck_order_is_completed_by_the_worker(shop: Shop) -> None:
    order_id = paid(shop, 60)
    sweeper(shop)()
    worker = Worker(shop.pipeline(), concurrency=1, owner="worker")
    try:
        eventually(lambda: shop.order(order_id).status == "completed", timeout=90, interval=0.1, step=worker.tick,
                   what="the requeued order to complete")
    finally:
        worker.shutdown()


def test_delay_email_is_off_by_default(shop: Shop) -> None:
    paid(shop, 600, status="files_migrated")

    sweeper(shop)()

    assert shop.sendgrid.messages == []


def test_delay_email_goes_once_to_customers_past_the_longer_sla(shop: Shop) -> None:
    late = paid(shop, 120, status="files_migrated", email="late@example.com")
    paid(shop, 20, email="recent@example.com")
    paid(shop, 120, status="completed", email="served@example.com")
    sweep = sweeper(shop, delay_email_after_seconds=3600)

    sweep()
    sweep()

    [message] = shop.sendgrid.messages
    assert message.to == ("late@example.com",) and "late" in message.subject
    assert str(late) in (message.text or "")


def test_delay_email_that_fails_to_send_is_tried_again(shop: Shop) -> None:
    paid(shop, 120, email="late@example.com")
    shop.sendgrid.fail_next(500, count=1)
    sweep = sweeper(shop, delay_email_after_seconds=3600)

    sweep()
    assert shop.sendgrid.messages == []
    sweep()

    assert [m.to for m in shop.sendgrid.messages] == [("late@example.com",)]


def test_stuck_orders_are_requeued_on_the_embedded_sqlite_database(shop: Shop, sqlite_engine: Engine) -> None:
    lite = dataclasses.replace(shop, sessions=db.make_session_factory(sqlite_engine))
    newer, older = paid(lite, 30), paid(lite, 90, attempts=2)

    assert [s.order_id for s in requeue_stuck(lite.sessions, sla_seconds=SLA)] == [older, newer]
    assert lite.order(older).attempts == 2 and requeued(lite, older) == 1
    assert requeue_stuck(lite.sessions, sla_seconds=SLA) == []
