"""`POST /stripe/webhook`: Stripe's signed event deliveries, each applied once.

The signature is checked on the raw body with STRIPE_WEBHOOK_SECRET before anything is parsed, and
the body is then read into typed models of the fields healer uses (healer.stripe.webhook_events);
a delivery that fails either is a 400 naming what is wrong, counted once, and changes nothing: a
malformed event is never a 500 that Stripe would redeliver for three days. Each event id is stored
in the same transaction as its effect, so a redelivery (Stripe may deliver twice) is acknowledged
and ignored, and two copies arriving at once cannot both apply.

A `payment_intent.succeeded` event counts as verification: it is signed by Stripe and carries the
PaymentIntent itself, checked here against the order's amount, currency and payment id exactly as
the verify step would check a retrieved one. Asking Stripe again would only add a request (and an
outage dependency) to a path that must answer fast; the worker goes on from `paid`.

A `charge.refunded` event refunding in full a payment that reconciliation stored as an orphan
resolves that orphan (healer.stripe.orphans), in the same transaction as the event id, whether or not an
order is also named (a second payment for a paid order names that order).

Nothing slow happens in the request: no Stripe calls, no rendering, one short transaction.

With tracing on, each verified delivery is a span `stripe.webhook`, linked to the latest trace of the
order it names (a span link, read from the order's story before the event changes it).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from opentelemetry import trace
from pydantic import BaseModel
from sqlalchemy import or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from fulfilment.errors import ErrorClass
from fulfilment.models import Order, OrderStatus, Outcome, Step, transaction
from fulfilment.pipeline import Pipeline
from fulfilment.recording import latest_traces
from healer import tracing
from healer.config import Secret
from healer.db.models import OrphanPayment, WebhookEvent, insert_once
from healer.health.metrics import Metrics
from healer.http.openapi import inline_schema, problem, unavailable
from healer.stripe.orphans import resolve as resolve_orphan
from healer.stripe.webhook_events import (
    HANDLED_TYPES,
    SUCCEEDED,
    Charge,
    Delivery,
    PaymentIntent,
    Refusal,
    StripeEvent,
    WebhookResult,
    verify,
)

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# Stripe's largest events (a charge with its refunds) are a few tens of kilobytes.
MAX_BODY_BYTES = 256 * 1024


class WebhookAnswer(BaseModel):
    """200: the delivery was verified and handled (or recognised as a replay); Stripe stops."""

    received: bool
    result: WebhookResult


def _openapi() -> dict[str, Any]:
    """The header and body the route reads itself (raw bytes, for the signature), documented."""
    event = inline_schema(StripeEvent)
    event["properties"]["data"]["properties"]["object"] = {
        "description": "read according to `type`; other types are acknowledged unread",
        "anyOf": [inline_schema(PaymentIntent), inline_schema(Charge), {"type": "object"}]}
    return {
        "parameters": [{"name": "Stripe-Signature", "in": "header", "required": True,
                        "description": "Stripe's signature of the raw body (`t=…,v1=…`), "
                                       "checked with STRIPE_WEBHOOK_SECRET",
                        "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": event}}},
    }


RESPONSES: dict[int | str, dict[str, Any]] = {
    400: problem("bad, stale or missing signature; or a signed body that is not a Stripe event "
                 "healer understands (the field is named)"),
    413: problem(f"body over {MAX_BODY_BYTES} bytes"),
    503: unavailable("STRIPE_WEBHOOK_SECRET unset, or the database unavailable (with Retry-After)",
                     always_retry_after=False),
}


def webhook_router(
    sessions: sessionmaker[Session],
    pipeline: Pipeline,
    webhook_secret: Secret | None,
    metrics: Metrics,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> APIRouter:
    router = APIRouter()
    handler = WebhookHandler(sessions, pipeline)

    def count(event_type: str, result: WebhookResult) -> None:
        label = event_type if event_type in HANDLED_TYPES or event_type == "unknown" else "other"
        metrics.webhook_events.labels(label, result.value).inc()

    @router.post("/stripe/webhook", summary="Stripe event deliveries (signed)", response_model=WebhookAnswer,
                 responses=RESPONSES, openapi_extra=_openapi())
    async def stripe_webhook(request: Request) -> JSONResponse:
        try:
            if webhook_secret is None:
                raise Refusal(503, WebhookResult.NOT_CONFIGURED,
                              "STRIPE_WEBHOOK_SECRET is not set: deliveries cannot be verified")
            body = await _read_body(request, max_body_bytes)
            delivery = verify(body, request.headers.get("stripe-signature"), webhook_secret.value)
            result = await run_in_threadpool(handler.handle, delivery)
        except Refusal as refused:
            log.warning("Stripe webhook refused (%s): %s", refused.result.value, refused.detail)
            count(refused.event_type, refused.result)
            return JSONResponse({"detail": refused.detail}, status_code=refused.status)
        except SQLAlchemyError as error:
            log.error("Stripe event %s not stored, database unavailable: %s", delivery.event_id,
                      str(error).splitlines()[0])
            count(delivery.type, WebhookResult.ERROR)
            return JSONResponse({"detail": "temporarily unavailable"}, status_code=503,
                                headers={"Retry-After": "5"})
        count(delivery.type, result)
        return JSONResponse({"received": True, "result": result.value})

    return router


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refusal(413, WebhookResult.TOO_LARGE, f"body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():  # a lying or absent Content-Length is still bounded
        size += len(chunk)
        if size > limit:
            raise Refusal(413, WebhookResult.TOO_LARGE, f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class WebhookHandler:
    """Applies one verified delivery in one transaction, its event id stored alongside."""

    def __init__(self, sessions: sessionmaker[Session], pipeline: Pipeline) -> None:
        self.sessions = sessions
        self.pipeline = pipeline

    def handle(self, delivery: Delivery) -> WebhookResult:
        attributes = {"stripe.event.id": delivery.event_id, "stripe.event.type": delivery.type}
        with tracer.start_as_current_span("stripe.webhook", attributes=attributes) as span:
            result = self._handle(delivery)
            span.set_attribute("stripe.webhook.result", result.value)
            return result

    def _handle(self, delivery: Delivery) -> WebhookResult:
        with transaction(self.sessions) as session:
            if not insert_once(session, WebhookEvent, id=delivery.event_id, type=delivery.type,
                               received_at=self.pipeline.clock(), result="processing"):
                log.info("Stripe event %s (%s) already handled: ignored", delivery.event_id,
                         delivery.type)
                return WebhookResult.DUPLICATE
            result, order_id = self._apply(session, delivery)
            session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == delivery.event_id)
                .values(result=result.value, order_id=order_id)
            )
        return result

    def _apply(self, session: Session, delivery: Delivery) -> tuple[WebhookResult, uuid.UUID | None]:
        obj = delivery.obj
        if obj is None:
            return WebhookResult.IGNORED, None
        orphan = self._refunded_orphan(session, delivery.event_id, obj) if isinstance(obj, Charge) else None
        payment_intent_id = obj.payment_intent if isinstance(obj, Charge) else obj.id
        order = _find_order(session, _metadata_order_id(obj), payment_intent_id)
        if order is None and orphan is not None:
            return orphan, None
        if order is None:
            log.warning("Stripe event %s (%s) names no known order (metadata.order_id %r, %s)",
                        delivery.event_id, delivery.type, obj.metadata and obj.metadata.order_id, payment_intent_id)
            return WebhookResult.UNKNOWN_ORDER, None
        _link_order(session, order.id)
        if isinstance(obj, Charge):
            return self._refunded(session, delivery.event_id, obj, order), order.id
        if delivery.type == SUCCEEDED:
            return self._succeeded(session, delivery, obj, order), order.id
        return self._failed(session, delivery.event_id, obj, order), order.id

    def _refunded_orphan(self, session: Session, event_id: str, charge: Charge) -> WebhookResult | None:
        """Resolves the orphan this charge's refund repays; None if its payment is no orphan.
        Only a full refund resolves: after a partial one, some money is still taken for nothing."""
        payment_intent_id = charge.payment_intent
        if not payment_intent_id:
            return None
        resolution = f"refunded in Stripe (event {event_id})"
        if charge.refunded and resolve_orphan(session, payment_intent_id, resolution, self.pipeline.clock()):
            log.info("Orphan payment %s resolved: refunded in Stripe (charge %s, event %s)",
                     payment_intent_id, charge.id, event_id)
            return WebhookResult.ORPHAN_RESOLVED
        row = session.execute(select(OrphanPayment.resolved_at)
                              .where(OrphanPayment.payment_intent_id == payment_intent_id)).first()
        if row is None:
            return None
        if row.resolved_at is None:
            log.info("Partial refund of orphan payment %s (%s of %s %s, event %s): it stays unresolved "
                     "until refunded in full or resolved by an operator", payment_intent_id,
                     charge.amount_refunded, charge.amount, charge.currency, event_id)
        return WebhookResult.UNCHANGED  # resolved before: by an operator, or an earlier refund event

    def _succeeded(self, session: Session, delivery: Delivery, intent: PaymentIntent, order: Row[Any]) -> WebhookResult:
        problem = payment_mismatch(order, intent.model_dump())
        if problem is not None:
            log.warning("Payment %s for order %s not applied: %s", intent.id, order.id, problem)
            self.pipeline.note(session, order.id, Step.VERIFY_PAYMENT, Outcome.FAILED,
                               f"Stripe event {delivery.event_id} not applied: {problem}",
                               ErrorClass.PAYMENT_UNVERIFIED)
            return WebhookResult.MISMATCH
        message = (f"Payment succeeded: {intent.id} ({intent.amount} {intent.currency}), "
                   f"Stripe event {delivery.event_id}")
        paid = self.pipeline.mark_paid(session, order.id, payment_intent_id=intent.id,
                                       paid_at=delivery.created, message=message)
        return WebhookResult.APPLIED if paid else WebhookResult.UNCHANGED

    def _failed(self, session: Session, event_id: str, intent: PaymentIntent, order: Row[Any]) -> WebhookResult:
        error = intent.last_payment_error
        reason = ": ".join(p for p in (error.code, error.message) if p) if error else ""
        log.info("Payment attempt %s failed for order %s: %s", intent.id, order.id, reason or "no reason given")
        self.pipeline.note(session, order.id, Step.VERIFY_PAYMENT, Outcome.FAILED,
                           f"Payment attempt failed: {reason or 'no reason given'} "
                           f"({intent.id}, Stripe event {event_id})",
                           ErrorClass.PAYMENT_UNVERIFIED)
        return WebhookResult.RECORDED

    def _refunded(self, session: Session, event_id: str, charge: Charge, order: Row[Any]) -> WebhookResult:
        amounts = f"{charge.amount_refunded} of {charge.amount} {charge.currency}"
        where = f"charge {charge.id}, Stripe event {event_id}"
        refunded_intent = charge.payment_intent
        if order.stripe_payment_intent_id and refunded_intent and refunded_intent != order.stripe_payment_intent_id:
            # Another payment naming this order (a double payment, say) was refunded: the order's
            # own payment stands, so fulfilment goes on.
            self.pipeline.note(session, order.id, Step.VERIFY_PAYMENT, Outcome.REFUNDED,
                               f"Refund of another payment {refunded_intent} naming this order: {amounts} ({where})")
            return WebhookResult.RECORDED
        if not charge.refunded:
            # A partial refund (a goodwill gesture, say) leaves the order to go on.
            self.pipeline.note(session, order.id, Step.VERIFY_PAYMENT, Outcome.REFUNDED,
                               f"Partial refund in Stripe: {amounts} ({where})")
            return WebhookResult.RECORDED
        before = self.pipeline.mark_refunded(session, order.id, f"Refunded in Stripe: {amounts} ({where})")
        if before is None:
            return WebhookResult.UNCHANGED
        if before is OrderStatus.COMPLETED:
            log.warning("Refund of completed order %s: the customer has the poster and the money "
                        "back (%s)", order.id, where)
            return WebhookResult.REFUND_AFTER_COMPLETION
        return WebhookResult.APPLIED


def _link_order(session: Session, order_id: uuid.UUID) -> None:
    """Link this delivery's span to the order's latest trace (its completion, say); read only
    while the span records, so that with tracing off a webhook costs no query more."""
    if tracing.recording():
        trace.get_current_span().set_attribute(tracing.ORDER_ID, str(order_id))
        tracing.link_orders(latest_traces(session, [order_id]))


def payment_mismatch(order: Row[Any], intent: dict[str, Any]) -> str | None:
    """Why a succeeded PaymentIntent does not pay for `order`, or None if it does."""
    if order.stripe_payment_intent_id not in (None, intent["id"]):
        return f"order pays with {order.stripe_payment_intent_id}, not {intent['id']}"
    named = (intent.get("metadata") or {}).get("order_id")
    if named is not None and named != str(order.id):  # paid for another order, held by this one
        return f"payment names order {named!r}, not {order.id}"
    if str(intent["currency"]).lower() != order.currency.lower():
        return f"currency {intent['currency']} != order currency {order.currency.lower()}"
    if intent["amount"] != order.amount_cents:
        return f"amount {intent['amount']} != order amount {order.amount_cents}"
    return None


def order_columns() -> tuple[Any, ...]:
    """What matching a payment to an order needs, without loading whole rows."""
    return (Order.id, Order.status, Order.amount_cents, Order.currency,
            Order.stripe_payment_intent_id, Order.paid_at, Order.next_attempt_at,
            Order.lease_expires_at)


def _find_order(session: Session, order_id: uuid.UUID | None, payment_intent_id: str | None) -> Row[Any] | None:
    conditions = []
    if order_id is not None:
        conditions.append(Order.id == order_id)
    if payment_intent_id:
        conditions.append(Order.stripe_payment_intent_id == payment_intent_id)
    if not conditions:
        return None
    rows = session.execute(select(*order_columns()).where(or_(*conditions)).limit(2)).all()
    # metadata.order_id names the order; the payment id is the fallback when metadata is missing.
    return next((r for r in rows if r.id == order_id), rows[0] if rows else None)


def _metadata_order_id(obj: PaymentIntent | Charge) -> uuid.UUID | None:
    return parse_order_id(obj.metadata.order_id if obj.metadata else None)


def parse_order_id(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None
