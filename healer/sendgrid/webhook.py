"""`POST /sendgrid/events`: SendGrid's Signed Event Webhook, each event applied once.

In order, each refusal answered before anything is touched: without SENDGRID_WEBHOOK_PUBLIC_KEY
the route is not there (404, as any unknown path: delivery is then unproven, and the daemon says so
at start); a body over 1 MiB is 413 (more than SendGrid's batches hold); a missing, forged or
stale signature is 403 (healer.sendgrid.signature); a signed body that is not a batch of SendGrid
events is 400 naming the field (healer.sendgrid.events). A verified batch is applied in one short
transaction (healer.sendgrid.delivery) and answered 200, also when every event in it was applied
before; only the database being unavailable is a 5xx (503), which SendGrid retries.

Each new event is counted once in healer_email_events_total{event}.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from fulfilment.pipeline import Pipeline
from healer.health.metrics import Metrics
from healer.http.openapi import problem, unavailable
from healer.sendgrid.delivery import DeliveryEvents
from healer.sendgrid.events import Malformed, batch_schema, parse
from healer.sendgrid.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, NotVerified, Verifier

log = logging.getLogger(__name__)

PATH = "/sendgrid/events"
MAX_BODY_BYTES = 1024 * 1024
NOT_CONFIGURED = "SendGrid events are not taken here: SENDGRID_WEBHOOK_PUBLIC_KEY is not set"


class EventsAnswer(BaseModel):
    """200: the batch was verified and every event in it applied, now or before (a replay)."""

    received: int
    duplicates: int


class _Refusal(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _openapi() -> dict[str, Any]:
    """The headers and body the route reads itself (raw bytes, for the signature), documented."""
    def header(name: str, description: str) -> dict[str, Any]:
        return {"name": name, "in": "header", "required": True, "description": description,
                "schema": {"type": "string"}}

    return {
        "parameters": [
            header(SIGNATURE_HEADER, "SendGrid's ECDSA signature (base64) of the timestamp followed by the "
                                     "raw body, checked with SENDGRID_WEBHOOK_PUBLIC_KEY"),
            header(TIMESTAMP_HEADER, "when SendGrid signed the batch (Unix seconds); at most 5 minutes old"),
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": batch_schema()}}},
    }


RESPONSES: dict[int | str, dict[str, Any]] = {
    400: problem("a signed body that is not a batch of SendGrid events (the field is named)"),
    403: problem("signature or timestamp missing, not SendGrid's, more than 5 minutes old or in the future"),
    404: problem("SENDGRID_WEBHOOK_PUBLIC_KEY is not set: no SendGrid events are taken"),
    413: problem(f"body over {MAX_BODY_BYTES} bytes"),
    503: unavailable("the database is unavailable: SendGrid posts the batch again"),
}


def events_router(
    sessions: sessionmaker[Session],
    pipeline: Pipeline,
    public_key: str | None,
    metrics: Metrics,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    """The route; `public_key` is SENDGRID_WEBHOOK_PUBLIC_KEY (None: it answers 404)."""
    router = APIRouter()
    verifier = Verifier(public_key, clock=clock) if public_key else None
    events = DeliveryEvents(sessions, pipeline)

    @router.post(PATH, summary="SendGrid's email events (signed)", response_model=EventsAnswer,
                 responses=RESPONSES, openapi_extra=_openapi())
    async def sendgrid_events(request: Request) -> JSONResponse:
        try:
            if verifier is None:
                raise _Refusal(404, NOT_CONFIGURED)
            body = await _read_body(request, max_body_bytes)
            try:
                verifier.verify(body, request.headers.get(SIGNATURE_HEADER), request.headers.get(TIMESTAMP_HEADER))
            except NotVerified as refused:
                raise _Refusal(403, f"signature not verified: {refused}") from None
            try:
                batch = parse(body)
            except Malformed as refused:
                raise _Refusal(400, str(refused)) from None
            applied = await run_in_threadpool(events.apply, batch)
        except _Refusal as refused:
            log.warning("SendGrid events refused (%d): %s", refused.status, refused.detail)
            return JSONResponse({"detail": refused.detail}, status_code=refused.status)
        except SQLAlchemyError as error:
            log.error("SendGrid events not stored, database unavailable: %s", str(error).splitlines()[0])
            return JSONResponse({"detail": "temporarily unavailable"}, status_code=503,
                                headers={"Retry-After": "5"})
        for label in applied.labels:
            metrics.email_events.labels(label.value).inc()
        return JSONResponse({"received": applied.received, "duplicates": applied.duplicates})

    return router


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _Refusal(413, f"body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():  # a lying or absent Content-Length is still bounded
        size += len(chunk)
        if size > limit:
            raise _Refusal(413, f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
