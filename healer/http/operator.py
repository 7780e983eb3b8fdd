"""The operator listener: probes, health, metrics, orders' full stories and the admin API.

Bound to HEALER_OPS_HOST/HEALER_OPS_PORT (loopback by default) and never published to the
internet: it shows internals (check details, error classes, worker ids) that customers must not
see. Admin actions still need the bearer token (HEALER_ADMIN_TOKEN). Everything shown passes
through the redactor, so no secret leaves here even when an exception message carried one.
The probes and `/health` are healer.http.probes; they answer from the health monitor's cache, so
they never wait on a probe. An admin's retry is healer.orders.retry, the same as `healer orders
retry`: 409 and no change for an order with nothing to retry, and no new story line while the order
is already queued.
`/docs` is Swagger UI with its scripts and styles served from the swagger_ui_bundle package, not a
CDN (FastAPI's default), so it works on a network without the internet; `/runbook` is the
operations guide (healer.http.runbook); `/` and `/orders/{id}` are the status page, HTML for people
on call (healer.http.status_page).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from swagger_ui_bundle import swagger_ui_path

from fulfilment.pipeline import OrderNotFound, Pipeline
from fulfilment.secrets import Redactor
from healer import __version__, orders
from healer.config import Secret
from healer.health.monitor import HealthMonitor
from healer.http.auth import same_secret
from healer.http.customer_view import CompletionAccepted
from healer.http.layers import install_layers, native_telemetry
from healer.http.observe import HttpMetrics
from healer.http.openapi import Responses, operation_id, plain_text, problem, unavailable
from healer.http.probes import health_routes, probe_routes
from healer.http.runbook import runbook_routes
from healer.http.status_data import PageConfig
from healer.http.status_page import status_page_routes


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
    metrics: Callable[[str], tuple[bytes, str]] | None = None  # Accept header -> body, content type
    # The public listener's schema, served here as /public/openapi.json.
    public_schema: Callable[[], dict[str, Any]] | None = None
    # Sentences for /health about how this daemon runs (embedded defaults, payments unverified).
    notices: tuple[str, ...] = ()
    # healer_http_requests_total and its duration; None: not counted (tests of one route).
    http_metrics: HttpMetrics | None = None
    # What the status page (`/`, healer.http.status_page) needs beyond the above.
    pages: PageConfig = field(default_factory=PageConfig)
    # The singleton roles and whether this replica leads each (Leadership.roles); None: no roles.
    leaders: Callable[[], Mapping[str, bool]] | None = None


ADMIN = HTTPBearer(scheme_name="AdminToken", auto_error=False, description="HEALER_ADMIN_TOKEN")
SHOW_RESPONSES: Responses = {404: problem("no such order"),
                              409: problem("the prefix given starts more than one order's id"), 503: unavailable()}
# A whole id (with or without dashes) or a prefix of one, as `healer orders` takes it.
ORDER_ID_PATTERN = r"^[0-9a-fA-F-]{4,36}$"
RETRY_RESPONSES: Responses = {
    403: problem("admin endpoints disabled (no HEALER_ADMIN_TOKEN), or a wrong or missing bearer token"),
    404: problem("no such order"),
    409: problem("nothing to do: the order is completed or refunded, or its payment has not succeeded; "
                 "or the prefix given starts more than one order's id"),
    503: unavailable(),
}
def resolved_order_id(request: Request, order_id: Annotated[str, PathParam(
        pattern=ORDER_ID_PATTERN, description="the order's id, or a unique prefix of it (4 hex digits or more)",
)]) -> uuid.UUID:
    """The order an operator named, as `healer orders` resolves it (healer.orders.resolve_id)."""
    try:
        return orders.resolve_id(request.app.state.order_sessions, order_id)
    except ValueError as error:
        raise HTTPException(422, str(error)) from None
    except orders.UnknownOrderId:
        raise HTTPException(404, "unknown order") from None
    except orders.AmbiguousOrderId as error:
        raise HTTPException(409, str(error)) from None


OrderId = Annotated[uuid.UUID, Depends(resolved_order_id)]
OPENMETRICS = "application/openmetrics-text"
SWAGGER_ASSETS = "/docs/assets"


def create_operator_app(ctx: OperatorContext) -> FastAPI:
    # FastAPI's own /docs and /redoc load their scripts from CDNs: blank pages offline. /docs is
    # served below instead; ReDoc has no packaged copy, so there is no /redoc.
    app = FastAPI(title="healer operator API", version=__version__, generate_unique_id_function=operation_id,
                  docs_url=None, redoc_url=None, telemetry=native_telemetry(server_spans=False))
    install_layers(app, "operator", ctx.http_metrics)
    # The routes polled most first: the router tries each route in turn until one matches.
    probe_routes(app, ctx.liveness, ctx.health, ctx.redact)
    health_routes(app, ctx.health, ctx.notices, ctx.redact, ctx.leaders)
    _exposition_routes(app, ctx)
    _order_routes(app, ctx)
    _docs_routes(app)
    runbook_routes(app)
    status_page_routes(app, ctx)
    return app


def _order_routes(app: FastAPI, ctx: OperatorContext) -> None:
    """An order's whole story, and the admin's retry."""

    def admin(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(ADMIN)]) -> None:
        if ctx.admin_token is None:
            raise HTTPException(403, "admin endpoints are disabled: set HEALER_ADMIN_TOKEN")
        if credentials is None or not same_secret(credentials.credentials, ctx.admin_token.value):
            raise HTTPException(403, "admin bearer token required")

    app.state.order_sessions = ctx.sessions  # for resolved_order_id

    @app.get("/api/orders/{order_id}", responses=SHOW_RESPONSES, summary="An order and its story (every step attempt)")
    def show(order_id: OrderId) -> orders.OrderView:
        view = orders.story(ctx.sessions, order_id)
        if view is None:
            raise HTTPException(404, "unknown order")
        return orders.redacted(view, ctx.redact)

    @app.post("/api/orders/{order_id}/retry", status_code=202, dependencies=[Depends(admin)],
              responses=RETRY_RESPONSES, summary="Re-queue an order where it stopped (admin)")
    def retry(order_id: OrderId) -> CompletionAccepted:
        try:
            status = orders.retry(ctx.pipeline, order_id, "retry requested through the API")
        except OrderNotFound:
            raise HTTPException(404, "unknown order") from None
        except orders.NothingToRetry as nothing:
            raise HTTPException(409, str(nothing)) from None
        return CompletionAccepted(order_id=str(order_id), status=status)


def _exposition_routes(app: FastAPI, ctx: OperatorContext) -> None:
    """Prometheus' scrape (OpenMetrics when the scraper asks for it), and the public listener's
    schema (which that listener does not serve)."""
    if ctx.metrics is not None:
        # Called with the scraper's Accept header: healer.health.metrics.Metrics.exposition answers
        # OpenMetrics, the one format that carries exemplars (trace ids), when it is asked for.
        exposition = ctx.metrics
        answer = {**plain_text("the text exposition format, or OpenMetrics (with exemplars) when the "
                               "Accept header asks for application/openmetrics-text")}
        answer["content"] = {**answer["content"], OPENMETRICS: {"schema": {"type": "string"}}}

        @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus exposition",
                 responses={200: answer})
        def metrics(request: Request) -> Response:
            body, content_type = exposition(request.headers.get("accept", ""))
            return Response(body, media_type=content_type)

    if ctx.public_schema is not None:
        public_schema = ctx.public_schema

        @app.get("/public/openapi.json", summary="The public listener's OpenAPI schema")
        def public_openapi() -> dict[str, Any]:
            return public_schema()


def _docs_routes(app: FastAPI) -> None:
    """Swagger UI for this listener's API, from the files of the swagger_ui_bundle package."""
    assets = Path(str(swagger_ui_path))

    # A route, not a StaticFiles mount: FastAPI's router records no route for a mount, so its
    # requests would be counted and logged as `unmatched`.
    @app.get(SWAGGER_ASSETS + "/{name}", include_in_schema=False)
    def swagger_asset(name: str) -> FileResponse:
        if name.startswith(".") or not (assets / name).is_file():
            raise HTTPException(404, "no such file")
        return FileResponse(assets / name)

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy's path prefix
        return get_swagger_ui_html(
            openapi_url=root + str(app.openapi_url), title=f"{app.title}: Swagger UI",
            swagger_js_url=f"{root}{SWAGGER_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{SWAGGER_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{SWAGGER_ASSETS}/favicon-32x32.png",
        )
