"""`healer orphans list|resolve`: payments no order claims, and marking one dealt with."""

from __future__ import annotations

from typing import Protocol

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session, sessionmaker

from healer.cli.consoles import id_column, print_json
from healer.cli.exits import EXIT_OK
from healer.errors import OperatorError
from healer.stripe.orphans import NOTE_MAX_CHARS, Resolved, list_orphans, resolve_by_operator


class OrphansListArgs(Protocol):
    all: bool
    json: bool


class OrphansResolveArgs(Protocol):
    payment_intent_id: str
    note: str
    json: bool


def parse_note(value: str) -> str:
    """`--note`: what was done, on one line, short enough to be stored whole."""
    note = " ".join(value.split())
    if not note:
        raise ValueError("the note must say what was done (e.g. 'refunded by hand, ticket 123')")
    if len(note) > NOTE_MAX_CHARS:
        raise ValueError(f"the note is {len(note)} characters; at most {NOTE_MAX_CHARS} are kept")
    return note


def orphans_list_command(sessions: sessionmaker[Session], args: OrphansListArgs, console: Console) -> int:
    """`healer orphans list [--all] [--json]`."""
    views = list_orphans(sessions, include_resolved=args.all)
    if args.json:
        print_json([v.as_dict() for v in views], console)
        return EXIT_OK
    table = Table(id_column("payment", 27), "amount", "created", id_column("metadata order id"), "first seen",
                  "resolution")
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


def orphans_resolve_command(sessions: sessionmaker[Session], args: OrphansResolveArgs, console: Console) -> int:
    """`healer orphans resolve PI_ID --note TEXT [--json]`: nothing changes unless the orphan is unresolved."""
    pi = args.payment_intent_id
    outcome, view = resolve_by_operator(sessions, pi, args.note)
    if outcome is Resolved.UNKNOWN or view is None:
        raise OperatorError(f"no orphan payment {pi!r} (`healer orphans list --all` shows them all)")
    if outcome is Resolved.ALREADY:
        raise OperatorError(f"orphan payment {pi} was resolved already, at {view.resolved_at}: {view.resolution}")
    if args.json:
        print_json(view.as_dict(), console)
    else:
        console.print(f"orphan payment {pi} ({view.amount_cents} {view.currency}) resolved: {view.resolution}",
                      markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK
