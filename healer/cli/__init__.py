"""`healer`, the command line: the daemon, the demo, the health checks and the operator's order tools."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from checks.base import CheckResult, Status
from checks.registry import UnknownCheck, resolve
from fulfilment.errors import StepError
from fulfilment.models import OrderStatus, Outcome
from fulfilment.pipeline import OrderNotFound
from fulfilment.render import PosterInputs
from fulfilment.secrets import RedactingFilter, Redactor
from healer import __version__, db, orders
from healer.remediation.audit import Action
from healer.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from healer.config import Settings, SettingsError
from healer.orders import OrderView

log = logging.getLogger("healer")
out = Console()
err = Console(stderr=True)



def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"healer: configuration error: {error}", file=sys.stderr)  # one line, never wrapped
        return EXIT_USAGE
    _redact_logs(Redactor(settings.secret_values()))
    try:
        return int(args.handler(settings, args) or EXIT_OK)
    except KeyboardInterrupt:
        return 130


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "apscheduler.executors", "stripe"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _redact_logs(redact: Redactor) -> None:
    """No line this process logs carries a secret: not a driver's message quoting DATABASE_URL,
    not an SDK's error echoing a key, not a traceback."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(redact))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="healer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"healer {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    sub.add_parser("run", help="run the daemon").set_defaults(handler=cmd_run)

    demo = sub.add_parser("demo", help="run the daemon on embedded defaults with sample orders")
    demo.add_argument("--orders", type=int, default=4, help="how many sample orders (default 4)")
    demo.add_argument("--exit-when-done", action="store_true",
                      help="stop once every sample order has finished (for scripts and tests)")
    demo.set_defaults(handler=cmd_demo)

    check = sub.add_parser("check", help="run every health check (or the named ones) once; exit 0 ok, 1 warning, 2 failing")
    check.add_argument("names", nargs="*", metavar="NAME", help="checks to run (default: all)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=cmd_check)

    dbp = sub.add_parser("db", help="database schema").add_subparsers(required=True, metavar="ACTION")
    dbp.add_parser("upgrade", help="migrate the schema to the latest revision").set_defaults(handler=cmd_db_upgrade)

    op = sub.add_parser("orders", help="inspect and repair orders").add_subparsers(required=True, metavar="ACTION")
    ls = op.add_parser("list", help="list orders, newest first")
    ls.add_argument("--status", choices=[s.value for s in OrderStatus])
    ls.add_argument("--stuck", action="store_true", help="paid, not completed, past HEALER_ORDER_SLA_SECONDS")
    ls.add_argument("--limit", type=int, default=200)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=cmd_orders_list)
    show = op.add_parser("show", help="an order and its story")
    show.add_argument("order_id", type=_order_id)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_orders_show)
    complete = op.add_parser("complete", help="run an order's remaining steps in the foreground")
    complete.add_argument("order_id", type=_order_id)
    complete.set_defaults(handler=cmd_orders_complete)
    retry = op.add_parser("retry", help="re-queue an order (or every needs_attention order)")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("order_id", nargs="?", type=_order_id)
    target.add_argument("--all", action="store_true", help="every order in needs_attention")
    retry.set_defaults(handler=cmd_orders_retry)

    rec = sub.add_parser("reconcile", help="match Stripe payments with orders and repair what is out of step")
    rec.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    rec.set_defaults(handler=cmd_reconcile)

    orp = sub.add_parser("orphans", help="payments no order claims (healer_orphan_payments)").add_subparsers(
        required=True, metavar="ACTION")
    ols = orp.add_parser("list", help="orphan payments, newest first: unresolved ones, or --all")
    ols.add_argument("--all", action="store_true", help="resolved ones too")
    ols.add_argument("--json", action="store_true")
    ols.set_defaults(handler=cmd_orphans_list)
    ores = orp.add_parser("resolve", help="mark an orphan payment dealt with (refunded, order found)")
    ores.add_argument("payment_intent_id", metavar="PI_ID", help="the PaymentIntent, pi_...")
    ores.add_argument("--note", required=True, type=_note, help="what was done; stored as its resolution")
    ores.set_defaults(handler=cmd_orphans_resolve)

    rem = sub.add_parser("remediations", help="self-healing actions taken (or, in dry-run, not), newest first")
    rem.add_argument("--action", choices=[a.value for a in Action])
    rem.add_argument("--limit", type=int, default=50)
    rem.add_argument("--json", action="store_true")
    rem.set_defaults(handler=cmd_remediations)

    render = sub.add_parser("render", help="render one poster from files (for checking a template)")
    render.add_argument("--template", required=True)
    render.add_argument("--photo", required=True, type=Path)
    render.add_argument("--audio", type=Path)
    render.add_argument("--waveform", type=Path, help="a waveform PNG (else drawn from --audio)")
    render.add_argument("--title", required=True)
    render.add_argument("--subtitle", default="")
    render.add_argument("--preview", action="store_true", help="with the watermark")
    render.add_argument("-o", "--output", required=True, type=Path)
    render.set_defaults(handler=cmd_render)
    return parser


