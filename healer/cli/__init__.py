"""`healer`, the command line: the daemon, the demo, the health checks and the operator's order tools."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from fulfilment.models import OrderStatus
from fulfilment.secrets import Redactor
from healer import logs
from healer.cli import commands
from healer.cli.canary import cmd_canary
from healer.cli.check import cmd_check
from healer.cli.config import cmd_config
from healer.cli.consoles import err
from healer.cli.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_SOFTWARE, EXIT_USAGE
from healer.cli.orders import cmd_orders_complete, cmd_orders_list, cmd_orders_retry, cmd_orders_show
from healer.config import LogFormat, Settings, SettingsError
from healer.errors import OperatorError
from healer.remediation.audit import Action
from healer.version import version_line

log = logging.getLogger("healer.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    level = "debug" if args.debug else args.log_level
    if not getattr(args, "needs_settings", True):  # config, completion: they read no database
        logs.configure(level, LogFormat.default())
        return int(args.handler(parser, args) or EXIT_OK)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        # Plain lines, before logging is set up: HEALER_LOG_FORMAT may be what is wrong.
        for problem in error.problems:  # every one at once; each one line, never wrapped
            print(f"healer: configuration error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    redact = Redactor(settings.secret_values())
    # Once, in the format the settings name; no line this process logs carries a secret: not a
    # driver's message quoting DATABASE_URL, not an SDK's error echoing a key, not a traceback.
    logs.configure(level, settings.log_format, redact)
    try:
        return int(args.handler(settings, args) or EXIT_OK)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        if args.debug:
            log.exception("healer %s failed", " ".join(sys.argv[1:2]))  # through the redacting filter
        message, code = _one_line(error, settings)
        err.print(redact(f"healer: {message}"), markup=False, highlight=False, soft_wrap=True)
        return code


def _one_line(error: Exception, settings: Settings) -> tuple[str, int]:
    """What went wrong, in one line an operator can act on, and the exit code."""
    from sqlalchemy.exc import SQLAlchemyError

    from healer.cli.services import unreachable

    if isinstance(error, OperatorError):
        return " ".join(str(error).split()), error.exit_code
    if isinstance(error, SQLAlchemyError):
        return str(unreachable(settings, error)), EXIT_FAILED
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}", EXIT_FAILED
    said = " ".join(str(error).split())[:300]
    return f"unexpected {type(error).__name__}: {said} (a bug; `healer --debug ...` shows where)", EXIT_SOFTWARE


class _Parser(argparse.ArgumentParser):
    """argparse, exiting with EX_USAGE (64) on a bad argument rather than its own 2, which
    `healer check` uses for "failing"."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(prog="healer", description=__doc__,
                     epilog="Exit codes: 0 done, 1 failed, 64 bad argument, 78 bad configuration, 70 a bug; "
                            "`healer check`: 0 ok, 1 warning, 2 failing, 3 unknown.")
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--debug", action="store_true", help="debug logs, and a traceback with any error")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    for add in (_daemon_commands, _order_commands, _payment_commands, _tool_commands):
        add(sub)
    return parser


if TYPE_CHECKING:  # argparse names the type of `add_subparsers()` only privately
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of text")


def _daemon_commands(sub: Subparsers) -> None:
    """run, demo, check, canary, config, db upgrade."""
    sub.add_parser("run", help="run the daemon").set_defaults(handler=commands.cmd_run)

    demo = sub.add_parser("demo", help="run the daemon on embedded defaults with sample orders")
    demo.add_argument("--orders", type=int, default=4, help="how many sample orders (default 4)")
    demo.add_argument("--exit-when-done", action="store_true",
                      help="stop once every sample order has finished (for scripts and tests)")
    demo.set_defaults(handler=commands.cmd_demo)

    check = sub.add_parser("check", help="run every health check (or the named ones) once; "
                                         "exit 0 ok, 1 warning, 2 failing, 3 unknown")
    check.add_argument("names", nargs="*", metavar="NAME", help="checks to run (default: all)")
    _json_flag(check)
    check.set_defaults(handler=cmd_check)

    canary = sub.add_parser("canary", help="take a synthetic order through the real steps now (nothing charged "
                                           "or delivered, nothing left behind); exit 0 passed, 1 failed")
    _json_flag(canary)
    canary.set_defaults(handler=cmd_canary)

    config = sub.add_parser("config", help="the effective configuration: every variable, its source, "
                                           "secrets masked; every error at once (exit 78)")
    _json_flag(config)
    config.set_defaults(handler=cmd_config, needs_settings=False)

    dbp = sub.add_parser("db", help="database schema").add_subparsers(required=True, metavar="ACTION")
    upgrade = dbp.add_parser("upgrade", help="migrate the schema to the latest revision (creates it if empty)")
    _json_flag(upgrade)
    upgrade.set_defaults(handler=commands.cmd_db_upgrade)


