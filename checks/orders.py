"""The order backlog: paid customers who are still waiting, and uploads about to be lost.

One aggregate query, grouped by the last error class (so a remedy can name the runbook of what is
holding the orders up), however many orders there are. Rules, worst first:

- failing, runbook 2: a paid order not yet migrated whose temporary uploads expire (created_at +
  SESSION_EXPIRATION) within `expiry_margin_seconds`, or already have. Once they are gone the
  poster cannot be made, so this is the one alarm that must be acted on before it is too late.
- failing: orders in `needs_attention`. Retries are over; nothing automatic will finish them.
- failing: a paid order still not completed `stuck_failing_seconds` after payment.
- warning: paid orders past the SLA (`sla_seconds`) but not yet that old. They are usually waiting
  on a failing dependency whose own check is already alarming; a warning avoids a second alarm
  for the same cause while still showing the backlog.

It depends on the `database` check: skipped while that one fails, and skipped (not failing, no
traceback) when its own query finds the database gone before that check has noticed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from checks.base import Check, CheckFailed, CheckSkipped, CheckWarning, Healthy, Runbook
from fulfilment.errors import ErrorClass, one_line
from fulfilment.models import Order, OrderStatus, Step, database_unreachable, utcnow
from fulfilment.pipeline import ACTIVE, NEXT_STEP

# Paid, but the uploads are still at their temporary keys: the next step is verification or migration.
_NOT_MIGRATED = tuple(s.value for s, step in NEXT_STEP.items() if step in (Step.VERIFY_PAYMENT, Step.MIGRATE_FILES))
_OPEN = (*ACTIVE, OrderStatus.NEEDS_ATTENTION)


@dataclass(frozen=True)
class Backlog:
    stuck: int = 0
    oldest_stuck_paid_at: datetime | None = None
    needs_attention: int = 0
    uploads_expiring: int = 0  # expire within the margin, not yet expired
    uploads_expired: int = 0
    soonest_created_at: datetime | None = None  # of the paid, not-migrated orders
    first_expiring_created_at: datetime | None = None  # of those expiring, not yet expired
    # last_error_class ("none" if unset) -> orders, for the runbook each failure belongs to
    stuck_by_error: dict[str, int] = field(default_factory=dict)
    attention_by_error: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class OrdersCheck(Check):
    name: ClassVar[str] = "orders"
    runbook: ClassVar[Runbook] = Runbook.S3_FILES_MISSING

    sessions: sessionmaker[Session] = field(repr=False, compare=False)
    sla_seconds: float = 600.0  # HEALER_ORDER_SLA_SECONDS
    stuck_failing_seconds: float = 3600.0
    session_expiration_seconds: float = 86400.0  # SESSION_EXPIRATION
    expiry_margin_seconds: float = 3600.0
    depends_on: tuple[str, ...] = ("database",)
    critical: bool = False  # a backlog must not take the daemon out of service: it is what fixes it

    def probe(self) -> str | Healthy:
        now = utcnow()
        try:
            backlog = self._backlog(now)
        except SQLAlchemyError as error:
            if database_unreachable(error):  # the database check raises this alarm, not us
                raise CheckSkipped(self.depends_on, one_line(error)) from None
            raise
        data = _data(backlog, now, self.session_expiration_seconds)
        problems = self._failures(backlog, now)
        summary = _summary(backlog, now, self.sla_seconds)
        if problems:
            details, remedies = zip(*problems, strict=True)
            raise CheckFailed("; ".join(details), " ".join(dict.fromkeys(remedies)), data)
        if backlog.stuck:
            raise CheckWarning(summary, _stuck_remedy(backlog), data)
        return Healthy(summary, data)

    def _backlog(self, now: datetime) -> Backlog:
        paid = Order.paid_at.is_not(None)
        stuck = and_(paid, Order.status.in_(ACTIVE),
                     Order.paid_at < now - timedelta(seconds=self.sla_seconds))
        not_migrated = and_(paid, Order.status.in_(_NOT_MIGRATED))
        expired_before = now - timedelta(seconds=self.session_expiration_seconds)
        expiring_before = expired_before + timedelta(seconds=self.expiry_margin_seconds)
        expired = and_(not_migrated, Order.created_at <= expired_before)
        expiring = and_(not_migrated, Order.created_at > expired_before, Order.created_at <= expiring_before)
        query = select(
            Order.last_error_class,
            _count(stuck),
            func.min(case((stuck, Order.paid_at), else_=None)),
            _count(Order.status == OrderStatus.NEEDS_ATTENTION.value),
            _count(expiring),
            _count(expired),
            func.min(case((not_migrated, Order.created_at), else_=None)),
            func.min(case((expiring, Order.created_at), else_=None)),
        ).where(or_(paid, Order.status == OrderStatus.NEEDS_ATTENTION.value),
                # Every figure above is of an open order: saying so lets ix_orders_status find the few
                # open ones instead of reading every completed order (issue 17: a million of them).
                Order.status.in_(_OPEN),
                Order.is_canary.is_(False)).group_by(Order.last_error_class)  # the canary's is no customer's
        with self.sessions() as session:
            return _merge(session.execute(query).all())

    def _failures(self, backlog: Backlog, now: datetime) -> list[tuple[str, str]]:
        problems = []
        if backlog.uploads_expired or backlog.uploads_expiring:
            problems.append((_expiry_detail(backlog, now, self.session_expiration_seconds), _EXPIRY_REMEDY))
        if backlog.needs_attention:
            problems.append((
                f"{backlog.needs_attention} orders in needs_attention{_by_error(backlog.attention_by_error)}",
                _attention_remedy(backlog.attention_by_error),
            ))
        oldest = _age(backlog.oldest_stuck_paid_at, now)
        if oldest is not None and oldest >= self.stuck_failing_seconds:
            problems.append((_summary(backlog, now, self.sla_seconds), _stuck_remedy(backlog)))
        return problems


def _count(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _merge(rows: Sequence[Any]) -> Backlog:
    stuck = needs_attention = expiring = expired = 0
    oldest: datetime | None = None
    soonest: datetime | None = None
    first_expiring: datetime | None = None
    stuck_by_error: dict[str, int] = {}
    attention_by_error: dict[str, int] = {}
    for error_class, n_stuck, oldest_paid, n_attention, n_expiring, n_expired, first_created, expiring_created in rows:
        stuck += int(n_stuck)
        needs_attention += int(n_attention)
        expiring += int(n_expiring)
        expired += int(n_expired)
        oldest = _earliest(oldest, oldest_paid)
        soonest = _earliest(soonest, first_created)
        first_expiring = _earliest(first_expiring, expiring_created)
        if n_stuck:
            stuck_by_error[error_class or "none"] = int(n_stuck)  # one row per class: no summing
        if n_attention:
            attention_by_error[error_class or "none"] = int(n_attention)
    return Backlog(stuck, oldest, needs_attention, expiring, expired, soonest, first_expiring,
                   stuck_by_error, attention_by_error)


def _earliest(current: datetime | None, value: datetime | str | None) -> datetime | None:
    if value is None:
        return current
    # SQLite's MIN() hands back a string or a naive datetime, bypassing the column type.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value if current is None else min(current, value)


def _age(then: datetime | None, now: datetime) -> float | None:
    return None if then is None else max(0.0, (now - then).total_seconds())


def _data(backlog: Backlog, now: datetime, expiration: float) -> dict[str, float]:
    soonest = _age(backlog.soonest_created_at, now)
    return {
        "stuck": float(backlog.stuck),
        "oldest_stuck_age_seconds": _age(backlog.oldest_stuck_paid_at, now) or 0.0,
        "needs_attention": float(backlog.needs_attention),
        "uploads_expiring": float(backlog.uploads_expiring),
        "uploads_expired": float(backlog.uploads_expired),
        # Seconds until the first paid, not-migrated order's uploads expire (negative: already did).
        "soonest_upload_expiry_seconds": expiration - soonest if soonest is not None else expiration,
    }


def _summary(backlog: Backlog, now: datetime, sla: float) -> str:
    if not backlog.stuck:
        return f"no paid order waiting longer than {_duration(sla)}"
    oldest = _age(backlog.oldest_stuck_paid_at, now) or 0.0
    return (f"{backlog.stuck} paid orders not completed within {_duration(sla)}, oldest paid "
            f"{_duration(oldest)} ago{_by_error(backlog.stuck_by_error)}")


def _by_error(counts: dict[str, int]) -> str:
    if not counts:
        return ""
    return f" (last errors {', '.join(f'{name}: {n}' for name, n in _ranked(counts))})"


def _ranked(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Error classes, most frequent first (then by name, for a stable text)."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _runbooks(counts: dict[str, int]) -> list[str]:
    """The runbook issues of these error classes (fulfilment.errors' table), most orders first."""
    runbooks = []
    for name, _ in _ranked(counts):
        try:
            runbooks.append(ErrorClass(name).policy.runbook)
        except ValueError:  # "none", or a class this version does not know
            continue
    return [r for r in dict.fromkeys(runbooks) if r != "-"]


def _expiry_detail(backlog: Backlog, now: datetime, expiration: float) -> str:
    parts = []
    if backlog.uploads_expired:
        parts.append(f"{backlog.uploads_expired} paid orders' temporary uploads have expired before migration")
    if backlog.uploads_expiring:
        first = expiration - (_age(backlog.first_expiring_created_at, now) or 0.0)
        when = f"first in {_duration(first)}"
        parts.append(f"{backlog.uploads_expiring} paid orders' temporary uploads expire before migration ({when})")
    return "; ".join(parts)


def _stuck_remedy(backlog: Backlog) -> str:
    named = _runbooks(backlog.stuck_by_error)
    where = f"runbook {', '.join(named)}" if named else "the failing check in `healer check`"
    return (f"Fix what holds them up ({where}; `healer orders list --stuck` shows each order's last "
            f"error); waiting orders resume by themselves once their dependency check is green.")


def _attention_remedy(counts: dict[str, int]) -> str:
    named = _runbooks(counts)
    where = f" (runbook {', '.join(named)})" if named else ""
    return (
        f"Retries are exhausted: read each order's story (`healer orders list --status "
        f"needs_attention`, `healer orders show ID`), fix the cause its last error names{where}, "
        f"then `healer orders retry ID`; refund what cannot be made."
    )


_EXPIRY_REMEDY = (
    "Runbook 2: migrate these orders' files now: fix the S3 check first if it fails, then "
    "`healer orders retry --all`. Once the uploads expire the customer must upload again (or be "
    "refunded); `healer orders list --status paid` shows which orders."
)


def _duration(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
