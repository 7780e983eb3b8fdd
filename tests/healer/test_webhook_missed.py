"""The dead-man's switch that knows about sales (healer.stripe.missed): each reconciliation run
judges the succeeded payments of its slice once, and counts those healer had no webhook for, in
the run record and healer_webhook_missed_total; healer_webhook_missed_runs_in_a_row, read from the
records, is what HealerWebhooksMissing fires on. Real PostgreSQL, the fake Stripe server through
the real `stripe` library, and webhooks delivered to the real route."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest

from fulfilment.models import utcnow
from healer.health.metrics import Metrics
from healer.stripe.reconcile import ReconcileConfig
from tests.fakes.shop_fixtures import Shop
from tests.healer.test_reconcile import pending_order, reconciler, runs
from tests.healer.test_webhooks import Hook, succeeded

MINUTE = timedelta(minutes=1)


def scraped(shop: Shop) -> Metrics:
    """Metrics as the daemon has them, the database figures read afresh at every scrape."""
    metrics = Metrics()
    metrics.watch_orders(shop.sessions, sla_seconds=600, ttl_seconds=0)
    return metrics


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def deliver_webhook(shop: Shop, order_id: uuid.UUID) -> None:
    hook = Hook(shop.sessions, shop.pipeline(), shop.stripe.webhook_secret)
    assert hook.deliver(*succeeded(shop, order_id)) == (200, {"received": True, "result": "applied"})


def run_at(shop: Shop, metrics: Metrics, at: datetime) -> tuple[int, int]:
    """One reconciliation run starting at `at`: (succeeded payments judged, missed ones)."""
    report = reconciler(shop, metrics=metrics, clock=lambda: at).run()
    return report.payments_succeeded, report.payments_missed


def test_a_paid_order_whose_webhook_never_arrived_is_counted_as_missed(shop: Shop) -> None:
    lost = pending_order(shop, created=utcnow() - 2 * MINUTE)  # paid in Stripe; no webhook came
    metrics = scraped(shop)

    report = reconciler(shop, metrics=metrics).run()

    assert (report.payments_succeeded, report.payments_missed) == (1, 1)
    [run] = runs(shop)
    assert (run.payments_succeeded, run.payments_missed) == (1, 1)
    assert sample(metrics, "healer_reconcile_payments_succeeded_total") == 1
    assert sample(metrics, "healer_webhook_missed_total") == 1
    assert sample(metrics, "healer_webhook_missed_runs_in_a_row") == 1
    assert shop.order(lost).status == "paid"  # and repaired, as before


def test_a_payment_whose_webhook_arrived_first_is_a_sale_not_a_miss(shop: Shop) -> None:
    delivered = pending_order(shop, created=utcnow() - 2 * MINUTE)
    deliver_webhook(shop, delivered)
    metrics = scraped(shop)

    report = reconciler(shop, metrics=metrics).run()

    assert (report.payments_succeeded, report.payments_missed) == (1, 0)
    assert [(r.payments_succeeded, r.payments_missed) for r in runs(shop)] == [(1, 0)]
    assert sample(metrics, "healer_webhook_missed_total") == 0
    assert sample(metrics, "healer_webhook_missed_runs_in_a_row") == 0


def test_an_orphan_is_missed_and_a_payment_of_another_amount_is_a_sale_not_a_miss(shop: Shop) -> None:
    two_minutes_ago = int((utcnow() - 2 * MINUTE).timestamp())
    shop.stripe.create_payment_intent(2500, "eur", {"order_id": str(uuid.uuid4())}, created=two_minutes_ago)
    pending_order(shop, created=utcnow() - 2 * MINUTE, payment_amount=100, link=False)  # a webhook would not pay it

    report = reconciler(shop).run()

    assert (report.payments_succeeded, report.payments_missed) == (2, 1)


def test_quiet_runs_count_nothing_and_neither_extend_nor_end_a_streak_of_misses(shop: Shop) -> None:
    t0, metrics = utcnow(), scraped(shop)

    def streak() -> float | None:
        return sample(metrics, "healer_webhook_missed_runs_in_a_row")

    assert run_at(shop, metrics, t0) == (0, 0)  # a quiet day: no payment at all
    assert streak() == 0
    pending_order(shop, created=t0 + 3 * MINUTE)
    assert run_at(shop, metrics, t0 + 5 * MINUTE) == (1, 1)
    assert streak() == 1  # one miss: a delivery lost in transit, for all we know
    pending_order(shop, created=t0 + 8 * MINUTE, payment_status="requires_payment_method")  # abandoned
    assert run_at(shop, metrics, t0 + 10 * MINUTE) == (0, 0)
    assert streak() == 1  # a quiet run says nothing of webhooks
    pending_order(shop, created=t0 + 13 * MINUTE)
    assert run_at(shop, metrics, t0 + 15 * MINUTE) == (1, 1)
    assert streak() == 2  # HealerWebhooksMissing fires
    deliver_webhook(shop, pending_order(shop, created=t0 + 18 * MINUTE))
    assert run_at(shop, metrics, t0 + 20 * MINUTE) == (1, 0)
    assert streak() == 0  # sales came by webhook again
    assert [(r.payments_succeeded, r.payments_missed) for r in runs(shop)] == [
        (0, 0), (1, 1), (0, 0), (1, 1), (1, 0)]
    assert sample(metrics, "healer_webhook_missed_total") == 2
    assert sample(metrics, "healer_reconcile_payments_succeeded_total") == 3


def test_a_payment_younger_than_the_grace_is_repaired_at_once_and_judged_once_by_the_next_run(
    shop: Shop,
) -> None:
    t0, metrics = utcnow(), scraped(shop)
    lost = pending_order(shop, created=t0 - timedelta(seconds=2))  # its webhook may be on its way

    assert run_at(shop, metrics, t0) == (0, 0)
    assert shop.order(lost).status == "paid"  # the customer does not wait for the judgement
    # The next run still lists it (the window overlaps) and reads who verified it: reconciliation.
    assert run_at(shop, metrics, t0 + 2 * MINUTE) == (1, 1)
    assert run_at(shop, metrics, t0 + 4 * MINUTE) == (0, 0)  # listed again, judged no more
    assert sample(metrics, "healer_webhook_missed_total") == 1


def test_a_grace_outside_the_listing_overlap_is_refused() -> None:
    with pytest.raises(ValueError, match="webhook_grace_seconds must be at least 0 and less than overlap_seconds"):
        ReconcileConfig(sla_seconds=600, webhook_grace_seconds=600)
