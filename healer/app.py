"""The HTTP app: the customer's completion endpoint, order views, downloads, liveness and health.

`POST /api/orders/{id}/complete` never does the work itself: it verifies the payment when Stripe
answers quickly, queues the order and answers 202 with its status, whatever happens downstream.
`/readyz` and `/health` answer from the health monitor's cache, so they never wait on a probe.
"""


import hmac
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.errors import ErrorClass, StepError
from fulfilment.models import Order, OrderStatus
from fulfilment.pipeline import OrderNotFound, PaymentNotSucceeded, Pipeline
from fulfilment.storage import LocalStore, ObjectStore
from healer import __version__, orders
from healer.config import Secret
from healer.health import HealthMonitor, Readiness

log = logging.getLogger(__name__)

DOWNLOAD_URL_SECONDS = 300
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


@dataclass
class AppContext:
    sessions: sessionmaker[Session]
    pipeline: Pipeline
    store: ObjectStore
    admin_token: Secret | None
    # (alive, detail): the process answers, and the scheduler still runs its jobs.
    liveness: Callable[[], tuple[bool, str]] = lambda: (True, "ok")
    # The checks behind /readyz and /health; None: no checks configured (always ready).
    health: HealthMonitor | None = None
    # A download's PDF is gone: (order id, why) -> True while it is being rendered again
    # (healer.remediate.Remediator.on_missing_download); None: nobody to heal it.
    restore_pdf: Callable[[uuid.UUID, str], bool] | None = None


def _same_secret(given: str, expected: str) -> bool:
    # compare_digest refuses non-ASCII str: a header of any bytes must be a wrong token, not a 500.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


class Caller:
    """Who is asking: the order's customer (session token) or an operator (admin bearer)."""

    def __init__(self, session_token: str | None, bearer: str | None, admin: Secret | None) -> None:
        self.session_token = session_token
        self.is_admin = bool(admin and bearer and _same_secret(bearer, admin.value))

    def may_see(self, order: Order) -> bool:
        if self.is_admin:
            return True
        return bool(
            self.session_token
            and order.session_token
            and _same_secret(self.session_token, order.session_token)
        )


