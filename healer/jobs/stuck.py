"""Stuck orders: paid, not completed within the SLA, and nobody working on them.

Every daemon runs this job; the re-queue is one compare-and-set UPDATE that skips leased rows, so
several daemons sweeping at once re-queue each order once. A re-queued order gets
`next_attempt_at = paid_at`: it is due at once, and since the worker claims the earliest
`next_attempt_at` first, the customers who have waited longest are served first.

Attempts are kept, not reset: a stuck order that keeps failing still ends in `needs_attention`
after the last attempt, instead of being retried for ever by this sweep. Gating happens in the
pipeline: a re-queued order whose next step depends on a failing check waits without spending one.

Two optional, off-by-default policies ride on the same sweep: a "your poster is delayed" email
once an order is past a longer SLA (once per order), and a refund of an order that has given up
for good (idempotent: one `Idempotency-Key` per order, so a retried or concurrent refund is one).

Leases, here as everywhere, are on the database's clock (fulfilment.leases): whether a lease is
live, and when a refund's hold runs out, is the database's to say, so a daemon whose clock is off
neither takes an order another daemon holds nor writes a hold that is born expired. The SLA and
the grace periods are measured from facts (when a payment was made, when an order gave up),
stamped by Stripe or a daemon's clock, and stay on the daemon's clock (`clock`), as do the story
lines it writes.
"""

from __future__ import annotations

import html
import logging
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

import stripe
from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.errors import StepError
from fulfilment.leases import db_later, db_now
from fulfilment.mailer import Email, Mailer, single_line
from fulfilment.models import Order, OrderEvent, OrderStatus, Outcome, transaction, utcnow
from fulfilment.pipeline import ACTIVE, NEXT_STEP, Pipeline
from healer.db.models import NoticeKind, OrderNotice, insert_once
from healer.health.metrics import Metrics

log = logging.getLogger(__name__)

# An operator's working day to fix the cause and retry before the money goes back on its own.
REFUND_GRACE_SECONDS = 86_400
# How long a refund holds its order: far longer than one Stripe call, short enough that a daemon
# dying mid-refund leaves the order to the next sweep soon.
REFUND_HOLD_SECONDS = 600


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
    refund_grace_seconds: int = REFUND_GRACE_SECONDS


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
    return OrderEvent(order_id=stuck.order_id, at=now, step=NEXT_STEP[stuck.status].value,
                      outcome=Outcome.REQUEUED.value, duration_seconds=0.0, message=message)


