"""`healer remediations`: what healer did by itself (or, in dry-run, would have), newest first."""

from __future__ import annotations

from typing import Protocol

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session, sessionmaker

from healer.cli.consoles import print_json
from healer.cli.exits import EXIT_OK
from healer.remediation.audit import Action, list_remediations


class RemediationsArgs(Protocol):
    """What `healer remediations` parses: --limit N, --json, optionally --action A."""

    limit: int
    json: bool


_RESULT_STYLES = {"success": "green", "dry_run": "cyan", "failure": "yellow", "escalated": "bold red"}


def remediations_command(sessions: sessionmaker[Session], args: RemediationsArgs, console: Console) -> int:
    """`healer remediations [--action A] [--limit N] [--json]`: what healer did by itself, newest first."""
    action = getattr(args, "action", None)
    views = list_remediations(sessions, limit=args.limit, action=Action(action) if action else None)
    if args.json:
        print_json([v.as_dict() for v in views], console)
        return EXIT_OK
    table = Table("time", "action", "target", "result", "mode", "why", "detail")
    for v in views:
        table.add_row(v.at, v.action, Text(v.target), Text(v.result, style=_RESULT_STYLES.get(v.result, "")),
                      v.mode, Text(v.reason), Text(v.detail))
    console.print(table)
    console.print(f"{len(views)} remediation(s), newest first", markup=False, highlight=False)
    return EXIT_OK
