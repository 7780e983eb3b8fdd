"""Orders as operators see them, from the HTTP API and the CLI alike: lists, an order with its story,
and the one operator action on an order, `retry`."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import String, cast, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.models import Order, OrderEvent, OrderStatus, utcnow
from fulfilment.pipeline import ACTIVE, Pipeline
from fulfilment.secrets import Redactor
from healer.db import tally
from healer.errors import OperatorError


@dataclass(frozen=True)
class EventView:
    at: str
    step: str
    outcome: str
    duration_seconds: float
    error_class: str | None
    message: str
    trace_id: str | None = None  # the attempt's trace, when tracing was on


@dataclass(frozen=True)
class OrderView:
    id: str
    status: str
    template: str
    title: str
    created_at: str
    paid_at: str | None
    completed_at: str | None
    attempts: int
    next_attempt_at: str | None
    leased_by: str | None
    last_error_step: str | None
    last_error_class: str | None
    last_error: str | None
    final_pdf_key: str | None
    events: tuple[EventView, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def order_view(order: Order, events: list[OrderEvent] | None = None) -> OrderView:
    now = utcnow()
    leased = order.lease_owner if order.lease_expires_at and order.lease_expires_at > now else None
    return OrderView(
        id=str(order.id),
        status=order.status,
        template=order.template,
        title=order.title,
        created_at=_iso(order.created_at) or "",
        paid_at=_iso(order.paid_at),
        completed_at=_iso(order.completed_at),
        attempts=order.attempts,
        next_attempt_at=_iso(order.next_attempt_at),
        leased_by=leased,
        last_error_step=order.last_error_step,
        last_error_class=order.last_error_class,
        last_error=order.last_error,
        final_pdf_key=order.final_pdf_key,
        events=tuple(
            EventView(_iso(e.at) or "", e.step, e.outcome, round(e.duration_seconds, 3),
                      e.error_class, e.message, e.trace_id)
            for e in events or ()
        ),
    )


def redacted(view: OrderView, redact: Redactor) -> OrderView:
    """The view with its error texts redacted: they come from exceptions, which may quote a secret."""
    return replace(
        view,
        last_error=redact(view.last_error) if view.last_error else view.last_error,
        events=tuple(replace(e, message=redact(e.message)) for e in view.events),
    )


# As git takes a commit: the shortest prefix accepted, so that a typo rarely names another order.
MIN_ID_PREFIX = 4


class UnknownOrderId(OperatorError):
    """No order's id is, or starts with, what was given."""


class AmbiguousOrderId(OperatorError):
    """What was given starts several orders' ids."""


def check_id_prefix(given: str) -> str:
    """An order id as typed (whole, or a prefix of at least MIN_ID_PREFIX hex digits), or ValueError."""
    text = given.strip().lower()
    digits = text.replace("-", "")
    if not MIN_ID_PREFIX <= len(digits) <= 32 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"{given[:64]!r} is not an order id, or the start of one "
                         f"(at least {MIN_ID_PREFIX} hex digits)")
    return text


def resolve_id(sessions: sessionmaker[Session], given: str) -> uuid.UUID:
    """The id of the one order whose id is or starts with `given` (see `check_id_prefix`).

    A whole id is returned as it is (whether that order exists is the caller's question); a prefix
    must match exactly one order. Ids compare without dashes, as SQLite stores them that way.
    """
    digits = check_id_prefix(given).replace("-", "")
    if len(digits) == 32:
        return uuid.UUID(digits)
    plain_id = func.replace(cast(Order.id, String), "-", "")
    with sessions() as session:
        found = session.scalars(select(Order.id).where(plain_id.like(f"{digits}%")).limit(3)).all()
    if not found:
        raise UnknownOrderId(f"no order id starts with {given!r} (`healer orders list` shows them)")
    if len(found) > 1:
        shown = ", ".join(str(i) for i in found[:2])
        raise AmbiguousOrderId(f"{given!r} starts more than one order id ({shown}, ...): give more of it")
    return found[0]


def story(sessions: sessionmaker[Session], order_id: uuid.UUID) -> OrderView | None:
    with sessions() as session:
        order = session.get(Order, order_id)
        if order is None:
            return None
        events = session.scalars(
            select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
        ).all()
        return order_view(order, list(events))


