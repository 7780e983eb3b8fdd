"""The operator listener: probes, health, metrics, orders' full stories and the admin API.

Bound to HEALER_OPS_HOST/HEALER_OPS_PORT (loopback by default) and never published to the
internet: it shows internals (check details, error classes, worker ids) that customers must not
see. Admin actions still need the bearer token (HEALER_ADMIN_TOKEN). Everything shown passes
through the redactor, so no secret leaves here even when an exception message carried one.
`/readyz` and `/health` answer from the health monitor's cache, so they never wait on a probe.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.pipeline import OrderNotFound, Pipeline
from fulfilment.secrets import Redactor
from healer import __version__, orders
from healer.config import Secret
from healer.health.monitor import HealthMonitor, Readiness
from healer.http.auth import bearer_token, same_secret
from healer.http.customer_view import CompletionAccepted, Problem
from healer.http.errors import install_error_handlers

NO_STORE = {"Cache-Control": "no-store"}


@dataclass
class OperatorContext:
    sessions: sessionmaker[Session]
    pipeline: Pipeline
    admin_token: Secret | None
    redact: Redactor = field(default_factory=Redactor)
    # (alive, detail): the process answers, and the scheduler still runs its jobs.
    liveness: Callable[[], tuple[bool, str]] = lambda: (True, "ok")
    # The checks behind /readyz and /health; None: no checks configured (always ready).
    health: HealthMonitor | None = None
    # The Prometheus exposition: (body, content type).
    metrics: Callable[[], tuple[bytes, str]] | None = None
    # The public listener's schema, served here as /public/openapi.json.
    public_schema: Callable[[], dict[str, Any]] | None = None
    # Sentences for /health about how this daemon runs (embedded defaults, payments unverified).
    notices: tuple[str, ...] = ()


def create_operator_app(ctx: OperatorContext) -> FastAPI:
    app = FastAPI(title="healer operator API", version=__version__)
    install_error_handlers(app)
    _order_routes(app, ctx)
    _probe_routes(app, ctx)
    _health_routes(app, ctx)
    _exposition_routes(app, ctx)
    return app


def _order_routes(app: FastAPI, ctx: OperatorContext) -> None:
    """An order's whole story, and the admin's retry."""

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        if ctx.admin_token is None:
            raise HTTPException(403, "admin endpoints are disabled: set HEALER_ADMIN_TOKEN")
        given = bearer_token(authorization)
        if given is None or not same_secret(given, ctx.admin_token.value):
            raise HTTPException(403, "admin bearer token required")

    @app.get("/api/orders/{order_id}", responses={404: {"model": Problem}},
             summary="An order and its story (every step attempt)")
    def show(order_id: uuid.UUID) -> orders.OrderView:
        view = orders.story(ctx.sessions, order_id)
        if view is None:
            raise HTTPException(404, "unknown order")
        return orders.redacted(view, ctx.redact)

    @app.post("/api/orders/{order_id}/retry", status_code=202, dependencies=[Depends(admin)],
              responses={403: {"model": Problem}, 404: {"model": Problem}},
              summary="Re-queue an order where it stopped (admin)")
    def retry(order_id: uuid.UUID) -> CompletionAccepted:
        try:
            status = ctx.pipeline.requeue(order_id, "retry requested through the API")
        except OrderNotFound:
            raise HTTPException(404, "unknown order") from None
        return CompletionAccepted(order_id=str(order_id), status=status.value)


def _probe_routes(app: FastAPI, ctx: OperatorContext) -> None:
    """Kubernetes-style liveness and readiness, answered from the scheduler and the check cache."""

    @app.get("/livez", response_class=PlainTextResponse, responses={503: {"description": "not alive"}})
    def livez(verbose: str | None = None) -> PlainTextResponse:
        alive, detail = ctx.liveness()
        if verbose is not None:
            body = f"[{'+' if alive else '-'}]scheduler {'ok' if alive else 'failed: ' + detail}\n"
            body += f"livez check {'passed' if alive else 'failed'}\n"
        else:
            body = "ok" if alive else f"failed: {detail}"
        return PlainTextResponse(ctx.redact(body), status_code=200 if alive else 503)

    @app.get("/readyz", response_class=PlainTextResponse, responses={503: {"description": "not ready"}})
    def readyz(
        verbose: str | None = None, exclude: Annotated[list[str] | None, Query()] = None
    ) -> PlainTextResponse:
        readiness = ctx.health.ready(exclude or ()) if ctx.health else Readiness(True, ())
        return PlainTextResponse(
            ctx.redact(readyz_body(readiness, verbose=verbose is not None)),
            status_code=200 if readiness.ready else 503,
            headers=NO_STORE,
        )


def _health_routes(app: FastAPI, ctx: OperatorContext) -> None:
    """Every check as JSON (status, latency, last success, detail, remedy), redacted."""

    @app.get("/health", summary="Every check: status, latency, last success, detail, remedy")
    def health() -> JSONResponse:
        body: dict[str, Any] = {"status": "ok", "checks": {}}
        if ctx.health is not None:
            body = {
                "status": ctx.health.overall().value,
                "checks": {report.name: report.as_dict() for report in ctx.health.reports()},
            }
        body["notices"] = list(ctx.notices)
        return JSONResponse(redacted_json(body, ctx.redact), headers=NO_STORE)

    @app.get("/health/{check}", responses={404: {"model": Problem}})
    def health_of(check: str) -> JSONResponse:
        if ctx.health is None or check not in ctx.health.names:
            known = ", ".join(ctx.health.names) if ctx.health else "none"
            raise HTTPException(404, f"unknown check {check[:64]!r}; checks here: {known}")
        return JSONResponse(redacted_json(ctx.health.report(check).as_dict(), ctx.redact), headers=NO_STORE)


def _exposition_routes(app: FastAPI, ctx: OperatorContext) -> None:
    """Prometheus' scrape, and the public listener's schema (which that listener does not serve)."""
    if ctx.metrics is not None:
        exposition = ctx.metrics

        @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus exposition")
        def metrics() -> Response:
            body, content_type = exposition()
            return Response(body, media_type=content_type)

    if ctx.public_schema is not None:
        public_schema = ctx.public_schema

        @app.get("/public/openapi.json", summary="The public listener's OpenAPI schema")
        def public_openapi() -> JSONResponse:
            return JSONResponse(public_schema())


def redacted_json(value: Any, redact: Redactor) -> Any:
    """Every string in a JSON-shaped value, redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redacted_json(item, redact) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted_json(item, redact) for item in value]
    return value


def readyz_body(readiness: Readiness, *, verbose: bool) -> str:
    """Kubernetes' format: `[+]name ok` / `[-]name failed: reason` lines, then the verdict.

    A passing probe that did not ask for detail gets a bare "ok"; a failing one always gets the
    lines, so whoever reads a 503 sees why.
    """
    if readiness.ready and not verbose:
        return "ok"
    lines = []
    for line in readiness.lines:
        if line.excluded:
            lines.append(f"[+]{line.name} excluded: ok")
        elif line.ok:
            lines.append(f"[+]{line.name} ok")
        else:
            lines.append(f"[-]{line.name} failed: {line.reason}")
    if readiness.unknown_excludes and verbose:
        names = ", ".join(f'"{name}"' for name in readiness.unknown_excludes)
        lines.append(f"warn: some health checks cannot be excluded: no matches for {names}")
    lines.append(f"readyz check {'passed' if readiness.ready else 'failed'}")
    return "\n".join(lines) + "\n"
