"""The public listener: what customers, Stripe and SendGrid need, and nothing else.

`POST /api/orders/{id}/complete` never does the work itself: it verifies the payment when Stripe
answers quickly (at most one Stripe call per order every few seconds, see fulfilment.coalesce),
queues the order and answers 202 with its status, whatever happens downstream. `GET
/api/orders/{id}` is the customer's view. `GET /download/{token}` sends the customer to a fresh
presigned URL. The Stripe webhook (healer.stripe.webhooks) and SendGrid's event webhook
(healer.sendgrid.webhook) are added by the daemon (healer.wiring.build_apps). Any other path is 404:
health, metrics, docs and the schema live on the operator listener.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Security
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.errors import ErrorClass, StepError
from fulfilment.models import Order, OrderStatus
from fulfilment.pipeline import OrderNotFound, PaymentNotSucceeded, Pipeline
from fulfilment.storage import LocalStore, ObjectStore
from healer import __version__, orders
from healer.http.auth import SessionDenied, check_session
from healer.http.customer_view import CompletionAccepted, CustomerOrder, customer_order
from healer.http.layers import install_layers, native_telemetry
from healer.http.observe import HttpMetrics
from healer.http.openapi import TOO_MANY, Responses, operation_id, problem, unavailable
from healer.http.ratelimit import ClientRateLimit

log = logging.getLogger(__name__)

DOWNLOAD_URL_SECONDS = 300
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")

# Download failures by what a retry can do about them. 503 + Retry-After only when waiting helps:
# S3 or the disk is unavailable, or the PDF is gone and healer is rendering it again (remediation
# `rerender_pdf`). A PDF that is gone with nobody to render it again (remediation off, or given up
# on that order), or a broken stored key, stays so until an operator acts: 404 (this link has no
# file to give) with an ERROR line naming the order and the fix. The design never answers a paying
# customer with a 500, and a 404 says what a 500 would here: retrying will not help.
GONE = "the file for this download link is missing; please contact the shop"
BEING_RESTORED = "your poster is being prepared again; please try the link again in a minute"
REFUNDED = "this order was refunded, so its download link no longer works"
RESTORE_FIX = "restore the file, or let healer render it again (HEALER_REMEDIATION=on)"


@dataclass
class PublicContext:
    sessions: sessionmaker[Session]
    pipeline: Pipeline
    store: ObjectStore
    public_base_url: str
    session_lifetime: timedelta
    rate_limit: ClientRateLimit
    # A download's PDF is gone: (order id, why) -> True while it is being rendered again
    # (healer.remediation.remediator.Remediator.on_missing_download); None: nobody to heal it.
    restore_pdf: Callable[[uuid.UUID, str], bool] | None = None
    # healer_http_requests_total and its duration; None: not counted (tests of one route).
    http_metrics: HttpMetrics | None = None


# The customer's session token, as the shop's checkout hands it to their browser.
SESSION_TOKEN = APIKeyHeader(name="X-Session-Token", scheme_name="SessionToken", auto_error=False,
                             description="the session token the shop gave the customer for this order")
FORBIDDEN = problem("wrong or missing X-Session-Token, or the session expired")
UNKNOWN_ORDER = problem("no such order")
COMPLETE_RESPONSES: Responses = {
    403: FORBIDDEN, 404: UNKNOWN_ORDER,
    409: problem("the payment has not succeeded, or the order was refunded"),
    429: TOO_MANY, 503: unavailable(),
}
SHOW_RESPONSES: Responses = {403: FORBIDDEN, 404: UNKNOWN_ORDER, 429: TOO_MANY, 503: unavailable()}
DOWNLOAD_RESPONSES: Responses = {
    307: {"description": f"to a presigned URL of the PDF, valid {DOWNLOAD_URL_SECONDS} seconds",
          "headers": {"Location": {"description": "the presigned URL", "required": True,
                                   "schema": {"type": "string"}}}},
    200: {"description": "the PDF itself (only with the local-directory store of `healer demo`)",
          "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}},
    404: problem("unknown link, or its file is missing from storage"),
    410: problem("the order was refunded: its link no longer works"),
    429: TOO_MANY,
    503: unavailable("storage unavailable, or the PDF is being rendered again: try again in a minute"),
}


def create_public_app(ctx: PublicContext) -> FastAPI:
    # No docs or schema here: the public API's schema is served on the operator listener.
    app = FastAPI(title="healer public API", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, generate_unique_id_function=operation_id,
                  telemetry=native_telemetry(server_spans=True))
    install_layers(app, "public", ctx.http_metrics)
    _order_routes(app, ctx)
    _download_route(app, ctx)
    return app


def _order_routes(app: FastAPI, ctx: PublicContext) -> None:
    """The customer's `complete` and their view of the order, behind their session token."""
    limited = [Depends(ctx.rate_limit)]

    def customers_order(order_id: uuid.UUID, session_token: str | None) -> Order:
        try:
            order = ctx.pipeline.get(order_id)
        except OrderNotFound:
            raise HTTPException(404, "unknown order") from None
        try:
            check_session(order, session_token, ctx.session_lifetime)
        except SessionDenied as denied:
            raise HTTPException(403, str(denied)) from None
        return order

    @app.post("/api/orders/{order_id}/complete", status_code=202, dependencies=limited,
              responses=COMPLETE_RESPONSES, summary="Complete a paid order (queued)")
    def complete(
        order_id: uuid.UUID, session_token: Annotated[str | None, Security(SESSION_TOKEN)]
    ) -> CompletionAccepted:
        order = customers_order(order_id, session_token)
        if order.status is OrderStatus.REFUNDED:
            raise HTTPException(409, "this order was refunded")
        try:
            status = ctx.pipeline.request_completion(order_id)
        except OrderNotFound:
            raise HTTPException(404, "unknown order") from None
        except PaymentNotSucceeded:
            # Stripe's reason is logged for operators (with the order id); the customer needs the gist.
            raise HTTPException(409, "payment not succeeded: please complete the payment at checkout") from None
        return CompletionAccepted(order_id=str(order_id), status=status)

    @app.get("/api/orders/{order_id}", dependencies=limited, responses=SHOW_RESPONSES,
             summary="The customer's view of an order")
    def show(order_id: uuid.UUID, session_token: Annotated[str | None, Security(SESSION_TOKEN)]) -> CustomerOrder:
        return customer_order(customers_order(order_id, session_token), ctx.public_base_url)


