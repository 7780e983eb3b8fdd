"""Healer's own tables: what Stripe told us (webhook events), what reconciliation did and where it
stands (runs, state), payments with no order (orphans), one-off customer notices, and the email
events SendGrid reported.

They are declared on `fulfilment.models.Base` so that one metadata (and one Alembic history) holds
the whole schema; `fulfilment` never imports them. Revision 0002 creates them, by hand, and these
classes must stay in step with it (tests compare them); 0004 adds how an orphan was resolved, 0006
the SendGrid events, 0007_reconcile_missed the sales each reconciliation run judged, 0009 the
tally of orders by status.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Integer,
    String,
    Text,
    Uuid,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from fulfilment.models import Base, UTCDateTime, enum_column, utcnow

# Autoincrementing 64-bit keys on PostgreSQL; SQLite only autoincrements a plain INTEGER key.
_BIG_ID = BigInteger().with_variant(Integer, "sqlite")


class WebhookEvent(Base):
    """One row per Stripe event id ever accepted: a redelivery finds its row and changes nothing."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # Stripe's evt_...
    type: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    result: Mapped[str] = mapped_column(String(32))
    order_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)  # no FK: events may name no order


class RunResult(enum.StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"


class ReconcileRun(Base):
    """One row per (non dry) reconciliation run: when, how much it read, what it repaired."""

    __tablename__ = "reconcile_runs"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    payments_read: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    orders_repaired: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    orphans_found: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Succeeded payments the run judged, and those healer had no webhook for (healer.stripe.missed).
    payments_succeeded: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    payments_missed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    stripe_requests: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    result: Mapped[RunResult] = mapped_column(enum_column(RunResult, 16), default=RunResult.RUNNING)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(128))


class ReconcileState(Base):
    """A single row (`name` = "stripe"): the cursor reconciliation resumes from, and on SQLite the
    lease that lets one daemon at a time reconcile (PostgreSQL uses an advisory lock instead)."""

    __tablename__ = "reconcile_state"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    cursor_created: Mapped[int | None] = mapped_column(BigInteger)  # Stripe `created`, unix seconds
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


RESOLUTION_MAX_CHARS = 2000


class OrphanPayment(Base):
    """A succeeded payment that no order claims: money taken for nothing, reported once. It counts
    (healer_orphan_payments, the HealerOrphanPayments alert) until resolved: refunded in Stripe, claimed
    by an order after all, or marked dealt with by an operator (see healer.stripe.orphans)."""

    __tablename__ = "orphan_payments"

    payment_intent_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    created: Mapped[datetime] = mapped_column(UTCDateTime)  # the PaymentIntent's, from Stripe
    metadata_order_id: Mapped[str | None] = mapped_column(String(255))
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolution: Mapped[str | None] = mapped_column(String(RESOLUTION_MAX_CHARS))  # how, in one line


class NoticeKind(enum.StrEnum):
    DELAY_EMAIL = "delay_email"
    REFUND_EMAIL = "refund_email"


class OrderNotice(Base):
    """A one-off message sent about an order ("your poster is delayed"): the primary key makes
    each kind go out at most once per order, whichever daemon gets there first."""

    __tablename__ = "order_notices"

    order_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[NoticeKind] = mapped_column(enum_column(NoticeKind, 32), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")


class SendGridEvent(Base):
    """One row per SendGrid event id ever accepted (`sg_event_id`): a batch posted again, by
    SendGrid retrying or by someone replaying it, finds its rows and changes nothing."""

    __tablename__ = "sendgrid_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # SendGrid's sg_event_id
    event: Mapped[str] = mapped_column(String(32))  # the healer_email_events_total label it counted as
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    result: Mapped[str] = mapped_column(String(32))
    order_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)  # no FK: events may name no order


class OrderStatusTally(Base):
    """How many orders each status has gained or lost, appended by triggers on `orders` (migration
    0009) and folded back to one row per status by healer.db.tally: a status's count is the sum of
    its rows. Never written by hand, except by that folding."""

    __tablename__ = "order_status_tally"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(32))
    delta: Mapped[int] = mapped_column(BigInteger)


def insert_once(session: Session, model: type[Base], **values: Any) -> bool:
    """INSERT that does nothing if the key exists; True if this call inserted the row.

    ON CONFLICT DO NOTHING keeps the transaction usable (an IntegrityError would abort it on
    PostgreSQL), and a concurrent insert of the same key waits for the other and then loses.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(model).values(**values).on_conflict_do_nothing()
    return bool(session.execute(statement).rowcount == 1)  # type: ignore[attr-defined]
