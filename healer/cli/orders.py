"""`healer orders list|show|complete|retry`: the operator's order tools, on the database itself."""

from __future__ import annotations

import argparse
import json
import uuid

from rich.table import Table

from fulfilment.models import OrderStatus, Outcome
from fulfilment.pipeline import OrderNotFound
from fulfilment.secrets import Redactor
from healer import db, orders
from healer.cli.consoles import err, out
from healer.cli.exits import EXIT_FAILED, EXIT_OK
from healer.config import Settings
from healer.orders import OrderView
from healer.wiring import Services


def services_for(settings: Settings) -> Services:
    services = Services.build(settings)
    if settings.uses_embedded_database:
        db.upgrade(services.engine)
    return services


def cmd_orders_list(settings: Settings, args: argparse.Namespace) -> int:
    services = services_for(settings)
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
    view = orders.story(services_for(settings).sessions, args.order_id)
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

    services = services_for(settings)
    # In a render process under the render limits, as the daemon does: the uploads are a customer's.
    pipeline = services.pipeline(RenderPool(
        settings.assets_dir, 1, settings.scratch_dir, timeout_seconds=settings.render_timeout_seconds,
        memory_mb=settings.render_memory_mb, max_photo_megapixels=settings.max_photo_megapixels))
    order_id = args.order_id
    try:
        if pipeline.get(order_id).status is OrderStatus.NEEDS_ATTENTION:
            pipeline.requeue(order_id, "completed by an operator in the foreground")
    except OrderNotFound:
        err.print(f"healer: unknown order {order_id}")
        return EXIT_FAILED
    owner = worker_identity()
    if not pipeline.claim_order(order_id, owner):
        status = pipeline.get(order_id).status
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
    status = pipeline.get(order_id).status
    out.print(f"order {order_id}: {status.value}")
    return EXIT_OK if ok and status is OrderStatus.COMPLETED else EXIT_FAILED


def cmd_orders_retry(settings: Settings, args: argparse.Namespace) -> int:
    services = services_for(settings)
    pipeline = services.pipeline(lambda _inputs: b"")  # re-queueing never renders
    if args.all:
        targets = [uuid.UUID(v.id) for v in orders.list_orders(
            services.sessions, status=OrderStatus.NEEDS_ATTENTION, limit=100_000)]
    else:
        targets = [args.order_id]
    requeued = 0
    for order_id in targets:
        try:
            # The same retry as POST /api/orders/{id}/retry: refused when there is nothing to do.
            status = orders.retry(pipeline, order_id, "retry requested by an operator")
        except OrderNotFound:
            err.print(f"healer: unknown order {order_id}")
            return EXIT_FAILED
        except orders.NothingToRetry as nothing:
            if not args.all:
                err.print(f"healer: order {order_id}: {nothing}")
                return EXIT_FAILED
            out.print(f"{order_id}: {nothing}")  # finished meanwhile: the others still go
            continue
        out.print(f"{order_id}: queued at {status.value}")
        requeued += 1
    out.print(f"{requeued} order(s) re-queued")
    return EXIT_OK