def create_app(ctx: AppContext) -> FastAPI:
    app = FastAPI(title="healer", version=__version__)

    def caller(
        x_session_token: Annotated[str | None, Header()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Caller:
        bearer = None
        if authorization and authorization.lower().startswith("bearer "):
            bearer = authorization[7:].strip()
        return Caller(x_session_token, bearer, ctx.admin_token)

    def admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
        if ctx.admin_token is None:
            raise HTTPException(403, "admin endpoints are disabled: set HEALER_ADMIN_TOKEN")
        if not who.is_admin:
            raise HTTPException(403, "admin bearer token required")
        return who

    def load_order(order_id: uuid.UUID, who: Caller) -> Order:
        try:
            order = ctx.pipeline.get(order_id)
        except OrderNotFound:
            raise HTTPException(404, "unknown order") from None
        if not who.may_see(order):
            raise HTTPException(403, "wrong or missing X-Session-Token for this order")
        return order

    @app.exception_handler(SQLAlchemyError)
    async def database_unavailable(_request: Request, error: SQLAlchemyError) -> JSONResponse:
        log.error("Database unavailable while answering a request: %s", str(error).splitlines()[0])
        return JSONResponse(
            {"detail": "temporarily unavailable, try again shortly"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.post("/api/orders/{order_id}/complete", status_code=202)
    def complete(order_id: uuid.UUID, who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
        load_order(order_id, who)
        try:
            status = ctx.pipeline.request_completion(order_id)
        except OrderNotFound:
            raise HTTPException(404, "unknown order") from None
        except PaymentNotSucceeded as error:
            raise HTTPException(409, f"payment not succeeded: {error}") from None
        return {"order_id": str(order_id), "status": status.value}

    @app.get("/api/orders/{order_id}")
    def show(order_id: uuid.UUID, who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
        load_order(order_id, who)
        view = orders.story(ctx.sessions, order_id)
        if view is None:
            raise HTTPException(404, "unknown order")
        return view.as_dict()

    @app.post("/api/orders/{order_id}/retry", status_code=202)
    def retry(order_id: uuid.UUID, _who: Annotated[Caller, Depends(admin)]) -> dict[str, Any]:
        try:
            status = ctx.pipeline.requeue(order_id, "retry requested through the API")
        except OrderNotFound:
            raise HTTPException(404, "unknown order") from None
        return {"order_id": str(order_id), "status": status.value}

    @app.get("/download/{token}", response_model=None)
    def download(token: str) -> RedirectResponse | FileResponse:
        if not _TOKEN.match(token):
            raise HTTPException(404, "unknown download link")
        order = orders.find_by_download_token(ctx.sessions, token)
        if order is None or not order.final_pdf_key:
            raise HTTPException(404, "unknown download link")
        key = order.final_pdf_key
        try:
            # A presigned URL is made without asking S3, so ask first (one HEAD): a customer sent
            # on to S3's own 404 page learns nothing, and no operator hears of the lost file.
            if not ctx.store.exists(key):
                raise _missing_download(ctx, order, ErrorClass.S3_MISSING_FILE, f"{key!r} is not in the store",
                                        RESTORE_FIX)
            if isinstance(ctx.store, LocalStore):
                path = ctx.store.path(key)
                return FileResponse(path, media_type="application/pdf", filename=f"poster-{order.id}.pdf")
            url = ctx.store.download_url(key, DOWNLOAD_URL_SECONDS)
        except StepError as error:
            raise _failed_download(ctx, order, error) from None
        if url is None:
            raise HTTPException(503, "download temporarily unavailable")
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})

    @app.get("/livez", response_class=PlainTextResponse)
    def livez(verbose: str | None = None) -> PlainTextResponse:
        alive, detail = ctx.liveness()
        if verbose is not None:
            body = f"[{'+' if alive else '-'}]scheduler {'ok' if alive else 'failed: ' + detail}\n"
            body += f"livez check {'passed' if alive else 'failed'}\n"
        else:
            body = "ok" if alive else f"failed: {detail}"
        return PlainTextResponse(body, status_code=200 if alive else 503)

    @app.get("/readyz", response_class=PlainTextResponse)
    def readyz(
        verbose: str | None = None, exclude: Annotated[list[str] | None, Query()] = None
    ) -> PlainTextResponse:
        readiness = ctx.health.ready(exclude or ()) if ctx.health else Readiness(True, ())
        return PlainTextResponse(
            readyz_body(readiness, verbose=verbose is not None),
            status_code=200 if readiness.ready else 503,
            headers={"Cache-Control": "no-store"},
        )

    @app.get("/health")
    def health() -> JSONResponse:
        if ctx.health is None:
            return JSONResponse({"status": "ok", "checks": {}}, headers={"Cache-Control": "no-store"})
        body = {
            "status": ctx.health.overall().value,
            "checks": {report.name: report.as_dict() for report in ctx.health.reports()},
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @app.get("/health/{check}")
    def health_of(check: str) -> JSONResponse:
        if ctx.health is None or check not in ctx.health.names:
            known = ", ".join(ctx.health.names) if ctx.health else "none"
            raise HTTPException(404, f"unknown check {check!r}; checks here: {known}")
        return JSONResponse(ctx.health.report(check).as_dict(), headers={"Cache-Control": "no-store"})

    return app


# Download failures by what a retry can do about them. 503 + Retry-After only when waiting helps:
# S3 or the disk is unavailable, or the PDF is gone and healer is rendering it again (remediation
# `rerender_pdf`). A PDF that is gone with nobody to render it again (remediation off, or given up
# on that order), or a broken stored key, stays so until an operator acts: 404 (this link has no
# file to give) with an ERROR line naming the order and the fix. The design never answers a paying
# customer with a 500, and a 404 says what a 500 would here: retrying will not help.
GONE = "the file for this download link is missing; please contact the shop"
BEING_RESTORED = "your poster is being prepared again; please try the link again in a minute"


def _missing_download(ctx: AppContext, order: Order, error_class: ErrorClass, what: str,
                      fix: str) -> HTTPException:
    order_id = order.id
    # Only a completed order's PDF is rendered again (one refunded meanwhile has no poster to give).
    completed = order.status == OrderStatus.COMPLETED.value
    if completed and ctx.restore_pdf is not None and ctx.restore_pdf(order_id, f"{error_class.value}: {what}"):
        log.warning("Download for order %s: %s: %s; the PDF is being rendered again", order_id,
                    error_class.value, what)
        return HTTPException(503, BEING_RESTORED, headers={"Retry-After": "60"})
    log.error("Download for order %s failed: %s: %s; %s", order_id, error_class.value, what, fix)
    return HTTPException(404, GONE)


def _failed_download(ctx: AppContext, order: Order, error: StepError) -> HTTPException:
    if error.error_class is ErrorClass.S3_MISSING_FILE:
        return _missing_download(ctx, order, error.error_class, error.message, RESTORE_FIX)
    if error.error_class is ErrorClass.BAD_INPUT:
        return _missing_download(ctx, order, error.error_class, error.message,
                                 "the order's final_pdf_key is invalid: fix the row")
    log.error("Download for order %s failed: %s: %s", order.id, error.error_class.value, error.message)
    return HTTPException(503, "download temporarily unavailable", headers={"Retry-After": "60"})


RESTORE_FIX = "restore the file, or let healer render it again (HEALER_REMEDIATION=on)"


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
