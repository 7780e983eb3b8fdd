"""`healer canary [--json]`: one canary run now (healer.jobs.canary), on the daemon's database and
clients, whatever the checks say: a table of its phases (or JSON) and exit 0 when every phase
passed, 1 when one failed (the table names the runbook issue and what to do).

It writes (the canary's row and objects, removed before it returns), so the database is opened
read-write; like every command, it never creates one.
"""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from healer.cli.consoles import out, print_json
from healer.cli.exits import EXIT_FAILED, EXIT_OK
from healer.cli.services import database
from healer.config import Settings
from healer.jobs.canary_results import CanaryRun, PhaseOutcome

_STYLES = {PhaseOutcome.OK: "green", PhaseOutcome.FAILED: "bold red", PhaseOutcome.SKIPPED: "dim"}


def cmd_canary(settings: Settings, args: argparse.Namespace) -> int:
    from healer.wiring import build_canary, rendering

    with database(settings, read_only=False) as services, rendering(settings) as render:
        run = build_canary(settings, services, render).run()
    if args.json:
        print_json(run.as_dict())
    else:
        print_run(run)
    return EXIT_OK if run.ok else EXIT_FAILED


def print_run(run: CanaryRun) -> None:
    table = Table("phase", "result", "time", "detail", "runbook", "remedy", show_lines=True)
    for phase in run.phases:
        table.add_row(phase.phase.value, Text(phase.outcome.value, style=_STYLES[phase.outcome]),
                      f"{phase.duration_seconds * 1000:.0f} ms", Text(phase.detail), Text(phase.runbook or ""),
                      Text(phase.remedy))
    out.print(table)
    failure = run.failure
    if failure is None:
        out.print(Text(f"canary passed in {run.duration_seconds:.2f} s", style="green"))
    else:
        said = f"canary failed at {failure.phase.value} ({failure.error_class or '?'})"
        out.print(Text(said + (f": runbook {failure.runbook}" if failure.runbook else ""), style="bold red"))
