"""`healer check [NAME...] [--json]`: every check once, in parallel; a table (or JSON) and an exit
code that is the worst severity: 0 ok, 1 warning, 2 failing."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable

from rich.table import Table
from rich.text import Text

from checks.base import CheckResult, Status
from checks.registry import UnknownCheck, resolve
from healer import db
from healer.cli.consoles import err, out
from healer.cli.exits import EXIT_USAGE
from healer.config import Settings

log = logging.getLogger(__name__)


_STATUS_STYLES = {
    Status.OK: "green",
    Status.WARNING: "yellow",
    Status.FAILING: "bold red",
    Status.DISABLED: "dim",
    Status.SKIPPED: "dim",
}


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from healer.wiring import Services, build_monitor

    services = Services.build(settings)
    try:
        if settings.uses_embedded_database:
            _upgrade_embedded(services)
        monitor = build_monitor(settings, services)
        try:
            names = resolve(args.names, monitor.names)
        except UnknownCheck as error:
            err.print(f"healer check: {error}", markup=False, highlight=False)
            return EXIT_USAGE
        results = monitor.run_all(names)
    finally:
        services.close()
    if args.json:
        worst = _worst(results.values())
        print(json.dumps({"status": worst.value, "checks": {n: r.as_dict() for n, r in results.items()}}, indent=2))
    else:
        print_check_results(results)
    # Exit codes are the severities: 0 ok (or disabled/skipped), 1 warning, 2 failing.
    return _worst(results.values()).severity


def _upgrade_embedded(services) -> None:  # type: ignore[no-untyped-def]
    # As the daemon does at start-up; if it cannot, the database check says why.
    try:
        db.upgrade(services.engine)
    except Exception as error:
        log.debug("Could not upgrade the embedded database: %s", error)


def _worst(results: Iterable[CheckResult]) -> Status:
    severity = max((r.status.severity for r in results), default=0)
    return {0: Status.OK, 1: Status.WARNING, 2: Status.FAILING}[severity]


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
    worst = _worst(results.values())
    out.print(Text(f"{len(results)} check(s); worst: {worst.value}", style=_STATUS_STYLES[worst]))