def _order_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an order id (a UUID)") from None


def _note(value: str) -> str:
    from healer.cli.orphans import parse_note

    try:
        return parse_note(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# -- commands ------------------------------------------------------------------------------------


def _listen_address_problem(settings: Settings) -> str | None:
    for name, host, port in (("HEALER_HTTP_HOST", settings.http_host, settings.http_port),
                             ("HEALER_OPS_HOST", settings.ops_host, settings.ops_port)):
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            return f"{name}={host!r} is not an address to listen on: {error.strerror}"
    return None


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    from healer.daemon import DatabaseNotMigrated, Daemon

    problems = settings.daemon_problems()
    if (problem := _listen_address_problem(settings)) is not None:
        problems.append(problem)
    if problems:
        print(f"healer: configuration error: {'; '.join(problems)}", file=sys.stderr)  # one line
        return EXIT_USAGE
    try:
        Daemon(settings).serve()
    except DatabaseNotMigrated as error:
        err.print(f"healer: {error}", markup=False)
        return EXIT_FAILED
    return EXIT_OK


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from healer.demo import run_demo

    if (problem := _listen_address_problem(settings)) is not None:
        print(f"healer: configuration error: {problem}", file=sys.stderr)
        return EXIT_USAGE

    return run_demo(settings, orders=args.orders, exit_when_done=args.exit_when_done)


def cmd_db_upgrade(settings: Settings, _args: argparse.Namespace) -> int:
    engine = db.make_engine(settings.effective_database_url)
    before = db.current_revision(engine)
    db.upgrade(engine)
    after = db.current_revision(engine)
    out.print(f"database schema: {before or 'empty'} -> {after}")
    engine.dispose()
    return EXIT_OK


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
    except Exception as error:  # noqa: BLE001 - reported by the check, not here
        log.debug("Could not upgrade the embedded database: %s", error)


def _worst(results: Iterable[CheckResult]) -> Status:
    severity = max((r.status.severity for r in results), default=0)
    return {0: Status.OK, 1: Status.WARNING, 2: Status.FAILING}[severity]


def print_check_results(results: dict[str, CheckResult]) -> None:
    table = Table("check", "status", "latency", "detail", "remedy", show_lines=True)
    for name, result in results.items():
        table.add_row(
            name,
            Text(result.status.value, style=_STATUS_STYLES[result.status]),
            f"{result.latency_seconds * 1000:.0f} ms",
            Text(result.detail),
            Text(result.remedy),
        )
    out.print(table)
    worst = _worst(results.values())
    out.print(Text(f"{len(results)} check(s); worst: {worst.value}", style=_STATUS_STYLES[worst]))


def _services(settings: Settings):  # type: ignore[no-untyped-def]
    from healer.wiring import Services

    services = Services.build(settings)
    if settings.uses_embedded_database:
        db.upgrade(services.engine)
    return services


def cmd_orders_list(settings: Settings, args: argparse.Namespace) -> int:
    services = _services(settings)
    views = orders.list_orders(
        services.sessions,
        status=OrderStatus(args.status) if args.status else None,
        stuck_after_seconds=settings.order_sla_seconds if args.stuck else None,
        limit=args.limit,
    )
    redact = Redactor(settings.secret_values())
    views = [orders.redacted(v, redact) for v in views]
    if args.json:
        print(json.dumps([v.as_dict() for v in views], indent=2))
        return EXIT_OK
    table = Table("id", "status", "template", "created", "attempts", "last error")
    for v in views:
        error = f"{v.last_error_step}: {v.last_error_class or ''} {v.last_error or ''}" if v.last_error else ""
        table.add_row(v.id, v.status, v.template, v.created_at, str(v.attempts), error.strip())
    out.print(table)
    out.print(f"{len(views)} order(s)")
    return EXIT_OK


def cmd_orders_show(settings: Settings, args: argparse.Namespace) -> int:
    view = orders.story(_services(settings).sessions, args.order_id)
    if view is None:
        err.print(f"healer: unknown order {args.order_id}")
        return EXIT_FAILED
    view = orders.redacted(view, Redactor(settings.secret_values()))
    if args.json:
        print(json.dumps(view.as_dict(), indent=2))
    else:
        print_story(view)
    return EXIT_OK


def print_story(view: OrderView) -> None:
    out.print(f"[bold]order {view.id}[/bold]  status [bold]{view.status}[/bold]  template {view.template}")
    out.print(f"created {view.created_at}  paid {view.paid_at or '-'}  completed {view.completed_at or '-'}")
    if view.next_attempt_at and view.status not in ("completed", "refunded", "needs_attention"):
        out.print(f"next attempt {view.next_attempt_at} (attempt {view.attempts + 1})")
    if view.last_error:
        out.print(f"last error: {view.last_error_step} {view.last_error_class or ''}: {view.last_error}",
                  markup=False)
    table = Table("time", "step", "outcome", "seconds", "error class", "message")
    for e in view.events:
        table.add_row(e.at, e.step, e.outcome, f"{e.duration_seconds:.3f}", e.error_class or "", e.message)
    out.print(table)


def cmd_orders_complete(settings: Settings, args: argparse.Namespace) -> int:
    from healer.worker import RenderPool, worker_identity

    services = _services(settings)
    # In a render process under the render limits, as the daemon does: the uploads are a customer's.
    pipeline = services.pipeline(RenderPool(
        settings.assets_dir, 1, settings.scratch_dir, timeout_seconds=settings.render_timeout_seconds,
        memory_mb=settings.render_memory_mb, max_photo_megapixels=settings.max_photo_megapixels))
    order_id = args.order_id
    try:
        if pipeline.get(order_id).order_status is OrderStatus.NEEDS_ATTENTION:
            pipeline.requeue(order_id, "completed by an operator in the foreground")
    except OrderNotFound:
        err.print(f"healer: unknown order {order_id}")
        return EXIT_FAILED
    owner = worker_identity()
    if not pipeline.claim_order(order_id, owner):
        status = pipeline.get(order_id).order_status
        if status.is_final:
            out.print(f"order {order_id} is already {status.value}")
            return EXIT_OK
        err.print(f"healer: order {order_id} is being worked by another worker right now; try later")
        return EXIT_FAILED
    ok = True
    for result in pipeline.run(order_id, owner):
        mark = "[green]ok[/green]" if result.outcome is Outcome.OK else f"[red]{result.outcome.value}[/red]"
        out.print(f"{result.step.value:15} {mark} {result.duration_seconds:6.2f}s  ", end="")
        out.print(result.message if result.outcome is Outcome.OK else
                  f"{result.error_class.value if result.error_class else ''}: {result.message}", markup=False)
        ok = result.outcome is Outcome.OK
    status = pipeline.get(order_id).order_status
    out.print(f"order {order_id}: {status.value}")
    return EXIT_OK if ok and status is OrderStatus.COMPLETED else EXIT_FAILED


def cmd_orders_retry(settings: Settings, args: argparse.Namespace) -> int:
    services = _services(settings)
    pipeline = services.pipeline(lambda _inputs: b"")  # re-queueing never renders
    if args.all:
        targets = [uuid.UUID(v.id) for v in orders.list_orders(
            services.sessions, status=OrderStatus.NEEDS_ATTENTION, limit=100_000)]
    else:
        targets = [args.order_id]
    for order_id in targets:
        try:
            status = pipeline.requeue(order_id, "retry requested by an operator")
        except OrderNotFound:
            err.print(f"healer: unknown order {order_id}")
            return EXIT_FAILED
        out.print(f"{order_id}: queued at {status.value}")
    out.print(f"{len(targets)} order(s) re-queued")
    return EXIT_OK


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from healer.cli.reconcile import run_reconcile_command

    services = _services(settings)
    try:
        return run_reconcile_command(settings, services, args.dry_run, out)
    finally:
        services.close()


def cmd_remediations(settings: Settings, args: argparse.Namespace) -> int:
    from healer.cli.remediations import remediations_command

    return remediations_command(settings, args, out)


def cmd_orphans_list(settings: Settings, args: argparse.Namespace) -> int:
    from healer.cli.orphans import orphans_list_command

    return orphans_list_command(settings, args, out, err)


def cmd_orphans_resolve(settings: Settings, args: argparse.Namespace) -> int:
    from healer.cli.orphans import orphans_resolve_command

    return orphans_resolve_command(settings, args, out, err)


def cmd_render(settings: Settings, args: argparse.Namespace) -> int:
    try:
        inputs = PosterInputs(
            template=args.template,
            title=args.title,
            subtitle=args.subtitle,
            photo=args.photo.read_bytes(),
            waveform_image=args.waveform.read_bytes() if args.waveform else None,
            audio=args.audio.read_bytes() if args.audio else None,
            audio_name=args.audio.name if args.audio else "",
        )
        from healer.worker import RenderPool

        pdf = RenderPool(
            settings.assets_dir, 1, settings.scratch_dir, timeout_seconds=settings.render_timeout_seconds,
            memory_mb=settings.render_memory_mb, max_photo_megapixels=settings.max_photo_megapixels,
        ).render(inputs, preview=args.preview)
    except OSError as error:
        err.print(f"healer: cannot read {error.filename}: {error.strerror}", markup=False)
        return EXIT_FAILED
    except StepError as error:
        err.print(f"healer: render failed ({error.error_class.value}): {error.message}", markup=False)
        return EXIT_FAILED
    args.output.write_bytes(pdf)
    out.print(f"wrote {args.output} ({len(pdf)} bytes, {'preview' if args.preview else 'final'})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
