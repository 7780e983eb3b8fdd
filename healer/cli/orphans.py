"""`healer orphans list|resolve`: payments no order claims, and marking one dealt with."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Protocol, TypeVar

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.errors import one_line
from healer import db
from healer.cli.exits import EXIT_FAILED, EXIT_OK
from healer.config import Settings
from healer.stripe.orphans import NOTE_MAX_CHARS, Resolved, list_orphans, resolve_by_operator

T = TypeVar("T")


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
