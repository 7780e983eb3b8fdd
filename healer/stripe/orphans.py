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
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.errors import one_line
from fulfilment.models import transaction, utcnow
from healer import db
from healer.config import Settings
from healer.db.models import RESOLUTION_MAX_CHARS, OrphanPayment

log = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_OK, EXIT_FAILED = 0, 1
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


class Resolved(str, enum.Enum):
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


class OrphansListArgs(Protocol):
    all: bool
    json: bool


class OrphansResolveArgs(Protocol):
    payment_intent_id: str
    note: str


def parse_note(value: str) -> str:
    """`--note`: what was done, on one line, short enough to be stored whole."""
    note = " ".join(value.split())
    if not note:
        raise ValueError("the note must say what was done (e.g. 'refunded by hand, ticket 123')")
    if len(note) > NOTE_MAX_CHARS:
        raise ValueError(f"the note is {len(note)} characters; at most {NOTE_MAX_CHARS} are kept")
    return note


def orphans_list_command(settings: Settings, args: OrphansListArgs, console: Console, errors: Console) -> int:
    """`healer orphans list [--all] [--json]`."""
    try:
        views = _with_sessions(settings, lambda s: list_orphans(s, include_resolved=args.all))
    except SQLAlchemyError as error:
        errors.print(f"healer: cannot read orphan payments ({one_line(error)}); is the schema current "
                     f"(`healer db upgrade`)?", markup=False, highlight=False)
        return EXIT_FAILED
    if args.json:
        console.print(json.dumps([v.as_dict() for v in views], indent=2), markup=False, highlight=False,
                      soft_wrap=True)
        return EXIT_OK
    table = Table("payment", "amount", "created", "metadata order id", "first seen", "resolution")
    for v in views:
        resolution = f"{v.resolved_at}: {v.resolution}" if v.resolved_at else "-"
        table.add_row(v.payment_intent_id, f"{v.amount_cents} {v.currency}", v.created,
                      Text(v.metadata_order_id or "-"), v.first_seen_at, Text(resolution))
    console.print(table)
    unresolved = sum(1 for v in views if v.resolved_at is None)
    which = f"{len(views)} orphan payment(s), {unresolved} unresolved" if args.all else \
        f"{unresolved} unresolved orphan payment(s)"
    console.print(f"{which}, newest first", markup=False, highlight=False)
    return EXIT_OK


def orphans_resolve_command(settings: Settings, args: OrphansResolveArgs, console: Console,
                            errors: Console) -> int:
    """`healer orphans resolve PI_ID --note TEXT`: nothing changes unless the orphan is unresolved."""
    pi = args.payment_intent_id
    try:
        outcome, view = _with_sessions(settings, lambda s: resolve_by_operator(s, pi, args.note))
    except SQLAlchemyError as error:
        errors.print(f"healer: cannot resolve {pi} ({one_line(error)}); is the schema current "
                     f"(`healer db upgrade`)?", markup=False, highlight=False)
        return EXIT_FAILED
    if outcome is Resolved.UNKNOWN or view is None:
        errors.print(f"healer: no orphan payment {pi!r} (`healer orphans list --all` shows them all)",
                     markup=False, highlight=False)
        return EXIT_FAILED
    if outcome is Resolved.ALREADY:
        errors.print(f"healer: orphan payment {pi} was resolved already, at {view.resolved_at}: "
                     f"{view.resolution}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_FAILED
    console.print(f"orphan payment {pi} ({view.amount_cents} {view.currency}) resolved: {view.resolution}",
                  markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK


def _with_sessions(settings: Settings, work: Callable[[sessionmaker[Session]], T]) -> T:
    engine = db.make_engine(settings.effective_database_url)
    try:
        if settings.uses_embedded_database:
            db.upgrade(engine)
        return work(db.make_session_factory(engine))
    finally:
        engine.dispose()