def _duration(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


# -- "your poster is delayed" ----------------------------------------------------------------------

_DELAY_TEXT = """\
Hello,

Your poster{title} is taking longer than usual. It is not forgotten: we are on it, and we will
email you the download link as soon as it is ready. You do not need to do anything.

Order reference: {order_id}
"""


def delay_email(*, to: str, title: str, order_id: str) -> Email:
    title = single_line(title)
    quoted = f" \u201c{title}\u201d" if title else ""
    text = _DELAY_TEXT.format(title=quoted, order_id=order_id)
    body = "".join(f"<p>{html.escape(p).replace(chr(10), ' ')}</p>" for p in text.strip().split("\n\n"))
    return Email(to=to, subject="Your poster is on its way, a little late", text=text,
                 html=f"<!DOCTYPE html><html><body>{body}</body></html>")


def send_delay_emails(
    sessions: sessionmaker[Session], mailer: Mailer, *, after_seconds: int, limit: int = 50,
    clock: Callable[[], datetime] = utcnow,
) -> list[uuid.UUID]:
    """Tell customers whose paid order is past `after_seconds` that it is delayed, once each."""
    now = clock()
    waiting = (*ACTIVE, OrderStatus.NEEDS_ATTENTION.value)
    already = exists().where(OrderNotice.order_id == Order.id,
                             OrderNotice.kind == NoticeKind.DELAY_EMAIL.value)
    with sessions() as session:
        rows = session.execute(
            select(Order.id, Order.email, Order.title)
            .where(Order.status.in_(waiting), Order.paid_at < now - timedelta(seconds=after_seconds),
                   ~already)
            .order_by(Order.paid_at).limit(limit)
        ).all()
    return [r.id for r in rows if _send_delay_email(sessions, mailer, r.id, r.email, r.title, now)]


def _send_delay_email(
    sessions: sessionmaker[Session], mailer: Mailer, order_id: uuid.UUID, address: str, title: str,
    now: datetime,
) -> bool:
    with transaction(sessions) as session:
        # Claimed before sending, so two daemons never both send it: at most once, by design.
        if not insert_once(session, OrderNotice, order_id=order_id,
                           kind=NoticeKind.DELAY_EMAIL.value, at=now, detail="sending"):
            return False
    try:
        message_id = mailer.send(delay_email(to=address, title=title, order_id=str(order_id)))
    except StepError as error:
        log.warning("Delay email for order %s not sent (%s): %s; will try again", order_id,
                    error.error_class.value, error.message)
        with transaction(sessions) as session:
            session.execute(delete(OrderNotice).where(
                OrderNotice.order_id == order_id, OrderNotice.kind == NoticeKind.DELAY_EMAIL.value))
        return False
    with transaction(sessions) as session:
        session.execute(update(OrderNotice).where(
            OrderNotice.order_id == order_id, OrderNotice.kind == NoticeKind.DELAY_EMAIL.value
        ).values(detail=f"sent: message {message_id}"))
    log.info("Delay email sent for order %s (message %s)", order_id, message_id)
    return True


# -- refund after a final failure ------------------------------------------------------------------


def refund_key(order_id: uuid.UUID) -> str:
    """One Idempotency-Key per order: however often it is retried, Stripe refunds once."""
    return f"healer-refund-{order_id}"


def refund_failed_orders(
    sessions: sessionmaker[Session], pipeline: Pipeline, client: stripe.StripeClient, *,
    grace_seconds: int = REFUND_GRACE_SECONDS, limit: int = 20,
    clock: Callable[[], datetime] = utcnow,
) -> list[uuid.UUID]:
    """Refund verified payments of orders that gave up more than `grace_seconds` ago (counted from
    the last give-up, so an operator's retry that fails again gets a new working day)."""
    now = clock()
    gave_up_at = (
        select(func.max(OrderEvent.at))
        .where(OrderEvent.order_id == Order.id, OrderEvent.outcome == Outcome.GAVE_UP.value)
        .scalar_subquery()
    )
    with sessions() as session:
        rows = session.execute(
            select(Order.id, Order.stripe_payment_intent_id)
            .where(Order.status == OrderStatus.NEEDS_ATTENTION.value,
                   and_(Order.payment_verified_at.is_not(None),
                        Order.stripe_payment_intent_id.is_not(None)),
                   func.coalesce(gave_up_at, Order.paid_at) < now - timedelta(seconds=grace_seconds))
            .order_by(Order.paid_at).limit(limit)
        ).all()
    refunded = []
    for row in rows:
        if not _hold_for_refund(sessions, row.id):
            continue
        if _refund(sessions, pipeline, client, row.id, row.stripe_payment_intent_id):
            refunded.append(row.id)
        else:
            _release_refund_hold(sessions, row.id)
    return refunded


REFUND_HOLDER = "refund"


def _release_refund_hold(sessions: sessionmaker[Session], order_id: uuid.UUID) -> None:
    with transaction(sessions) as session:
        session.execute(update(Order).where(Order.id == order_id, Order.lease_owner == REFUND_HOLDER)
                        .values(lease_owner=None, lease_expires_at=None))


def _hold_for_refund(sessions: sessionmaker[Session], order_id: uuid.UUID) -> bool:
    """Lease the order to the refund first: an operator's retry meanwhile is refused, not raced.
    Another daemon's live hold (on the database's clock) means that daemon is refunding it."""
    with transaction(sessions) as session:
        held = session.execute(
            update(Order)
            .where(Order.id == order_id, Order.status == OrderStatus.NEEDS_ATTENTION.value,
                   or_(Order.lease_expires_at.is_(None), Order.lease_expires_at < db_now()))
            .values(lease_owner=REFUND_HOLDER, lease_expires_at=db_later(REFUND_HOLD_SECONDS))
        )
        return bool(held.rowcount == 1)  # type: ignore[attr-defined]


def _refund(
    sessions: sessionmaker[Session], pipeline: Pipeline, client: stripe.StripeClient,
    order_id: uuid.UUID, payment_intent_id: str,
) -> bool:
    try:
        refund = client.v1.refunds.create(
            params={"payment_intent": payment_intent_id, "reason": "requested_by_customer",
                    "metadata": {"order_id": str(order_id)}},
            options={"idempotency_key": refund_key(order_id)},
        )
        detail = f"{refund.id} ({refund.amount} {refund.currency})"
    except stripe.InvalidRequestError as error:
        if error.code != "charge_already_refunded":
            log.error("Refund for order %s refused by Stripe: %s", order_id, error.user_message)
            return False
        detail = "refunded already in Stripe"
    except stripe.StripeError as error:
        log.warning("Refund for order %s not made now (%s); will try again", order_id,
                    type(error).__name__)
        return False
    # A crash before this commit is harmless: the next sweep replays the same Idempotency-Key.
    with transaction(sessions) as session:
        pipeline.mark_refunded(session, order_id, f"Refunded after final failure: {detail}",
                               expected=OrderStatus.NEEDS_ATTENTION)
    return True


# -- the scheduled job ------------------------------------------------------------------------------


class StuckOrders:
    """The `stuck` job: re-queue stuck orders, then the optional policies. Safe on every daemon."""

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
        if self.metrics is not None and requeued:
            self.metrics.remediations.labels("requeue_stuck_order", "success").inc(len(requeued))
        if p.delay_email_after_seconds is not None and self.mailer is not None:
            send_delay_emails(self.sessions, self.mailer, after_seconds=p.delay_email_after_seconds,
                              clock=self.clock)
        if p.refund_on_failure and self.stripe_client is not None:
            refunded = refund_failed_orders(self.sessions, self.pipeline, self.stripe_client,
                                            grace_seconds=p.refund_grace_seconds, clock=self.clock)
            if self.metrics is not None and refunded:
                self.metrics.remediations.labels("refund_failed_order", "success").inc(len(refunded))
        return len(requeued)
