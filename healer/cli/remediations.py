"""`healer remediations`: what healer did by itself (or, in dry-run, would have), newest first."""

from __future__ import annotations

import json
from typing import Protocol

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from fulfilment.errors import one_line
from healer import db
from healer.cli.exits import EXIT_FAILED, EXIT_OK
from healer.config import Settings
from healer.remediation.audit import Action, list_remediations


class RemediationsArgs(Protocol):
    """What `healer remediations` parses: --limit N, --json, optionally --action A."""

    limit: int
    json: bool


_RESULT_STYLES = {"success": "green", "dry_run": "cyan", "failure": "yellow", "escalated": "bold red"}


def remediations_command(settings: Settings, args: RemediationsArgs, console: Console) -> int:
    """`healer remediations [--action A] [--limit N] [--json]`: what healer did by itself, newest first."""
    action = getattr(args, "action", None)
    engine = db.make_engine(settings.effective_database_url)
    try:
        if settings.uses_embedded_database:
            db.upgrade(engine)
        views = list_remediations(db.make_session_factory(engine), limit=args.limit,
                                  action=Action(action) if action else None)
    except SQLAlchemyError as error:
        console.print(f"healer: cannot read remediations ({one_line(error)}); is the schema current "
                      f"(`healer db upgrade`)?", markup=False, highlight=False)
        return EXIT_FAILED
    finally:
        engine.dispose()
    if args.json:
        console.print(json.dumps([v.as_dict() for v in views], indent=2), markup=False, highlight=False,
                      soft_wrap=True)
        return EXIT_OK
    table = Table("time", "action", "target", "result", "mode", "why", "detail")
    for v in views:
        table.add_row(v.at, v.action, Text(v.target), Text(v.result, style=_RESULT_STYLES.get(v.result, "")),
                      v.mode, Text(v.reason), Text(v.detail))
    console.print(table)
    console.print(f"{len(views)} remediation(s), newest first", markup=False, highlight=False)
    return EXIT_OK
