"""`healer reconcile [--dry-run]`: one reconciliation run in the foreground, with a progress bar
and a table of what it repaired (or, dry, would repair)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from stripe import StripeError

from healer.cli.consoles import id_column, print_json
from healer.cli.exits import EXIT_OK
from healer.config import Settings
from healer.errors import OperatorError
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


def run_reconcile_command(settings: Settings, services: Services, dry_run: bool, console: Console, *,
                          as_json: bool = False) -> int:
    """`healer reconcile [--dry-run] [--json]`: one run in the foreground, with a progress bar."""
    from healer.worker import worker_identity

    pipeline = services.pipeline(lambda _inputs: b"")  # reconciliation never renders
    owner = worker_identity()
    reconciler = build_reconciler(settings, services, pipeline, Metrics(), worker=f"cli {owner}")
    if reconciler is None:
        raise OperatorError("STRIPE_SECRET_KEY is not set: there is nothing to reconcile against")
    lock = None if dry_run else run_lock(services.engine, services.sessions, owner)
    if lock is not None and not lock.acquire():
        raise OperatorError("another healer is reconciling right now; try again in a minute")
    try:
        report = _run_with_progress(reconciler, dry_run, console)
    except StripeError as error:
        raise OperatorError(f"reconciliation failed: Stripe answered {type(error).__name__}: "
                            f"{error.user_message or error}") from error
    finally:
        if lock is not None:
            lock.release()
    if as_json:
        print_json(report_dict(report), console)
    else:
        print_report(report, console)
    return EXIT_OK


def report_dict(report: ReconcileReport) -> dict[str, object]:
    return {
        "dry_run": report.dry_run, "window_start": report.window_start.isoformat(timespec="seconds"),
        "payments_read": report.payments_read, "stripe_requests": report.stripe_requests,
        "seconds": round(report.seconds, 3), "orders_repaired": report.orders_repaired,
        "payments_succeeded": report.payments_succeeded, "payments_missed": report.payments_missed,
        "findings": [{"kind": f.kind.value, "order_id": str(f.order_id) if f.order_id else None,
                      "payment": f.payment.id, "amount": f.payment.amount,
                      "currency": f.payment.currency, "detail": f.detail} for f in report.findings],
    }


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
        table = Table(id_column("order"), id_column("payment", 27), "action", Column("detail", overflow="fold"))
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
    # The sales judged (healer.stripe.missed): those the webhook missed are the worrying ones.
    console.print(
        f"{report.payments_succeeded} succeeded payment(s) judged, {report.payments_missed} found only by "
        "reconciliation (no webhook for them)",
        markup=False, highlight=False, style="bold yellow" if report.payments_missed else None,
    )
