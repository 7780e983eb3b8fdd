"""`healer orders list|show|complete|retry`: the operator's order tools, on the database itself."""

from __future__ import annotations

import argparse
import uuid

from rich.table import Table
from rich.text import Text

from fulfilment.models import OrderStatus, Outcome
from fulfilment.pipeline import OrderNotFound, Pipeline
from fulfilment.secrets import Redactor
from healer import orders
from healer.cli.consoles import id_column, out, print_json
from healer.cli.exits import EXIT_FAILED, EXIT_OK
from healer.cli.services import database, database_name
from healer.config import Settings
from healer.errors import OperatorError
from healer.orders import OrderView


def cmd_orders_list(settings: Settings, args: argparse.Namespace) -> int:
    with database(settings, read_only=True) as services:
        views = orders.list_orders(
            services.sessions,
            status=OrderStatus(args.status) if args.status else None,
            stuck_after_seconds=settings.order_sla_seconds if args.stuck else None,
            limit=args.limit,
        )
    redact = Redactor(settings.secret_values())
    views = [orders.redacted(v, redact) for v in views]
    if args.json:
        print_json([v.as_dict() for v in views])
        return EXIT_OK
    table = Table(id_column(), "status", "template", "created", "attempts", "last error")
    for v in views:
        error = f"{v.last_error_step}: {v.last_error_class or ''} {v.last_error or ''}" if v.last_error else ""
        table.add_row(v.id, v.status, v.template, v.created_at, str(v.attempts), Text(error.strip()))
    out.print(table)
    out.print(f"{len(views)} order(s) in {database_name(settings)}", markup=False, highlight=False)
    return EXIT_OK


def cmd_orders_show(settings: Settings, args: argparse.Namespace) -> int:
    with database(settings, read_only=True) as services:
        order_id = orders.resolve_id(services.sessions, args.order_id)
        view = orders.story(services.sessions, order_id)
    if view is None:
        raise orders.UnknownOrderId(f"no order {order_id} in {database_name(settings)}")
    view = orders.redacted(view, Redactor(settings.secret_values()))
    if args.json:
        print_json(view.as_dict())
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
        table.add_row(e.at, e.step, e.outcome, f"{e.duration_seconds:.3f}", e.error_class or "", Text(e.message))
    out.print(table)


def cmd_orders_complete(settings: Settings, args: argparse.Namespace) -> int:
    from healer.render.pool import RenderPool

    with database(settings, read_only=False) as services:
        # In a render process under the render limits, as the daemon does: the uploads are a customer's.
        pipeline = services.pipeline(RenderPool(
            settings.assets_dir, 1, settings.scratch_dir, timeout_seconds=settings.render_timeout_seconds,
            memory_mb=settings.render_memory_mb, max_photo_megapixels=settings.max_photo_megapixels))
        order_id = orders.resolve_id(services.sessions, args.order_id)
        return _complete(pipeline, order_id, args.json)


def _complete(pipeline: Pipeline, order_id: uuid.UUID, as_json: bool) -> int:
    from healer.worker import worker_identity

    try:
        if pipeline.get(order_id).status is OrderStatus.NEEDS_ATTENTION:
            pipeline.requeue(order_id, "completed by an operator in the foreground")
    except OrderNotFound:
        raise orders.UnknownOrderId(f"no order {order_id}") from None
    owner = worker_identity()
    if not pipeline.claim_order(order_id, owner):
        status = pipeline.get(order_id).status
        if not status.is_final:
            raise OperatorError(f"order {order_id} is being worked by another worker right now; try later")
        _report({"order_id": str(order_id), "status": status.value, "steps": []}, as_json,
                f"order {order_id} is already {status.value}")
        return EXIT_OK
    steps = []
    for result in pipeline.run(order_id, owner):
        steps.append({"step": result.step.value, "outcome": result.outcome.value,
                      "seconds": round(result.duration_seconds, 3),
                      "error_class": result.error_class.value if result.error_class else None,
                      "message": result.message})
        if not as_json:
            mark = "[green]ok[/green]" if result.outcome is Outcome.OK else f"[red]{result.outcome.value}[/red]"
            out.print(f"{result.step.value:15} {mark} {result.duration_seconds:6.2f}s  ", end="")
            out.print(result.message if result.outcome is Outcome.OK else
                      f"{steps[-1]['error_class'] or ''}: {result.message}", markup=False)
    status = pipeline.get(order_id).status
    _report({"order_id": str(order_id), "status": status.value, "steps": steps}, as_json,
            f"order {order_id}: {status.value}")
    done = status is OrderStatus.COMPLETED and all(step["outcome"] == Outcome.OK.value for step in steps)
    return EXIT_OK if done else EXIT_FAILED


def cmd_orders_retry(settings: Settings, args: argparse.Namespace) -> int:
    with database(settings, read_only=False) as services:
        pipeline = services.pipeline(lambda _inputs: b"")  # re-queueing never renders
        if args.all:
            targets = [uuid.UUID(v.id) for v in orders.list_orders(
                services.sessions, status=OrderStatus.NEEDS_ATTENTION, limit=100_000)]
        else:
            targets = [orders.resolve_id(services.sessions, args.order_id)]
        queued, skipped = _retry(pipeline, targets, every=args.all)
    if args.json:
        print_json({"requeued": queued, "nothing_to_retry": skipped})
    else:
        for item in queued:
            out.print(f"{item['order_id']}: queued at {item['status']}", highlight=False)
        for item in skipped:
            out.print(f"{item['order_id']}: {item['reason']}", highlight=False)
        out.print(f"{len(queued)} order(s) re-queued", highlight=False)
    return EXIT_OK


def _retry(pipeline: Pipeline, targets: list[uuid.UUID], *, every: bool) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    queued, skipped = [], []
    for order_id in targets:
        try:
            # The same retry as POST /api/orders/{id}/retry: refused when there is nothing to do.
            status = orders.retry(pipeline, order_id, "retry requested by an operator")
        except OrderNotFound:
            raise orders.UnknownOrderId(f"no order {order_id}") from None
        except orders.NothingToRetry as nothing:
            if not every:
                raise OperatorError(f"order {order_id}: nothing to retry: {nothing}") from None
            skipped.append({"order_id": str(order_id), "reason": str(nothing)})  # finished meanwhile
            continue
        queued.append({"order_id": str(order_id), "status": status.value})
    return queued, skipped


def _report(value: object, as_json: bool, text: str) -> None:
    if as_json:
        print_json(value)
    else:
        out.print(text, markup=False, highlight=False)
