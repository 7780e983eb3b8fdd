"""`healer reconcile [--dry-run]`: one reconciliation run in the foreground, with a progress bar
and a table of what it repaired (or, dry, would repair)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from healer.cli.exits import EXIT_FAILED, EXIT_OK
from healer.config import Settings
from healer.health.metrics import Metrics
from healer.stripe.findings import FindingKind, ReconcileReport
from healer.stripe.reconcile import Reconciler
from healer.stripe.reconcile_job import run_lock
from healer.wiring import Services, build_reconciler

_VERBS = {
    FindingKind.MISSED_WEBHOOK: ("marked paid and queued", "would mark paid and queue"),
    FindingKind.STUCK: ("re-queued", "would re-queue"),
    FindingKind.ORPHAN: ("orphan payment recorded", "would record orphan payment"),
    FindingKind.MISMATCH: ("not applied: mismatch", "would not apply: mismatch"),
    FindingKind.ORPHAN_RESOLVED: ("orphan payment resolved: an order holds it",
                                  "would resolve orphan payment: an order holds it"),
}


def run_reconcile_command(settings: Settings, services: Services, dry_run: bool, console: Console) -> int:
    """`healer reconcile [--dry-run]`: one run in the foreground, with a progress bar."""
    from healer.worker import worker_identity

    pipeline = services.pipeline(lambda _inputs: b"")  # reconciliation never renders
    owner = worker_identity()
    reconciler = build_reconciler(settings, services, pipeline, Metrics(), worker=f"cli {owner}")
    if reconciler is None:
        console.print("healer: STRIPE_SECRET_KEY is not set: there is nothing to reconcile against",
                      markup=False)
        return EXIT_FAILED
    lock = None if dry_run else run_lock(services.engine, services.sessions, owner)
    if lock is not None and not lock.acquire():
        console.print("healer: another healer is reconciling right now; try again in a minute",
                      markup=False)
        return EXIT_FAILED
    try:
        report = _run_with_progress(reconciler, dry_run, console)
    except Exception as error:
        console.print(f"healer: reconciliation failed: {type(error).__name__}: {error}", markup=False)
        return EXIT_FAILED
    finally:
        if lock is not None:
            lock.release()
    print_report(report, console)
    return EXIT_OK


def _run_with_progress(reconciler: Reconciler, dry_run: bool, console: Console) -> ReconcileReport:
    columns = (TextColumn("reading Stripe payments"), BarColumn(),
               TextColumn("{task.fields[read]} payment(s)"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task("reconcile", total=1.0, read=0)

        def advance(read: int, covered: float) -> None:
            bar.update(task, completed=covered, read=read)

        return reconciler.run(dry_run=dry_run, progress=advance)


def print_report(report: ReconcileReport, console: Console) -> None:
    if report.dry_run:
        console.print("DRY RUN: nothing was changed", style="bold")
    if report.findings:
        table = Table("order", "payment", "action", "detail")
        for f in report.findings:
            verb = _VERBS[f.kind][1 if report.dry_run else 0]
            table.add_row(str(f.order_id or "-"), str(f.payment), verb, f.detail)
        console.print(table)
    repaired = "order(s) to repair" if report.dry_run else "order(s) repaired"
    console.print(
        f"{report.payments_read} payment(s) read since "
        f"{report.window_start.isoformat(timespec='seconds')} with {report.stripe_requests} Stripe "
        f"request(s) in {report.seconds:.1f}s: {report.orders_repaired} {repaired}, "
        f"{report.orphans_found} new orphan payment(s), {report.orphans_resolved} orphan payment(s) "
        f"resolved, {report.count(FindingKind.MISMATCH)} mismatch(es)",
        markup=False, highlight=False,
    )
