"""Reconciliation against the fake Stripe server (through the real `stripe` library) and PostgreSQL:
lost webhooks, stuck and orphan payments, the cursor, rate limits, the lock and the command."""

from __future__ import annotations

import dataclasses
import io
import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
import stripe
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from rich.console import Console
from sqlalchemy import Engine, event, select, update

from fulfilment.leases import db_later
from fulfilment.models import Base, Order, transaction, utcnow
from fulfilment.payments import StripePayments
from healer import db
from healer.cli.reconcile import run_reconcile_command
from healer.config import Settings
from healer.db.models import OrphanPayment, ReconcileRun, ReconcileState
from healer.errors import OperatorError
from healer.health.metrics import Metrics
from healer.jobs.leadership import AdvisoryLock
from healer.stripe.findings import FindingKind
from healer.stripe.matching import crossed_checkpoint
from healer.stripe.reconcile import ReconcileConfig, Reconciler
from healer.stripe.reconcile_job import LOCK_KEY, LeaseLock, ReconcileJob
from healer.wiring import Services
from healer.worker import Worker
from tests.eventually import eventually
from tests.fakes.shop_fixtures import Shop
from tests.fakes.stripe_server import FakeStripeServer

LIST = "/v1/payment_intents"


def stripe_client(server: FakeStripeServer) -> stripe.StripeClient:
    return StripePayments(server.api_key, api_base=server.url, timeout=5).client


