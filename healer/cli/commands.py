"""The `healer` commands that are a few lines each: the daemon, the demo, the schema, the payment
tools, the remediation log, a one-off render and shell completion. Each takes the settings and
the parsed arguments and returns its exit code; an error it cannot handle is raised as an
`OperatorError` (healer.errors), which `healer.cli.main` prints as one line.
"""

from __future__ import annotations

import argparse
import socket

from fulfilment.errors import StepError
from fulfilment.render import PosterInputs
from healer import db
from healer.cli.consoles import err, out, print_json
from healer.cli.exits import EXIT_FAILED, EXIT_OK
from healer.cli.services import database, database_name, unreachable
from healer.config import Settings
from healer.errors import ConfigurationError, OperatorError


def _listen_address_problems(settings: Settings) -> list[str]:
    problems = []
    for name, host, port in (("HEALER_HTTP_HOST", settings.http_host, settings.http_port),
                             ("HEALER_OPS_HOST", settings.ops_host, settings.ops_port)):
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            problems.append(f"{name}={host!r} is not an address to listen on: {error.strerror}")
    return problems


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    from healer.daemon import Daemon

    problems = settings.daemon_problems() + _listen_address_problems(settings)
    if problems:
        raise ConfigurationError(f"configuration error: {'; '.join(problems)}")
    Daemon(settings).serve()
    return EXIT_OK


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from healer.demo import run_demo

    if problems := _listen_address_problems(settings):
        raise ConfigurationError(f"configuration error: {'; '.join(problems)}")
    return run_demo(settings, orders=args.orders, exit_when_done=args.exit_when_done)


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    """The one command that creates a schema (and, for the embedded database, the file)."""
    engine = db.make_engine(settings.effective_database_url)
    try:
        try:
            before = db.current_revision(engine)
        except Exception as error:
            raise unreachable(settings, error) from error
        db.upgrade(engine)
        after = db.current_revision(engine)
    finally:
        engine.dispose()
    if args.json:
        print_json({"database": database_name(settings), "before": before, "after": after})
    else:
        out.print(f"database schema of {database_name(settings)}: {before or 'empty'} -> {after}",
                  markup=False, highlight=False)
    return EXIT_OK


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from healer.cli.reconcile import run_reconcile_command

    with database(settings, read_only=False) as services:
        return run_reconcile_command(settings, services, args.dry_run, out, as_json=args.json)


def cmd_remediations(settings: Settings, args: argparse.Namespace) -> int:
    from healer.cli.remediations import remediations_command

    with database(settings, read_only=True) as services:
        return remediations_command(services.sessions, args, out)


def cmd_orphans_list(settings: Settings, args: argparse.Namespace) -> int:
    from healer.cli.orphans import orphans_list_command

    with database(settings, read_only=True) as services:
        return orphans_list_command(services.sessions, args, out)


def cmd_orphans_resolve(settings: Settings, args: argparse.Namespace) -> int:
    from healer.cli.orphans import orphans_resolve_command

    with database(settings, read_only=False) as services:
        return orphans_resolve_command(services.sessions, args, out)


def cmd_render(settings: Settings, args: argparse.Namespace) -> int:
    from healer.render.pool import RenderPool

    if not args.output.parent.is_dir():  # before the render, not after it
        raise OperatorError(f"cannot write {args.output}: the directory {args.output.parent} does not exist")
    inputs = PosterInputs(
        template=args.template,
        title=args.title,
        subtitle=args.subtitle,
        photo=args.photo.read_bytes(),
        waveform_image=args.waveform.read_bytes() if args.waveform else None,
        audio=args.audio.read_bytes() if args.audio else None,
        audio_name=args.audio.name if args.audio else "",
    )
    pool = RenderPool(
        settings.assets_dir, 1, settings.scratch_dir, timeout_seconds=settings.render_timeout_seconds,
        memory_mb=settings.render_memory_mb, max_photo_megapixels=settings.max_photo_megapixels,
    )
    try:
        pdf = pool.render(inputs, preview=args.preview)
    except StepError as error:
        err.print(f"healer: render failed ({error.error_class}): {error.message}", markup=False, highlight=False)
        return EXIT_FAILED
    finally:
        pool.shutdown()
    args.output.write_bytes(pdf)
    kind = "preview" if args.preview else "final"
    if args.json:
        print_json({"output": str(args.output), "bytes": len(pdf), "kind": kind})
    else:
        out.print(f"wrote {args.output} ({len(pdf)} bytes, {kind})", markup=False, highlight=False)
    return EXIT_OK


def cmd_completion(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(parser, shell=args.shell))
    return EXIT_OK