def _order_commands(sub: Subparsers) -> None:
    """orders list|show|complete|retry. An order id may be given as a unique prefix."""
    op = sub.add_parser("orders", help="inspect and repair orders").add_subparsers(required=True, metavar="ACTION")
    ls = op.add_parser("list", help="list orders, newest first")
    ls.add_argument("--status", choices=[str(s) for s in OrderStatus])  # str: the usage shows values
    ls.add_argument("--stuck", action="store_true", help="paid, not completed, past HEALER_ORDER_SLA_SECONDS")
    ls.add_argument("--limit", type=_positive, default=200)
    _json_flag(ls)
    ls.set_defaults(handler=cmd_orders_list)
    show = op.add_parser("show", help="an order and its story")
    show.add_argument("order_id", metavar="ORDER_ID", type=_order_id, help="the id, or a unique prefix of it")
    _json_flag(show)
    show.set_defaults(handler=cmd_orders_show)
    complete = op.add_parser("complete", help="run an order's remaining steps in the foreground")
    complete.add_argument("order_id", metavar="ORDER_ID", type=_order_id, help="the id, or a unique prefix of it")
    _json_flag(complete)
    complete.set_defaults(handler=cmd_orders_complete)
    retry = op.add_parser("retry", help="re-queue an order (or every needs_attention order)")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("order_id", metavar="ORDER_ID", nargs="?", type=_order_id,
                        help="the id, or a unique prefix of it")
    target.add_argument("--all", action="store_true", help="every order in needs_attention")
    _json_flag(retry)
    retry.set_defaults(handler=cmd_orders_retry)


def _payment_commands(sub: Subparsers) -> None:
    """reconcile, orphans list|resolve."""
    rec = sub.add_parser("reconcile", help="match Stripe payments with orders and repair what is out of step")
    rec.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    _json_flag(rec)
    rec.set_defaults(handler=commands.cmd_reconcile)

    orp = sub.add_parser("orphans", help="payments no order claims (healer_orphan_payments)").add_subparsers(
        required=True, metavar="ACTION")
    ols = orp.add_parser("list", help="orphan payments, newest first: unresolved ones, or --all")
    ols.add_argument("--all", action="store_true", help="resolved ones too")
    _json_flag(ols)
    ols.set_defaults(handler=commands.cmd_orphans_list)
    ores = orp.add_parser("resolve", help="mark an orphan payment dealt with (refunded, order found)")
    ores.add_argument("payment_intent_id", metavar="PI_ID", help="the PaymentIntent, pi_...")
    ores.add_argument("--note", required=True, type=_note, help="what was done; stored as its resolution")
    _json_flag(ores)
    ores.set_defaults(handler=commands.cmd_orphans_resolve)


def _tool_commands(sub: Subparsers) -> None:
    """remediations, render, completion."""
    rem = sub.add_parser("remediations", help="self-healing actions taken (or, in dry-run, not), newest first")
    rem.add_argument("--action", choices=[a.value for a in Action])
    rem.add_argument("--limit", type=_positive, default=50)
    _json_flag(rem)
    rem.set_defaults(handler=commands.cmd_remediations)

    render = sub.add_parser("render", help="render one poster from files (for checking a template)")
    render.add_argument("--template", required=True)
    render.add_argument("--photo", required=True, type=Path)
    render.add_argument("--audio", type=Path)
    render.add_argument("--waveform", type=Path, help="a waveform PNG (else drawn from --audio)")
    render.add_argument("--title", required=True)
    render.add_argument("--subtitle", default="")
    render.add_argument("--preview", action="store_true", help="with the watermark")
    render.add_argument("-o", "--output", required=True, type=Path)
    _json_flag(render)
    render.set_defaults(handler=commands.cmd_render)

    completion = sub.add_parser("completion", help="a shell completion script: "
                                                   "`source <(healer completion bash)`")
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    completion.set_defaults(handler=commands.cmd_completion, needs_settings=False)


def _order_id(value: str) -> str:
    """A whole order id or a prefix of one (resolved against the database by the command)."""
    from healer.orders import check_id_prefix

    try:
        return check_id_prefix(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return number


def _note(value: str) -> str:
    from healer.cli.orphans import parse_note

    try:
        return parse_note(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


if __name__ == "__main__":
    sys.exit(main())