class Sleeps(list[float]):
    """Records the backoff asked for; the test does not wait it out."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def reconciler(shop: Shop, *, metrics: Metrics | None = None, clock: Any = utcnow,
               sleep: Any = None, **config: Any) -> Reconciler:
    return Reconciler(shop.sessions, stripe_client(shop.stripe), shop.pipeline(), metrics or Metrics(),
                      ReconcileConfig(sla_seconds=600, **config), worker="test",
                      clock=clock, sleep=Sleeps() if sleep is None else sleep)


def run_worker_until(shop: Shop, done: Any, timeout: float = 90.0) -> None:
    worker = Worker(shop.pipeline(), concurrency=2, owner="worker")
    try:
        eventually(done, timeout=timeout, interval=0.1, step=worker.tick, what="the worker to finish the orders")
    finally:
        worker.shutdown()


def bare_orders(shop: Shop, payment_ids: list[str], status: str = "completed") -> list[uuid.UUID]:
    """Order rows for existing payments, without uploads: enough for reconciliation to match."""
    ids = [uuid.uuid4() for _ in payment_ids]
    with transaction(shop.sessions) as session:
        session.add_all(Order(id=oid, email="ada@example.com", stripe_payment_intent_id=pi,
                              amount_cents=4900, currency="eur", template="a4-portrait", status=status,
                              paid_at=utcnow())
                        for oid, pi in zip(ids, payment_ids, strict=False))
    return ids


def pending_order(
    shop: Shop, *, created: datetime | None = None, payment_status: str = "succeeded",
    payment_amount: int = 4900, link: bool = True,
) -> uuid.UUID:
    """A checkout begun at `created`: its PaymentIntent (named by metadata) and its order row."""
    created = created or utcnow()
    order_id = uuid.uuid4()
    intent = shop.stripe.create_payment_intent(payment_amount, "eur", {"order_id": str(order_id)},
                                               status=payment_status, created=int(created.timestamp()))
    with transaction(shop.sessions) as session:
        session.add(Order(id=order_id, email="ada@example.com", amount_cents=4900, currency="eur",
                          template="a4-portrait", created_at=created,
                          stripe_payment_intent_id=intent["id"] if link else None))
    return order_id


def retrieves(shop: Shop) -> int:
    return sum(1 for r in shop.stripe.requests if r.path.startswith(LIST + "/"))


def orphans(shop: Shop) -> list[OrphanPayment]:
    with shop.sessions() as session:
        return list(session.scalars(select(OrphanPayment)))


def runs(shop: Shop) -> list[ReconcileRun]:
    with shop.sessions() as session:
        return list(session.scalars(select(ReconcileRun).order_by(ReconcileRun.id)))


def test_lost_webhook_order_is_completed_by_reconciliation_alone(shop: Shop) -> None:
    order_id = shop.paid_order(queued=False)  # paid in Stripe; the shop never heard of it

    report = reconciler(shop).run()

    assert [(f.kind, f.order_id) for f in report.findings] == [(FindingKind.MISSED_WEBHOOK, order_id)]
    order = shop.order(order_id)
    assert order.status == "paid" and order.next_attempt_at is not None
    run_worker_until(shop, lambda: shop.order(order_id).status == "completed")
    assert len(shop.emails_to("ada@example.com")) == 1
    assert "found by reconciliation" in shop.events(order_id)[0].message


def test_paid_order_past_its_sla_is_requeued_and_completed(shop: Shop) -> None:
    paid_at = utcnow() - timedelta(hours=2)
    order_id = shop.paid_order(queued=False, status="paid", paid_at=paid_at,
                               payment_verified_at=paid_at, attempts=3)

    report = reconciler(shop).run()

    assert [f.kind for f in report.findings] == [FindingKind.STUCK]
    order = shop.order(order_id)
    assert order.next_attempt_at == paid_at and order.attempts == 3  # due now, oldest first
    assert shop.events(order_id)[-1].outcome == "requeued"
    run_worker_until(shop, lambda: shop.order(order_id).status == "completed")


def test_orders_in_step_are_left_alone(shop: Shop) -> None:
    completed = bare_orders(shop, [shop.stripe.create_payment_intent(4900, "eur")["id"]])
    fresh = shop.paid_order(status="paid", paid_at=utcnow())  # queued, within its SLA

    report = reconciler(shop).run()

    assert report.findings == () and report.payments_read == 2
    assert shop.order(completed[0]).status == "completed" and shop.events(fresh) == []


def test_orphan_payment_is_stored_counted_and_reported_once(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    unknown = shop.stripe.create_payment_intent(2500, "eur", {"order_id": str(uuid.uuid4())})
    shop.stripe.create_payment_intent(1000, "usd")  # no metadata at all
    metrics = Metrics()
    metrics.watch_orders(shop.sessions, sla_seconds=600, ttl_seconds=0)  # as the daemon: read at scrape time

    with caplog.at_level(logging.INFO, logger="healer.stripe.reconcile"):
        first = reconciler(shop, metrics=metrics).run()
        second = reconciler(shop, metrics=metrics).run()

    assert (first.orphans_found, second.orphans_found) == (2, 0)
    assert caplog.text.count("Orphan payment") == 2 and f"Orphan payment {unknown['id']}" in caplog.text
    assert sorted(o.amount_cents for o in orphans(shop)) == [1000, 2500]
    assert all(o.reported_at is not None for o in orphans(shop))
    assert metrics.registry.get_sample_value("healer_orphan_payments") == 2


def test_second_payment_for_a_paid_order_is_an_orphan(shop: Shop) -> None:
    [order_id] = bare_orders(shop, [shop.stripe.create_payment_intent(4900, "eur")["id"]])
    twice = shop.stripe.create_payment_intent(4900, "eur", {"order_id": str(order_id)})

    report = reconciler(shop).run()

    assert [(f.kind, f.payment.id) for f in report.findings] == [(FindingKind.ORPHAN, twice["id"])]
    assert orphans(shop)[0].metadata_order_id == str(order_id)


def test_orphan_whose_order_reappears_is_resolved_by_the_next_run(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    order_id = uuid.uuid4()
    intent = shop.stripe.create_payment_intent(4900, "eur", {"order_id": str(order_id)})
    metrics = Metrics()
    metrics.watch_orders(shop.sessions, sla_seconds=600, ttl_seconds=0)
    assert reconciler(shop).run().orphans_found == 1
    with transaction(shop.sessions) as session:  # the order comes back from a backup
        session.add(Order(id=order_id, email="ada@example.com", stripe_payment_intent_id=intent["id"],
                          amount_cents=4900, currency="eur", template="a4-portrait", status="completed",
                          paid_at=utcnow()))

    dry = reconciler(shop).run(dry_run=True)
    assert [(f.kind, f.order_id) for f in dry.findings] == [(FindingKind.ORPHAN_RESOLVED, order_id)]
    assert orphans(shop)[0].resolved_at is None
    with caplog.at_level(logging.INFO, logger="healer.stripe.reconcile"):
        second = reconciler(shop, metrics=metrics).run()
    third = reconciler(shop).run()

    assert [(f.kind, f.payment.id) for f in second.findings] == [(FindingKind.ORPHAN_RESOLVED, intent["id"])]
    assert second.stripe_requests == 1  # the one list page: resolving asks Stripe nothing more
    [orphan] = orphans(shop)
    assert orphan.resolved_at is not None and orphan.resolution == (
        f"claimed by order {order_id} (found by reconciliation)")
    assert f"Orphan payment {intent['id']} resolved: order {order_id} holds it" in caplog.text
    assert metrics.registry.get_sample_value("healer_orphan_payments") == 0
    assert third.findings == () and orphans(shop)[0].resolved_at == orphan.resolved_at


def test_orphan_whose_unpaid_order_reappears_is_paid_and_resolved_in_one_run(shop: Shop) -> None:
    order_id = uuid.uuid4()
    intent = shop.stripe.create_payment_intent(4900, "eur", {"order_id": str(order_id)})
    reconciler(shop).run()
    with transaction(shop.sessions) as session:  # restored as it was at checkout: no payment id yet
        session.add(Order(id=order_id, email="ada@example.com", amount_cents=4900, currency="eur",
                          template="a4-portrait"))

    report = reconciler(shop).run()

    assert sorted(f.kind.value for f in report.findings) == ["missed_webhook", "orphan_resolved"]
    assert shop.order(order_id).stripe_payment_intent_id == intent["id"]
    assert shop.order(order_id).status == "paid"
    assert orphans(shop)[0].resolved_at is not None


def test_a_resolved_orphan_seen_again_stays_resolved_and_uncounted(shop: Shop) -> None:
    shop.stripe.create_payment_intent(2500, "eur", {"order_id": str(uuid.uuid4())})
    reconciler(shop).run()
    with transaction(shop.sessions) as session:
        session.execute(update(OrphanPayment).values(resolved_at=utcnow(), resolution="by operator: refunded"))

    again = reconciler(shop).run()  # the payment is still succeeded and unclaimed in Stripe

    assert again.findings == ()
    assert [o.resolution for o in orphans(shop)] == ["by operator: refunded"]
    assert reconciler(shop).orphan_count() == 0


def test_payment_with_another_amount_is_reported_not_applied(shop: Shop) -> None:
    order_id = pending_order(shop, payment_amount=100, link=False)

    report = reconciler(shop).run()

    assert [(f.kind, f.order_id) for f in report.findings] == [(FindingKind.MISMATCH, order_id)]
    assert "amount 100 != order amount 4900" in report.findings[0].detail
    assert shop.order(order_id).status == "pending_payment"


def test_rate_limited_listing_is_retried_honouring_retry_after(shop: Shop) -> None:
    order_id = shop.paid_order(queued=False)
    shop.stripe.fail_next(429, count=2, path=LIST)
    sleeps = Sleeps()

    report = reconciler(shop, sleep=sleeps).run()

    assert shop.order(order_id).status == "paid"
    assert shop.stripe.request_count(LIST) == 3 and report.stripe_requests == 3
    assert len(sleeps) == 2 and all(s >= 1.0 for s in sleeps)  # Retry-After: 1


def test_stripe_outage_fails_the_run_records_it_and_keeps_the_cursor(shop: Shop) -> None:
    shop.paid_order(queued=False)
    shop.stripe.fail_next(500, count=50)
    metrics = Metrics()

    with pytest.raises(stripe.APIError):
        reconciler(shop, metrics=metrics, max_retries=2).run()

    [run] = runs(shop)
    assert run.result == "failure" and "APIError" in (run.error or "") and run.stripe_requests == 3
    assert metrics.registry.get_sample_value("healer_reconcile_runs_total", {"result": "failure"}) == 1
    with shop.sessions() as session:
        assert session.scalar(select(ReconcileState.cursor_created)) is None


def test_second_run_resumes_from_the_cursor_and_reads_only_the_overlap(shop: Shop) -> None:
    now = int(time.time())
    for i in range(250):  # abandoned checkouts over two days, newest now
        shop.stripe.create_payment_intent(4900, "eur", status="requires_payment_method",
                                          created=now - i * 600)
    first = reconciler(shop).run()
    assert first.payments_read == 250 and shop.stripe.request_count(LIST) == 3

    second = reconciler(shop).run()

    assert shop.stripe.request_count(LIST) == 4  # one page: the overlap
    assert second.payments_read == 2  # created now and 600 s ago
    assert shop.stripe.requests[-1].params["created"] == {"gte": str(now - 600)}


def test_one_database_query_per_page_not_per_payment(shop: Shop, pg_engine: Engine) -> None:
    payment_ids = [shop.stripe.create_payment_intent(4900, "eur")["id"] for _ in range(250)]
    bare_orders(shop, payment_ids)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(pg_engine, "before_cursor_execute", count)
    try:
        report = reconciler(shop).run()
    finally:
        event.remove(pg_engine, "before_cursor_execute", count)

    assert report.payments_read == 250 and report.findings == ()
    order_reads = [s for s in statements if "FROM orders" in s]
    assert len(order_reads) == 3 + 1  # three pages, one look at pending orders
    assert len(statements) < 20, statements


def test_dry_run_reports_everything_and_changes_nothing(shop: Shop) -> None:
    lost = shop.paid_order(queued=False)
    stuck = shop.paid_order(queued=False, status="paid", paid_at=utcnow() - timedelta(hours=1))
    shop.stripe.create_payment_intent(700, "eur", {"order_id": "not-an-order"})

    report = reconciler(shop).run(dry_run=True)

    assert sorted(f.kind.value for f in report.findings) == ["missed_webhook", "orphan", "stuck"]
    assert shop.order(lost).status == "pending_payment" and shop.order(stuck).next_attempt_at is None
    assert orphans(shop) == [] and runs(shop) == [] and shop.events(lost) == []
    with shop.sessions() as session:
        assert session.scalar(select(ReconcileState)) is None
    assert sorted(f.kind.value for f in reconciler(shop).run().findings) == sorted(
        f.kind.value for f in report.findings)


def test_pending_order_paid_late_is_found_by_retrieving_its_payment(shop: Shop) -> None:
    start = utcnow()
    shop.stripe.create_payment_intent(100, "eur", status="requires_payment_method")  # sets the cursor
    reconciler(shop).run()
    began = start - timedelta(seconds=9000)  # both checkouts began before the window
    late = pending_order(shop, created=began, payment_status="requires_action")
    abandoned = pending_order(shop, created=began, payment_status="requires_payment_method")
    shop.stripe.set_status(shop.order(late).stripe_payment_intent_id, "succeeded")
    later = start + timedelta(minutes=20)  # both pass the 9600 s checkpoint since the last run

    report = reconciler(shop, clock=lambda: later).run()

    assert [(f.kind, f.order_id) for f in report.findings] == [(FindingKind.MISSED_WEBHOOK, late)]
    assert shop.order(late).status == "paid" and shop.order(abandoned).status == "pending_payment"
    # Created before the window, so in no run's slice: judged by this repair, once (healer.stripe.missed).
    assert (report.payments_succeeded, report.payments_missed) == (1, 1)
    assert retrieves(shop) == 2
    reconciler(shop, clock=lambda: later + timedelta(minutes=5)).run()  # no checkpoint passed
    assert retrieves(shop) == 2


def test_each_run_is_recorded_and_counted(shop: Shop) -> None:
    shop.paid_order(queued=False)
    shop.stripe.create_payment_intent(300, "eur")
    metrics = Metrics()

    reconciler(shop, metrics=metrics).run()

    [run] = runs(shop)
    assert (run.result, run.payments_read, run.orders_repaired, run.orphans_found, run.stripe_requests) == (
        "success", 2, 1, 1, 1)
    assert run.finished_at is not None and run.finished_at >= run.started_at and run.worker == "test"
    sample = metrics.registry.get_sample_value
    assert sample("healer_reconcile_runs_total", {"result": "success"}) == 1
    assert sample("healer_reconcile_last_success_timestamp_seconds") > time.time() - 60


def test_one_reconciler_at_a_time_on_postgresql(shop: Shop, pg_url: str) -> None:
    engines = [db.make_engine(pg_url) for _ in range(2)]
    try:
        first, second = AdvisoryLock(engines[0], LOCK_KEY), AdvisoryLock(engines[1], LOCK_KEY)
        assert first.acquire()
        assert not second.acquire()
        job = ReconcileJob(reconciler(shop), second)
        assert job() is None and shop.stripe.request_count(LIST) == 0  # skipped, not queued up
        first.release()
        assert job() is not None and shop.stripe.request_count(LIST) == 1
        assert first.acquire()  # the job let go of it
        first.release()
    finally:
        for engine in engines:
            engine.dispose()


def test_lease_lock_on_sqlite_lets_one_owner_in_until_it_expires(sqlite_engine: Engine) -> None:
    sessions = db.make_session_factory(sqlite_engine)
    one = LeaseLock(sessions, "daemon-1", lease_seconds=60)
    two = LeaseLock(sessions, "daemon-2", lease_seconds=60)

    assert one.acquire() and not two.acquire()
    one.release()
    assert two.acquire() and not one.acquire()
    with transaction(sessions) as session:  # daemon-2 died holding it; its lease runs out
        session.execute(update(ReconcileState).values(lease_expires_at=db_later(-1)))
    assert one.acquire()


def test_reconcile_command_dry_run_then_for_real(shop: Shop, shop_env: dict[str, str]) -> None:
    order_id = shop.paid_order(queued=False)
    settings = Settings.from_env(shop_env)
    services = Services.build(settings)
    try:
        dry, real = (Console(file=io.StringIO(), width=200, record=True) for _ in range(2))
        assert run_reconcile_command(settings, services, True, dry) == 0
        assert shop.order(order_id).status == "pending_payment"
        assert run_reconcile_command(settings, services, False, real) == 0
    finally:
        services.close()
    dry_text, real_text = dry.export_text(), real.export_text()
    assert "DRY RUN" in dry_text and "would mark paid and queue" in dry_text and str(order_id) in dry_text
    assert "marked paid and queued" in real_text and "1 order(s) repaired" in real_text
    # Paid a moment ago: within the webhook's grace, so judged by the next run, not this one.
    assert "0 succeeded payment(s) judged, 0 found only by reconciliation" in real_text
    assert shop.order(order_id).status == "paid"
    assert shop_env["STRIPE_SECRET_KEY"] not in dry_text + real_text


def test_reconcile_command_without_a_stripe_key_says_so(shop_env: dict[str, str]) -> None:
    settings = Settings.from_env({k: v for k, v in shop_env.items() if k != "STRIPE_SECRET_KEY"})
    services = Services.build(settings)
    console = Console(file=io.StringIO(), width=200, record=True)
    try:
        with pytest.raises(OperatorError, match="STRIPE_SECRET_KEY is not set: there is nothing to reconcile"):
            run_reconcile_command(settings, services, False, console)
    finally:
        services.close()


def test_pending_checks_happen_at_doubling_ages() -> None:
    first = 300.0
    assert crossed_checkpoint(310, None, first)  # no run yet
    assert not crossed_checkpoint(200, None, first)  # too young
    assert crossed_checkpoint(610, 30, first) and not crossed_checkpoint(640, 30, first)
    ages = range(300, 3 * 86_400, 300)  # a run every 5 minutes for three days
    assert sum(crossed_checkpoint(a, 300, first) for a in ages) == 10


def test_models_match_the_migrations(pg_engine: Engine) -> None:
    with pg_engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_reconcile_on_the_embedded_sqlite_database(shop: Shop, sqlite_engine: Engine) -> None:
    lite = dataclasses.replace(shop, sessions=db.make_session_factory(sqlite_engine))
    lost = lite.paid_order(queued=False)
    stuck = lite.paid_order(queued=False, status="paid", paid_at=utcnow() - timedelta(hours=1))
    lite.stripe.create_payment_intent(800, "eur", {"order_id": str(uuid.uuid4())})

    first, second = reconciler(lite).run(), reconciler(lite).run()

    assert sorted(f.kind.value for f in first.findings) == ["missed_webhook", "orphan", "stuck"]
    assert second.findings == () and len(orphans(lite)) == 1
    assert lite.order(lost).status == "paid" and lite.order(stuck).next_attempt_at is not None
    with lite.sessions() as session:
        assert session.scalar(select(ReconcileState.cursor_created)) is not None
