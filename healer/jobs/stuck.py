"""Stuck orders: paid, not completed within the SLA, and nobody working on them.

One replica at a time runs this job (a singleton job: healer.jobs.leadership), so the delay emails
and refunds riding on it are sent from one place; the re-queue is one compare-and-set UPDATE that
skips leased rows all the same, so two sweeps meeting at a handover re-queue each order once.
A re-queued order gets `next_attempt_at = paid_at`: it is due at once, and since the worker claims
the earliest `next_attempt_at` first, the customers who have waited longest are served first.

Attempts are kept, not reset: a stuck order that keeps failing still ends in `needs_attention`
after the last attempt, instead of being retried for ever by this sweep. Gating happens in the
pipeline: a re-queued order whose next step depends on a failing check waits without spending one.

Two optional, off-by-default policies ride on the same sweep: a "your poster is delayed" email
once an order is past a longer SLA (healer.jobs.notices), and a refund of an order that has given
up for good, after a grace period (healer.jobs.refunds), with its "refunded, and why" email.

Leases, here as everywhere, are on the database's clock (fulfilment.leases): whether a lease is
live, and when a refund's hold runs out, is the database's to say, so a daemon whose clock is off
neither takes an order another daemon holds nor writes a hold that is born expired. The SLA and
the grace periods are measured from facts (when a payment was made, when an order gave up),
stamped by Stripe or a daemon's clock, and stay on the daemon's clock (`clock`), as do the story
lines it writes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar

import stripe
from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.leases import db_now
from fulfilment.mailer import Mailer
from fulfilment.models import Order, OrderEvent, OrderStatus, Outcome, transaction, utcnow
from fulfilment.pipeline import ACTIVE, NEXT_STEP, Pipeline
from fulfilment.recording import current_trace
from healer.health.metrics import Metrics
from healer.jobs.notices import send_delay_emails, send_refund_emails
from healer.jobs.refunds import DEFAULT_REFUND_GRACE_SECONDS, refund_failed_orders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StuckOrder:
    order_id: uuid.UUID
    status: OrderStatus
    paid_at: datetime


@dataclass(frozen=True)
class StuckPolicy:
    sla_seconds: int  # HEALER_ORDER_SLA_SECONDS
    batch: int = 100  # orders re-queued per sweep, oldest first
    delay_email_after_seconds: int | None = None  # HEALER_DELAY_EMAIL_AFTER_SECONDS; None: off
    refund_on_failure: bool = False  # HEALER_REFUND_ON_FAILURE
    refund_grace_seconds: int = DEFAULT_REFUND_GRACE_SECONDS  # HEALER_REFUND_GRACE_SECONDS


def find_stuck(
    session: Session, now: datetime, sla_seconds: int, limit: int,
    order_ids: Collection[uuid.UUID] | None = None, *, lock: bool = False,
) -> list[StuckOrder]:
    """Stuck orders, oldest payment first; `lock` takes their rows (skipping ones being claimed)."""
    query = (
        select(Order.id, Order.status, Order.paid_at)
        .where(*_stuck(now, sla_seconds))
        .order_by(Order.paid_at)
        .limit(limit)
    )
    if order_ids is not None:
        query = query.where(Order.id.in_(list(order_ids)))
    if lock:
        query = query.with_for_update(skip_locked=True)
    return [StuckOrder(r.id, OrderStatus(r.status), r.paid_at) for r in session.execute(query)]


def _stuck(now: datetime, sla_seconds: int) -> tuple[ColumnElement[bool], ...]:
    # `now` is the daemon's clock, for the SLA only (paid_at is a fact, not a lease); whether
    # somebody works on the order is judged on the clock its lease was written on.
    return (
        Order.status.in_(ACTIVE),
        Order.paid_at.is_not(None),
        Order.paid_at < now - timedelta(seconds=sla_seconds),
        or_(Order.lease_expires_at.is_(None), Order.lease_expires_at < db_now()),
        # Never queued: nobody will ever take it. An order in backoff is not stuck, it waits its
        # retry (re-queueing it would burn its attempts in minutes); a due one the worker takes.
        Order.next_attempt_at.is_(None),
        Order.is_canary.is_(False),  # the canary's order is never queued, by design
    )


def requeue_stuck(
    sessions: sessionmaker[Session], *, sla_seconds: int, limit: int = 100,
    order_ids: Collection[uuid.UUID] | None = None, clock: Callable[[], datetime] = utcnow,
) -> list[StuckOrder]:
    """Re-queue up to `limit` stuck orders (of `order_ids`, if given); returns those re-queued."""
    now = clock()
    with transaction(sessions) as session:
        found = find_stuck(session, now, sla_seconds, limit, order_ids, lock=True)
        if not found:
            return []
        moved = set(session.scalars(
            update(Order)
            .where(Order.id.in_([s.order_id for s in found]), *_stuck(now, sla_seconds))
            .values(next_attempt_at=Order.paid_at)
            .returning(Order.id)
        ))
        requeued = [s for s in found if s.order_id in moved]
        for stuck in requeued:
            waited = _duration((now - stuck.paid_at).total_seconds())
            message = (f"re-queued automatically: paid {waited} ago, not completed within the "
                       f"SLA ({sla_seconds} s)")
            session.add(_event(stuck, now, message))
    for stuck in requeued:
        log.warning("Stuck order %s re-queued at %s (paid %s ago)", stuck.order_id,
                    stuck.status.value, _duration((now - stuck.paid_at).total_seconds()))
    return requeued


def _event(stuck: StuckOrder, now: datetime, message: str) -> OrderEvent:
    # Under a reconciliation run's span, the line names it (as fulfilment.recording's lines do).
    trace_id, span_id = current_trace() or (None, None)
    return OrderEvent(order_id=stuck.order_id, at=now, step=NEXT_STEP[stuck.status].value,
                      outcome=Outcome.REQUEUED.value, duration_seconds=0.0, message=message,
                      trace_id=trace_id, span_id=span_id)


def _duration(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


# -- the scheduled job ------------------------------------------------------------------------------


class StuckOrders:
    """The `stuck` job: re-queue stuck orders, then the optional policies. Safe on every daemon."""

    # Everything it does starts with a query: while the database check fails, it waits. Emails and
    # refunds handle SendGrid's and Stripe's faults order by order, and retry on the next sweep.
    depends_on: ClassVar[tuple[str, ...]] = ("database",)

    def __init__(
        self, sessions: sessionmaker[Session], pipeline: Pipeline, policy: StuckPolicy, *,
        mailer: Mailer | None = None, stripe_client: stripe.StripeClient | None = None,
        metrics: Metrics | None = None, clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.pipeline = pipeline
        self.policy = policy
        self.mailer = mailer
        self.stripe_client = stripe_client
        self.metrics = metrics
        self.clock = clock

    def __call__(self) -> int:
        p = self.policy
        requeued = requeue_stuck(self.sessions, sla_seconds=p.sla_seconds, limit=p.batch,
                                 clock=self.clock)
        self._count("requeue_stuck_order", len(requeued))
        refunds = p.refund_on_failure and self.stripe_client is not None
        if p.delay_email_after_seconds is not None and self.mailer is not None:
            send_delay_emails(self.sessions, self.mailer, after_seconds=p.delay_email_after_seconds,
                              refunds=refunds, clock=self.clock)
        if refunds and self.stripe_client is not None:
            refunded = refund_failed_orders(self.sessions, self.pipeline, self.stripe_client,
                                            grace_seconds=p.refund_grace_seconds, clock=self.clock)
            self._count("refund_failed_order", len(refunded))
        if self.mailer is not None:  # also those a crash or a SendGrid outage left unsent
            send_refund_emails(self.sessions, self.mailer)
        return len(requeued)

    def _count(self, action: str, done: int) -> None:
        if self.metrics is not None and done:
            self.metrics.remediations.labels(action, "success").inc(done)
