"""What a reconciliation run reads from Stripe (a `Payment`) and what it finds and reports:
one `Finding` per order or payment it acted on, and the run's `ReconcileReport`."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Payment:
    """The facts of a PaymentIntent that reconciliation uses."""

    id: str
    status: str
    amount: int
    currency: str
    created: datetime
    metadata_order_id: str | None

    @classmethod
    def from_stripe(cls, intent: dict[str, Any]) -> Payment:
        named = (intent.get("metadata") or {}).get("order_id")
        return cls(intent["id"], intent["status"], int(intent["amount"]), str(intent["currency"]),
                   datetime.fromtimestamp(int(intent["created"]), UTC),
                   str(named)[:255] if named else None)

    def as_intent(self) -> dict[str, Any]:
        return {"id": self.id, "amount": self.amount, "currency": self.currency,
                "metadata": {"order_id": self.metadata_order_id} if self.metadata_order_id else {}}

    def __str__(self) -> str:
        return f"{self.id} ({self.amount} {self.currency})"


class FindingKind(enum.StrEnum):
    MISSED_WEBHOOK = "missed_webhook"  # the payment succeeded, the order still waited for it
    STUCK = "stuck"  # paid, past the SLA, nobody working on it
    ORPHAN = "orphan"  # a succeeded payment that no order claims
    MISMATCH = "mismatch"  # names an awaiting order, but not with its amount or currency
    ORPHAN_RESOLVED = "orphan_resolved"  # a stored orphan that an order now holds

    @property
    def repairs(self) -> bool:
        return self in (FindingKind.MISSED_WEBHOOK, FindingKind.STUCK)


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    payment: Payment
    order_id: uuid.UUID | None
    detail: str


@dataclass(frozen=True)
class ReconcileReport:
    window_start: datetime
    payments_read: int
    stripe_requests: int
    findings: tuple[Finding, ...]
    dry_run: bool
    seconds: float
    # Succeeded payments judged (healer.stripe.missed), and those healer had no webhook for.
    payments_succeeded: int = 0
    payments_missed: int = 0

    def count(self, kind: FindingKind) -> int:
        return sum(1 for f in self.findings if f.kind is kind)

    @property
    def orders_repaired(self) -> int:
        return sum(1 for f in self.findings if f.kind.repairs)

    @property
    def orphans_found(self) -> int:
        return self.count(FindingKind.ORPHAN)

    @property
    def orphans_resolved(self) -> int:
        return self.count(FindingKind.ORPHAN_RESOLVED)


@dataclass
class Tally:
    """What one run has read and found so far (mutable, private to the run)."""

    payments_read: int = 0
    stripe_requests: int = 0
    newest_created: int | None = None
    payments_succeeded: int = 0
    payments_missed: int = 0
    seen: set[str] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)


# Called after each page with the payments read so far and the share of the window covered (0..1).
ProgressFn = Callable[[int, float], None]
