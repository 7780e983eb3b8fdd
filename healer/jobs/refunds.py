"""Refunds of orders that can never complete (HEALER_REFUND_ON_FAILURE): a verified payment whose
order gave up more than HEALER_REFUND_GRACE_SECONDS ago is refunded, recorded and told.

Exactly once, across replicas and crashes:
- the order is leased to the refund first (on the database's clock), so one daemon refunds it at a
  time and an operator's retry meanwhile is refused, not raced;
- Stripe is asked with one `Idempotency-Key` per order, so a refund retried after a crash is the
  same refund;
- once Stripe has confirmed it, the refund is always recorded: its answer is read defensively (an
  answer missing a field is still a refund made), the order becomes `refunded` and its lease is
  released in one transaction with the customer's refund email, which goes out once
  (healer.jobs.notices). If Stripe's `charge.refunded` webhook marked the order first, the refund
  is still written in the order's story and the email still goes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import stripe
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.errors import ErrorClass
from fulfilment.leases import db_later, db_now
from fulfilment.models import Order, OrderEvent, OrderStatus, Outcome, Step, transaction, utcnow
from fulfilment.pipeline import Pipeline
from healer.jobs.notices import queue_refund_email

log = logging.getLogger(__name__)

# An operator's working day to fix the cause and retry before the money goes back on its own.
DEFAULT_REFUND_GRACE_SECONDS = 86_400
# How long a refund holds its order: far longer than one Stripe call, short enough that a daemon
# dying mid-refund leaves the order to the next sweep soon.
REFUND_HOLD_SECONDS = 600
REFUND_HOLDER = "refund"
# Refund statuses in which Stripe did not (and will not) give the money back.
_NOT_REFUNDED = frozenset({"failed", "canceled"})


@dataclass(frozen=True)
class RefundReceipt:
    """What Stripe's answer says about a refund it accepted; any of it may be missing."""

    refund_id: str | None = None
    amount: int | None = None
    currency: str | None = None
    status: str | None = None
    already: bool = False  # Stripe said the charge was refunded before (by us after a crash, or by hand)

    @classmethod
    def parse(cls, refund: object) -> RefundReceipt:
        """Never raises: a refund Stripe made is recorded whatever shape its answer has."""
        try:
            data: Any = refund.to_dict() if hasattr(refund, "to_dict") else refund
        except Exception:  # an answer too odd to read is still a refund made
            data = None
        if not isinstance(data, dict):
            return cls()
        amount = data.get("amount")
        return cls(_text(data.get("id")), amount if isinstance(amount, int) else None,
                   _text(data.get("currency")), _text(data.get("status")))

    def __str__(self) -> str:
        if self.already:
            return "refunded already in Stripe"
        money = " ".join(str(v) for v in (self.amount, self.currency) if v is not None)
        return f"{self.refund_id or 'refund (no id in Stripe answer)'}{f' ({money})' if money else ''}"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def refund_key(order_id: uuid.UUID) -> str:
    """One Idempotency-Key per order: however often it is retried, Stripe refunds once."""
    return f"healer-refund-{order_id}"


def refund_failed_orders(
    sessions: sessionmaker[Session], pipeline: Pipeline, client: stripe.StripeClient, *,
    grace_seconds: int = DEFAULT_REFUND_GRACE_SECONDS, limit: int = 20,
    clock: Callable[[], datetime] = utcnow,
) -> list[uuid.UUID]:
    """Refund verified payments of orders that gave up more than `grace_seconds` ago (counted from
    the last give-up, so an operator's retry that fails again gets a new grace period)."""
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
                   # Its poster was made; only the email bounced: the fix is an address, not money back.
                   or_(Order.last_error_class.is_(None), Order.last_error_class != ErrorClass.EMAIL_UNDELIVERED),
                   func.coalesce(gave_up_at, Order.paid_at) < now - timedelta(seconds=grace_seconds))
            .order_by(Order.paid_at).limit(limit)
        ).all()
    refunded = []
    for row in rows:
        if not _hold_for_refund(sessions, row.id):
            continue
        receipt = _refund(client, row.id, row.stripe_payment_intent_id)
        if receipt is not None and _record(sessions, pipeline, row.id, receipt, now):
            refunded.append(row.id)
        else:
            _release_refund_hold(sessions, row.id)
    return refunded


def _hold_for_refund(sessions: sessionmaker[Session], order_id: uuid.UUID) -> bool:
    """Lease the order to the refund; another daemon's live hold (on the database's clock) means
    that daemon is refunding it."""
    with transaction(sessions) as session:
        held = session.execute(
            update(Order)
            .where(Order.id == order_id, Order.status == OrderStatus.NEEDS_ATTENTION.value,
                   or_(Order.lease_expires_at.is_(None), Order.lease_expires_at < db_now()))
            .values(lease_owner=REFUND_HOLDER, lease_expires_at=db_later(REFUND_HOLD_SECONDS))
        )
        return bool(held.rowcount == 1)  # type: ignore[attr-defined]


def _release_refund_hold(sessions: sessionmaker[Session], order_id: uuid.UUID) -> None:
    with transaction(sessions) as session:
        session.execute(update(Order).where(Order.id == order_id, Order.lease_owner == REFUND_HOLDER)
                        .values(lease_owner=None, lease_expires_at=None))


def _refund(client: stripe.StripeClient, order_id: uuid.UUID, payment_intent_id: str) -> RefundReceipt | None:
    """Stripe's confirmation of the refund, or None if it made none (to be tried again, or refused)."""
    try:
        answer = client.v1.refunds.create(
            params={"payment_intent": payment_intent_id, "reason": "requested_by_customer",
                    "metadata": {"order_id": str(order_id)}},
            options={"idempotency_key": refund_key(order_id)},
        )
    except stripe.InvalidRequestError as error:
        if error.code != "charge_already_refunded":
            log.error("Refund for order %s refused by Stripe: %s", order_id, error.user_message)
            return None
        return RefundReceipt(already=True)
    except stripe.StripeError as error:
        log.warning("Refund for order %s not made now (%s); will try again", order_id, type(error).__name__)
        return None
    receipt = RefundReceipt.parse(answer)
    if receipt.status in _NOT_REFUNDED:
        log.error("Refund %s for order %s is %s in Stripe: no money went back; see the Stripe dashboard",
                  receipt, order_id, receipt.status)
        return None
    return receipt


def _record(sessions: sessionmaker[Session], pipeline: Pipeline, order_id: uuid.UUID, receipt: RefundReceipt,
            now: datetime) -> bool:
    """The refund in the order's story, the order `refunded` (its lease released) and the email
    due, in one transaction. A crash before it commits is harmless: the next sweep replays the
    same Idempotency-Key and gets the same refund back."""
    message = f"Refunded after final failure: {receipt}"
    with transaction(sessions) as session:
        before = pipeline.mark_refunded(session, order_id, message, expected=OrderStatus.NEEDS_ATTENTION)
        if before is None and not _refunded_already(session, pipeline, order_id, message):
            return False
        queue_refund_email(session, order_id, now)
    return True


def _refunded_already(session: Session, pipeline: Pipeline, order_id: uuid.UUID, message: str) -> bool:
    """Whether Stripe's webhook marked the order refunded first; if so, our refund joins its story."""
    status = session.scalar(select(Order.status).where(Order.id == order_id))
    if status is None or OrderStatus(status) is not OrderStatus.REFUNDED:
        return False  # mark_refunded logged what the order is instead
    pipeline.note(session, order_id, Step.VERIFY_PAYMENT, Outcome.REFUNDED, message)
    return True
