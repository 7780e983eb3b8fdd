"""Orphan payments once found: what still counts, how one is resolved, and `healer orphans`.

Reconciliation stores a succeeded payment that no order claims (healer.stripe.reconcile). It counts in
`healer_orphan_payments`, and so keeps HealerOrphanPayments firing, until it is resolved, once, by
whichever comes first:
- Stripe reports it refunded in full: a signed `charge.refunded` webhook (healer.stripe.webhooks);
- an order holds the payment after all (restored, or repaired by reconciliation): the next run;
- an operator says it was dealt with: `healer orphans resolve PI_ID --note TEXT`.
Resolving is a compare-and-set on `resolved_at IS NULL`, so of two resolvers racing the first one's
account stands. The row stays, with when and how, for the books.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.models import transaction, utcnow
from healer.db.models import RESOLUTION_MAX_CHARS, OrphanPayment

log = logging.getLogger(__name__)


BY_OPERATOR = "by operator: "
NOTE_MAX_CHARS = RESOLUTION_MAX_CHARS - len(BY_OPERATOR)


def count_unresolved(session: Session) -> int:
    """What `healer_orphan_payments` reports: orphans nobody has dealt with yet."""
    query = select(func.count()).select_from(OrphanPayment).where(OrphanPayment.resolved_at.is_(None))
    return int(session.scalar(query) or 0)


def resolve(session: Session, payment_intent_id: str, resolution: str, at: datetime) -> bool:
    """Mark the orphan resolved; False if it is unknown or was resolved already (nothing changes).
    The caller logs the resolution, as only it knows what may be said."""
    changed = session.execute(
        update(OrphanPayment)
        .where(OrphanPayment.payment_intent_id == payment_intent_id, OrphanPayment.resolved_at.is_(None))
        .values(resolved_at=at, resolution=resolution[:RESOLUTION_MAX_CHARS])
    )
    return bool(changed.rowcount == 1)  # type: ignore[attr-defined]


# -- views ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrphanView:
    payment_intent_id: str
    amount_cents: int
    currency: str
    created: str
    metadata_order_id: str | None
    first_seen_at: str
    resolved_at: str | None
    resolution: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "payment_intent_id": self.payment_intent_id, "amount_cents": self.amount_cents,
            "currency": self.currency, "created": self.created,
            "metadata_order_id": self.metadata_order_id, "first_seen_at": self.first_seen_at,
            "resolved_at": self.resolved_at, "resolution": self.resolution,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _view(o: OrphanPayment) -> OrphanView:
    return OrphanView(o.payment_intent_id, o.amount_cents, o.currency, _iso(o.created) or "",
                      o.metadata_order_id, _iso(o.first_seen_at) or "", _iso(o.resolved_at), o.resolution)


def list_orphans(sessions: sessionmaker[Session], *, include_resolved: bool = False) -> list[OrphanView]:
    """Newest payment first; unresolved ones only unless `include_resolved`."""
    query = select(OrphanPayment).order_by(OrphanPayment.created.desc(),
                                           OrphanPayment.payment_intent_id.desc())
    if not include_resolved:
        query = query.where(OrphanPayment.resolved_at.is_(None))
    with sessions() as session:
        return [_view(o) for o in session.scalars(query).all()]


class Resolved(enum.StrEnum):
    RESOLVED = "resolved"
    UNKNOWN = "unknown"
    ALREADY = "already_resolved"


def resolve_by_operator(sessions: sessionmaker[Session], payment_intent_id: str, note: str,
                        clock: Callable[[], datetime] = utcnow) -> tuple[Resolved, OrphanView | None]:
    """An operator's resolution: the outcome, and the row as it stands afterwards (None if unknown)."""
    with transaction(sessions) as session:
        done = resolve(session, payment_intent_id, BY_OPERATOR + note, clock())
        row = session.get(OrphanPayment, payment_intent_id, populate_existing=True)
        view = _view(row) if row is not None else None
    if done:
        # The note is the operator's free text: stored, not logged.
        log.info("Orphan payment %s resolved by an operator", payment_intent_id)
        return Resolved.RESOLVED, view
    return (Resolved.UNKNOWN if view is None else Resolved.ALREADY), view


# -- `healer orphans ...` -------------------------------------------------------------------------
