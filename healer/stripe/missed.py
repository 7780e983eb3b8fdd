"""Which succeeded payments reached healer by webhook first, and which only by reconciliation: the
dead-man's switch that knows about sales (healer_webhook_missed_total, the HealerWebhooksMissing
alert). A heartbeat with a fixed grace cannot tell a quiet shop from a broken webhook; counting
the sales that arrived without one can.

Each reconciliation run judges the succeeded payments *created* in its slice of time, from where
the last successful run's slice ended (that run's start less `WEBHOOK_GRACE_SECONDS`) to its own
start less the grace. Slices follow each other without gap or overlap, so each payment is judged
once however much the listing windows overlap (healer.stripe.reconcile), and never before its
webhook had the grace to arrive: a webhook is usually seconds late. A failed run moves nothing, so
the next one judges its slice again. A payment is *missed* when healer had no webhook for it
before reconciliation saw it:
- no order claims it (an orphan: reconciliation alone knows of it);
- its order was still awaiting payment when this run read it;
- or an earlier run marked its order paid while the payment was younger than the grace (the
  repair is not held back for the judgement): the order's story says so, its verify line reading
  `FOUND_BY_RECONCILIATION`. A webhook or the customer's completion request that verified it
  first leaves no such line.
A payment naming an awaiting order with another amount or currency (a mismatch) counts as a sale
but not as missed: a webhook would have left that order waiting as well.

A payment that succeeds after its slice was judged (a slow 3-D Secure) is not a sale here; if its
webhook never comes, the pending-order check (database to Stripe) finds it, and that repair counts
it as a sale and a miss, once, as the order is marked paid once. Its success time is unknown (Stripe
gives the PaymentIntent's creation), so a payment confirmed the instant before that check would be
counted missed: the checks come 5, 10, 20... minutes into a checkout, which makes that rare.

How many runs in a row found misses, the alert's input, is healer.stripe.streak.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists
from sqlalchemy.engine import Row
from sqlalchemy.sql.elements import Label

from fulfilment.models import Order, OrderEvent, Outcome, Step
from healer.stripe.findings import Payment
from healer.stripe.matching import awaiting_payment, claiming_order
from healer.stripe.webhooks import payment_mismatch

WEBHOOK_GRACE_SECONDS = 60  # Stripe delivers within seconds; retries start a minute or more later
# The words of reconciliation's story line when it marks an order paid (healer.stripe.reconcile):
# how a later run knows who verified the payment first.
FOUND_BY_RECONCILIATION = "found by reconciliation"


@dataclass(frozen=True)
class Slice:
    """The creation times [since, until) of the payments one run judges."""

    since: datetime
    until: datetime

    @classmethod
    def of_run(cls, started: datetime, window_start: datetime, last_run_at: datetime | None,
               grace_seconds: float) -> Slice:
        """`last_run_at`: the start of the last successful run (None before the first). The
        listing's window always covers the slice: the window reaches back an overlap longer than the
        grace before the last run, and a first run judges the whole window."""
        grace = timedelta(seconds=grace_seconds)
        since = window_start if last_run_at is None else max(window_start, last_run_at - grace)
        return cls(since, started - grace)

    def __contains__(self, payment: Payment) -> bool:
        return self.since <= payment.created < self.until


@dataclass(frozen=True)
class Sales:
    """What one page judged: its succeeded payments, and those healer had no webhook for."""

    succeeded: int = 0
    missed: int = 0


def judge(payments: Iterable[Payment], orders: list[Row[Any]], judged: Slice) -> Sales:
    """The succeeded `payments` of `judged`, matched to `orders` as the run read them (before its
    repairs, with the `verified_by_reconciliation` column)."""
    mine = [p for p in payments if p in judged]
    return Sales(len(mine), sum(1 for p in mine if missed(p, claiming_order(p, orders))))


def missed(payment: Payment, order: Row[Any] | None) -> bool:
    """Whether healer had no webhook for `payment` before reconciliation saw it; `order` is the
    one claiming it (None: an orphan)."""
    if order is None:
        return True
    if awaiting_payment(order):
        return payment_mismatch(order, payment.as_intent()) is None
    return bool(order.verified_by_reconciliation)


def verified_by_reconciliation() -> Label[bool]:
    """A column for a query of orders: whether reconciliation marked the order paid, as its story
    says (one EXISTS over the order's own lines, by the order_events.order_id index)."""
    return exists().where(
        OrderEvent.order_id == Order.id,
        OrderEvent.step == Step.VERIFY_PAYMENT,
        OrderEvent.outcome == Outcome.OK,
        OrderEvent.message.contains(FOUND_BY_RECONCILIATION, autoescape=True),
    ).label("verified_by_reconciliation")