def _download_route(app: FastAPI, ctx: PublicContext) -> None:
    """The link in the email: a fresh presigned URL (or the file), 410 once the order is refunded."""

    @app.get("/download/{token}", response_model=None, response_class=Response, status_code=307,
             dependencies=[Depends(ctx.rate_limit)], responses=DOWNLOAD_RESPONSES,
             summary="A download link from the email")
    def download(token: str) -> RedirectResponse | FileResponse:
        if not _TOKEN.fullmatch(token):
            raise HTTPException(404, "unknown download link")
        order = orders.find_by_download_token(ctx.sessions, token)
        if order is None or not order.final_pdf_key:
            raise HTTPException(404, "unknown download link")
        if order.status is OrderStatus.REFUNDED:
            raise HTTPException(410, REFUNDED)
        return _send_pdf(ctx, order, order.final_pdf_key)


def _send_pdf(ctx: PublicContext, order: Order, key: str) -> RedirectResponse | FileResponse:
    try:
        # A presigned URL is made without asking S3, so ask first (one HEAD): a customer sent
        # on to S3's own 404 page learns nothing, and no operator hears of the lost file.
        if not ctx.store.exists(key):
            raise _missing_download(ctx, order, ErrorClass.S3_MISSING_FILE, f"{key!r} is not in the store",
                                    RESTORE_FIX)
        if isinstance(ctx.store, LocalStore):
            return FileResponse(ctx.store.path(key), media_type="application/pdf",
                                filename=f"poster-{order.id}.pdf")
        url = ctx.store.download_url(key, DOWNLOAD_URL_SECONDS)
    except StepError as error:
        raise _failed_download(ctx, order, error) from None
    if url is None:
        raise HTTPException(503, "download temporarily unavailable", headers={"Retry-After": "60"})
    return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})


def _missing_download(ctx: PublicContext, order: Order, error_class: ErrorClass, what: str,
                      fix: str) -> HTTPException:
    order_id = order.id
    # Only a completed order's PDF is rendered again (one refunded meanwhile has no poster to give).
    completed = order.status is OrderStatus.COMPLETED
    if completed and ctx.restore_pdf is not None and ctx.restore_pdf(order_id, f"{error_class.value}: {what}"):
        log.warning("Download for order %s: %s: %s; the PDF is being rendered again", order_id,
                    error_class.value, what)
        return HTTPException(503, BEING_RESTORED, headers={"Retry-After": "60"})
    log.error("Download for order %s failed: %s: %s; %s", order_id, error_class.value, what, fix)
    return HTTPException(404, GONE)


def _failed_download(ctx: PublicContext, order: Order, error: StepError) -> HTTPException:
    if error.error_class is ErrorClass.S3_MISSING_FILE:
        return _missing_download(ctx, order, error.error_class, error.message, RESTORE_FIX)
    if error.error_class is ErrorClass.BAD_INPUT:
        return _missing_download(ctx, order, error.error_class, error.message,
                                 "the order's final_pdf_key is invalid: fix the row")
    log.error("Download for order %s failed: %s: %s", order.id, error.error_class.value, error.message)
    return HTTPException(503, "download temporarily unavailable", headers={"Retry-After": "60"})
