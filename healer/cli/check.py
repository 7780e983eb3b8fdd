"""`healer check [NAME...] [--json]`: every check once, in parallel; a table (or JSON) and the
Nagios plugin exit code of the verdict: 0 ok, 1 warning, 2 failing, 3 unknown (nothing judged).

It looks and never makes: the database is opened read-only, so a `healer check` run from the wrong
directory reports a missing database instead of creating an empty one that looks healthy.
"""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from checks.base import CheckResult, Status, Verdict
from checks.registry import UnknownCheck, resolve
from healer.cli.consoles import err, out, print_json
from healer.cli.services import database_name
from healer.config import Settings
from healer.errors import UsageError

_STATUS_STYLES = {
    Status.OK: "green",
    Status.WARNING: "yellow",
    Status.FAILING: "bold red",
    Status.DISABLED: "dim",
    Status.SKIPPED: "dim",
}
_VERDICT_STYLES = {Verdict.OK: "green", Verdict.WARNING: "yellow", Verdict.FAILING: "bold red", Verdict.UNKNOWN: "dim"}


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from healer.wiring import Services, build_monitor

    if not settings.data_dir.is_dir():
        err.print(f"healer check: HEALER_DATA_DIR={settings.data_dir} does not exist; the embedded database, "
                  "store and outbox are looked for there", markup=False, highlight=False, soft_wrap=True)
    services = Services.build(settings, read_only=True)
    try:
        monitor = build_monitor(settings, services)
        try:
            names = resolve(args.names, monitor.names)
        except UnknownCheck as error:
            raise UsageError(str(error)) from None
        results = monitor.run_all(names)
    finally:
        services.close()
    verdict = Verdict.of(result.status for result in results.values())
    if args.json:
        print_json({"status": verdict.value, "database": database_name(settings),
                    "checks": {n: r.as_dict() for n, r in results.items()}})
    else:
        print_check_results(results)
        out.print(Text(f"{len(results)} check(s); status: {verdict.value}", style=_VERDICT_STYLES[verdict]))
    return verdict.exit_code


def print_check_results(results: dict[str, CheckResult]) -> None:
    table = Table("check", "status", "latency", "detail", "remedy", show_lines=True)
    for name, result in results.items():
        table.add_row(
            name,
            Text(result.status, style=_STATUS_STYLES[result.status]),
            f"{result.latency_seconds * 1000:.0f} ms",
            Text(result.detail),
            Text(result.remedy),
        )
    out.print(table)