def list_orders(
    sessions: sessionmaker[Session],
    *,
    status: OrderStatus | None = None,
    stuck_after_seconds: int | None = None,
    limit: int = 200,
) -> list[OrderView]:
    """Newest first. `stuck_after_seconds`: paid, not completed, paid longer ago than that."""
    query = select(Order).order_by(Order.created_at.desc()).limit(limit)
    if status is not None:
        query = query.where(Order.status == status.value)
    if stuck_after_seconds is not None:
        cutoff = utcnow() - timedelta(seconds=stuck_after_seconds)
        query = query.where(
            or_(Order.status.in_(ACTIVE), Order.status == OrderStatus.NEEDS_ATTENTION.value),
            Order.paid_at.is_not(None),
            Order.paid_at < cutoff,
        )
    with sessions() as session:
        return [order_view(o) for o in session.scalars(query).all()]


def count_by_status(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Customers' orders by status (statuses with none left out), from the database's tally."""
    with sessions() as session:
        return tally.counts(session)[0]


# Paid and not yet delivered: the customer's money is taken and the poster not sent. Neither
# completed nor refunded; `needs_attention` counts only with `paid_at` (without it, the order gave
# up at verification: no payment succeeded).
AT_RISK = (OrderStatus.PAID, OrderStatus.FILES_MIGRATED, OrderStatus.PDF_RENDERED, OrderStatus.NEEDS_ATTENTION)


@dataclass(frozen=True)
class MoneyAtRisk:
    orders: int
    oldest_paid_at: datetime | None
    amounts: dict[str, int]  # currency (lowercase, as stored) -> total in its minor unit

    def oldest_age_seconds(self, now: datetime | None = None) -> float | None:
        if self.oldest_paid_at is None:
            return None
        return max(0.0, ((now or utcnow()) - self.oldest_paid_at).total_seconds())


def money_at_risk(sessions: sessionmaker[Session]) -> MoneyAtRisk:
    """Paid orders not completed and not refunded: how many, since when, how much per currency.

    One aggregate over `ix_orders_status` (the statuses at risk are few rows of a large table),
    grouped by currency: its cost follows the backlog, not the order history.
    """
    query = (
        select(Order.currency, func.count(), func.sum(Order.amount_cents), func.min(Order.paid_at))
        .where(Order.status.in_(AT_RISK), Order.paid_at.is_not(None), Order.is_canary.is_(False))
        .group_by(Order.currency)
    )
    with sessions() as session:
        rows = session.execute(query).all()
    oldest = [as_utc(paid_at) for *_, paid_at in rows if paid_at is not None]
    return MoneyAtRisk(
        orders=sum(int(count) for _, count, _, _ in rows),
        oldest_paid_at=min(oldest, default=None),
        amounts={currency: int(total or 0) for currency, _, total, _ in sorted(rows, key=lambda row: row[0])},
    )


def as_utc(value: datetime | str) -> datetime:
    """An aggregate's timestamp: MIN() and MAX() bypass the column type, and SQLite hands back a
    string or a naive datetime (both in UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def find_by_download_token(sessions: sessionmaker[Session], token: str) -> Order | None:
    with sessions() as session:
        return session.scalar(select(Order).where(Order.download_token == token))


# Statuses an operator's retry cannot move on: nothing is queued, nothing changes.
NOTHING_TO_RETRY = {
    OrderStatus.COMPLETED: "nothing to do: the order is completed",
    OrderStatus.REFUNDED: "nothing to do: the order was refunded",
    # Verifying again would ask Stripe about a payment it has already called not succeeded, and
    # park the order in needs_attention; the webhook or reconciliation queues it once it is paid.
    OrderStatus.PENDING_PAYMENT: "nothing to do: the payment has not succeeded; the order is queued "
                                 "by itself once Stripe reports it paid",
}


class NothingToRetry(Exception):
    """An operator asked to retry an order that has nothing to retry; it is unchanged."""


def retry(pipeline: Pipeline, order_id: uuid.UUID, reason: str) -> OrderStatus:
    """Re-queue an order where it stopped (`healer orders retry`, `POST /api/orders/{id}/retry`).

    Returns the status the order is queued at. Idempotent: an order already queued and due, or
    being worked right now, stays as it is (no story line, no reset, no Stripe call). Raises
    OrderNotFound, or NothingToRetry for a completed, refunded or unpaid order.
    """
    status = pipeline.get(order_id).status
    if status in NOTHING_TO_RETRY:
        raise NothingToRetry(NOTHING_TO_RETRY[status])
    status = pipeline.requeue(order_id, reason)
    if status.is_final:  # completed or refunded between the two reads: still nothing was done
        raise NothingToRetry(NOTHING_TO_RETRY[status])
    return status
