"""The rules that match a Stripe payment to an order, and when a pending checkout is asked about
again: pure functions over rows, shared by reconciliation (and named by its tests)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_
from sqlalchemy.engine import Row

from fulfilment.leases import db_now
from fulfilment.models import Order, OrderStatus
from healer.stripe.findings import Payment
from healer.stripe.webhooks import order_columns, parse_order_id


def claiming_order(payment: Payment, orders: list[Row[Any]]) -> Row[Any] | None:
    """The order this payment is for: the one holding its id, or the one its metadata names if
    that order has no payment id yet. Another order's payment (a second charge for an order that
    was paid already) is claimed by nobody: an orphan, whose money must go back."""
    named = parse_order_id(payment.metadata_order_id)
    for order in orders:
        if order.stripe_payment_intent_id == payment.id:
            return order
    for order in orders:
        if order.id == named and order.stripe_payment_intent_id is None:
            return order
    for order in orders:
        if order.id == named and awaiting_payment(order):
            return order  # its own payment id differs: reported as a mismatch, not an orphan
    return None


def awaiting_payment(order: Row[Any]) -> bool:
    # As the pipeline's mark_paid sees it: unpaid, or gave up at verification.
    return bool(order.status == OrderStatus.PENDING_PAYMENT or (
        order.status == OrderStatus.NEEDS_ATTENTION and order.paid_at is None))


def crossed_checkpoint(age: float, since_last_run: float | None, first: float) -> bool:
    """Whether an order of `age` seconds passed one of the ages first, 2*first, 4*first... since
    the last run (`since_last_run` seconds ago; None: no run yet, so any checkpoint counts)."""
    before = 0.0 if since_last_run is None else age - since_last_run
    checkpoint = first
    while checkpoint <= age:
        if checkpoint > before:
            return True
        checkpoint *= 2
    return False


def matching_columns() -> tuple[Any, ...]:
    """healer.stripe.webhooks' columns for matching a payment to an order, and `lease_free`: nobody holds
    the order's lease. The database says so, on the clock the lease was written on: ours may be
    off (fulfilment.leases)."""
    free = or_(Order.lease_expires_at.is_(None), Order.lease_expires_at < db_now())
    return (*order_columns(), free.label("lease_free"))
