"""The operator listener: probes, health, metrics, orders' full stories and the admin API.

Bound to HEALER_OPS_HOST/HEALER_OPS_PORT (loopback by default) and never published to the
internet: it shows internals (check details, error classes, worker ids) that customers must not
see. Admin actions still need the bearer token (HEALER_ADMIN_TOKEN). Everything shown passes
through the redactor, so no secret leaves here even when an exception message carried one.
The probes and `/health` are healer.http.probes; they answer from the health monitor's cache, so
they never wait on a probe. An admin's retry is healer.orders.retry, the same as `healer orders
retry`: 409 and no change for an order with nothing to retry, and no new story line while the order
is already queued.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.pipeline import OrderNotFound, Pipeline
from fulfilment.secrets import Redactor
from healer import __version__, orders
from healer.config import Secret
from healer.health.monitor import HealthMonitor
from healer.http.auth import same_secret
from healer.http.customer_view import CompletionAccepted
from healer.http.layers import install_layers
from healer.http.observe import HttpMetrics
from healer.http.openapi import Responses, operation_id, plain_text, problem, unavailable
from healer.http.probes import health_routes, probe_routes


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
    # healer_http_requests_total and its duration; None: not counted (tests of one route).
    http_metrics: HttpMetrics | None = None


ADMIN = HTTPBearer(scheme_name="AdminToken", auto_error=False, description="HEALER_ADMIN_TOKEN")
SHOW_RESPONSES: Responses = {404: problem("no such order"), 503: unavailable()}
RETRY_RESPONSES: Responses = {
    403: problem("admin endpoints disabled (no HEALER_ADMIN_TOKEN), or a wrong or missing bearer token"),
    404: problem("no such order"),
    409: problem("nothing to do: the order is completed or refunded, or its payment has not succeeded"),
    503: unavailable(),
}


def create_operator_app(ctx: OperatorContext) -> FastAPI:
    app = FastAPI(title="healer operator API", version=__version__, generate_unique_id_function=operation_id)
    install_layers(app, "operator", ctx.http_metrics)
    _order_routes(app, ctx)
    probe_routes(app, ctx.liveness, ctx.health, ctx.redact)
    health_routes(app, ctx.health, ctx.notices, ctx.redact)
    _exposition_routes(app, ctx)
    return app


def _order_routes(app: FastAPI, ctx: OperatorContext) -> None:
    """An order's whole story, and the admin's retry."""

    def admin(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(ADMIN)]) -> None:
        if ctx.admin_token is None:
            raise HTTPException(403, "admin endpoints are disabled: set HEALER_ADMIN_TOKEN")
        if credentials is None or not same_secret(credentials.credentials, ctx.admin_token.value):
            raise HTTPException(403, "admin bearer token required")

    @app.get("/api/orders/{order_id}", responses=SHOW_RESPONSES, summary="An order and its story (every step attempt)")
    def show(order_id: uuid.UUID) -> orders.OrderView:
        view = orders.story(ctx.sessions, order_id)
        if view is None:
            raise HTTPException(404, "unknown order")
        return orders.redacted(view, ctx.redact)

    @app.post("/api/orders/{order_id}/retry", status_code=202, dependencies=[Depends(admin)],
              responses=RETRY_RESPONSES, summary="Re-queue an order where it stopped (admin)")
    def retry(order_id: uuid.UUID) -> CompletionAccepted:
        try:
            status = orders.retry(ctx.pipeline, order_id, "retry requested through the API")
        except OrderNotFound:
            raise HTTPException(404, "unknown order") from None
        except orders.NothingToRetry as nothing:
            raise HTTPException(409, str(nothing)) from None
        return CompletionAccepted(order_id=str(order_id), status=status)


def _exposition_routes(app: FastAPI, ctx: OperatorContext) -> None:
    """Prometheus' scrape, and the public listener's schema (which that listener does not serve)."""
    if ctx.metrics is not None:
        exposition = ctx.metrics

        @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus exposition",
                 responses={200: plain_text("the text exposition format")})
        def metrics() -> Response:
            body, content_type = exposition()
            return Response(body, media_type=content_type)

    if ctx.public_schema is not None:
        public_schema = ctx.public_schema

        @app.get("/public/openapi.json", summary="The public listener's OpenAPI schema")
        def public_openapi() -> dict[str, Any]:
            return public_schema()
