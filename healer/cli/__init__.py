"""`healer`, the command line: the daemon, the demo, the health checks and the operator's order tools."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from fulfilment.errors import StepError
from fulfilment.models import OrderStatus
from fulfilment.render import PosterInputs
from fulfilment.secrets import RedactingFilter, Redactor
from healer import __version__, db
from healer.cli.check import cmd_check
from healer.cli.consoles import err, out
from healer.cli.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from healer.cli.orders import cmd_orders_complete, cmd_orders_list, cmd_orders_retry, cmd_orders_show, services_for
from healer.config import Settings, SettingsError
from healer.remediation.audit import Action


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"healer: configuration error: {error}", file=sys.stderr)  # one line, never wrapped
        return EXIT_CONFIG
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
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "apscheduler.executors", "apscheduler.scheduler", "stripe"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _redact_logs(redact: Redactor) -> None:
    """No line this process logs carries a secret: not a driver's message quoting DATABASE_URL,
    not an SDK's error echoing a key, not a traceback."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(redact))


class _Parser(argparse.ArgumentParser):
    """argparse, exiting with EX_USAGE (64) on a bad argument rather than its own 2, which
    `healer check` uses for "failing"."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="healer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"healer {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    for add in (_daemon_commands, _order_commands, _payment_commands, _tool_commands):
        add(sub)
    return parser


if TYPE_CHECKING:  # argparse names the type of `add_subparsers()` only privately
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _daemon_commands(sub: Subparsers) -> None:
    """run, demo, check, db upgrade."""
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


def _order_commands(sub: Subparsers) -> None:
    """orders list|show|complete|retry."""
    op = sub.add_parser("orders", help="inspect and repair orders").add_subparsers(required=True, metavar="ACTION")
    ls = op.add_parser("list", help="list orders, newest first")
    ls.add_argument("--status", choices=[str(s) for s in OrderStatus])  # str: the usage shows values
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


def _payment_commands(sub: Subparsers) -> None:
    """reconcile, orphans list|resolve."""
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


def _tool_commands(sub: Subparsers) -> None:
    """remediations, render."""
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
    from healer.daemon import Daemon, DatabaseNotMigrated

    problems = settings.daemon_problems()
    if (problem := _listen_address_problem(settings)) is not None:
        problems.append(problem)
    if problems:
        print(f"healer: configuration error: {'; '.join(problems)}", file=sys.stderr)  # one line
        return EXIT_CONFIG
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
        return EXIT_CONFIG

    return run_demo(settings, orders=args.orders, exit_when_done=args.exit_when_done)


def cmd_db_upgrade(settings: Settings, _args: argparse.Namespace) -> int:
    engine = db.make_engine(settings.effective_database_url)
    before = db.current_revision(engine)
    db.upgrade(engine)
    after = db.current_revision(engine)
    out.print(f"database schema: {before or 'empty'} -> {after}")
    engine.dispose()
    return EXIT_OK


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from healer.cli.reconcile import run_reconcile_command

    services = services_for(settings)
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
        err.print(f"healer: render failed ({error.error_class}): {error.message}", markup=False)
        return EXIT_FAILED
    args.output.write_bytes(pdf)
    out.print(f"wrote {args.output} ({len(pdf)} bytes, {'preview' if args.preview else 'final'})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
