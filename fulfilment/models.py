"""The `orders` table (the contract with the shop's web API) and each order's story, `order_events`.

Schema changes go through Alembic migrations in `healer/db/migrations`; these classes describe the
head revision and must stay in step with it (a test compares them).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    Uuid,
    false,
    func,
)
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from fulfilment.errors import ErrorClass

E = TypeVar("E", bound=enum.StrEnum)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both PostgreSQL (timestamptz) and SQLite (which drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def enum_column(members: type[E], length: int) -> Enum:
    """A `StrEnum` column stored as its plain string, in the VARCHAR(length) the migrations create
    (no database enum type, no CHECK: adding a member is a code change, not a migration). Python
    reads and writes the enum; a string that is not a member is refused before it reaches the table."""
    return Enum(members, native_enum=False, create_constraint=False, length=length, validate_strings=True,
                values_callable=lambda enum_type: [member.value for member in enum_type])


def utcnow() -> datetime:
    return datetime.now(UTC)


# Here, not in fulfilment.errors: render processes import that module, and must not load SQLAlchemy.
def database_unreachable(error: BaseException) -> bool:
    """The database went away (down, restarting, failing over, the network cut), as opposed to a
    statement it refused: an outage of the `database` dependency, not a fault of the caller's."""
    return isinstance(error, OperationalError) or (isinstance(error, DBAPIError) and error.connection_invalidated)


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: committed when the block ends, rolled back if it raises."""
    with sessions() as session, session.begin():
        yield session


class OrderStatus(enum.StrEnum):
    PENDING_PAYMENT = "pending_payment"
    PAID = "paid"
    FILES_MIGRATED = "files_migrated"
    PDF_RENDERED = "pdf_rendered"
    COMPLETED = "completed"
    NEEDS_ATTENTION = "needs_attention"
    REFUNDED = "refunded"

    @property
    def is_final(self) -> bool:
        return self in (OrderStatus.COMPLETED, OrderStatus.REFUNDED)


class Step(enum.StrEnum):
    VERIFY_PAYMENT = "verify_payment"
    MIGRATE_FILES = "migrate_files"
    RENDER = "render"
    EMAIL = "email"


class Outcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"  # retry scheduled
    GAVE_UP = "gave_up"  # order moved to needs_attention
    WAITING = "waiting"  # gated on a failing check; no attempt spent
    REQUEUED = "requeued"  # an operator or the daemon put it back in the queue
    REFUNDED = "refunded"  # refunded in Stripe: a fact about the payment, not a step attempt
    # What SendGrid's event webhook said of an email already sent: facts, not step attempts.
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"  # bounced, dropped or blocked (an order it parks is GAVE_UP instead)
    SPAM_REPORT = "spam_report"


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    status: Mapped[OrderStatus] = mapped_column(
        enum_column(OrderStatus, 32), default=OrderStatus.PENDING_PAYMENT, server_default="pending_payment"
    )
    email: Mapped[str] = mapped_column(String(320))
    session_token: Mapped[str | None] = mapped_column(String(128))
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    amount_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    template: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(Text, default="", server_default="")
    subtitle: Mapped[str] = mapped_column(Text, default="", server_default="")
    photo_key: Mapped[str | None] = mapped_column(String(1024))
    audio_key: Mapped[str | None] = mapped_column(String(1024))
    waveform_key: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, server_default=func.now())
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    payment_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    final_pdf_key: Mapped[str | None] = mapped_column(String(1024))
    download_token: Mapped[str | None] = mapped_column(String(64), unique=True)
    email_message_id: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error_step: Mapped[Step | None] = mapped_column(enum_column(Step, 32))
    last_error_class: Mapped[ErrorClass | None] = mapped_column(enum_column(ErrorClass, 32))
    last_error: Mapped[str | None] = mapped_column(Text)
    # The synthetic order of healer's canary (healer.jobs.canary), alive only while a canary runs:
    # never claimed, reconciled or swept, and left out of every business figure.
    is_canary: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        Index("ix_orders_due", "next_attempt_at"),
        Index("ix_orders_status", "status"),
        Index("ix_orders_payment_intent", "stripe_payment_intent_id"),
    )


class OrderEvent(Base):
    """One row per step attempt (or queue decision): the order's story."""

    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    order_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("orders.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    step: Mapped[Step] = mapped_column(enum_column(Step, 32))
    outcome: Mapped[Outcome] = mapped_column(enum_column(Outcome, 16))
    duration_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    error_class: Mapped[ErrorClass | None] = mapped_column(enum_column(ErrorClass, 32))
    message: Mapped[str] = mapped_column(Text, default="")
    worker: Mapped[str | None] = mapped_column(String(128))
    # The completion attempt's trace (W3C hex ids), when tracing is on: where its minutes went.
    trace_id: Mapped[str | None] = mapped_column(String(32))
    span_id: Mapped[str | None] = mapped_column(String(16))
