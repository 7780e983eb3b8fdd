"""What a Stripe webhook delivery is, up to the point where it can be applied: its signature
checked on the raw bytes, then its body parsed into typed models of the fields healer reads.

Stripe sends much more than this; only the fields read are typed (and strictly: a number where
Stripe sends a string is refused, never coerced), and the rest is ignored. A delivery that is not
what Stripe sends, signed or not, raises `Refusal` naming the field, before anything is stored;
so a malformed event is a 400 once per delivery, never a 500 that Stripe would redeliver for three
days.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import stripe
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

TOLERANCE_SECONDS = stripe.Webhook.DEFAULT_TOLERANCE

SUCCEEDED = "payment_intent.succeeded"
PAYMENT_FAILED = "payment_intent.payment_failed"
REFUNDED = "charge.refunded"
HANDLED_TYPES = (SUCCEEDED, PAYMENT_FAILED, REFUNDED)

# Stripe's ids (evt_…, pi_…, ch_…) are short printable ASCII; no NUL, space or newline reaches SQL.
StripeId = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[!-~]+$")]
EventType = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[!-~]+$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$")]  # ISO 4217, as Stripe sends it
# Stripe's words for a declined card go into the order's story: any text but NUL (PostgreSQL's text refuses it).
Text = Annotated[str, StringConstraints(max_length=1000, pattern=r"^[^\x00]*$")]
LATEST_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z: what a datetime holds


class WebhookResult(enum.StrEnum):
    """The `result` label of healer_webhook_events_total, and of each stored event."""

    APPLIED = "applied"  # the order changed
    RECORDED = "recorded"  # a line in the order's story, nothing else
    UNCHANGED = "unchanged"  # already so: a late or out-of-order delivery
    REFUND_AFTER_COMPLETION = "refund_after_completion"  # the customer has poster and money
    MISMATCH = "mismatch"  # amount, currency or payment differ from the order's: not applied
    UNKNOWN_ORDER = "unknown_order"  # reconciliation reports the payment if it stays so
    ORPHAN_RESOLVED = "orphan_resolved"  # refund of a payment no order claims: the orphan is dealt with
    IGNORED = "ignored"  # a type healer does not act on
    DUPLICATE = "duplicate"  # this event id was handled before
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    NOT_CONFIGURED = "not_configured"
    ERROR = "error"  # the database failed: Stripe retries the delivery


class Refusal(Exception):
    """A delivery answered with an error before anything was touched."""

    def __init__(self, status: int, result: WebhookResult, detail: str, event_type: str = "unknown") -> None:
        super().__init__(detail)
        self.status = status
        self.result = result
        self.detail = detail
        self.event_type = event_type


class _Read(BaseModel):
    # strict: Stripe's JSON has exact types; extra="ignore": Stripe adds fields with every version.
    model_config = ConfigDict(strict=True, extra="ignore")


class Metadata(_Read):
    order_id: str | None = None


class PaymentError(_Read):
    code: Text | None = None
    message: Text | None = None


class PaymentIntent(_Read):
    """`data.object` of payment_intent.succeeded and payment_intent.payment_failed."""

    id: StripeId
    amount: int
    currency: Currency
    metadata: Metadata | None = None
    last_payment_error: PaymentError | None = None


class Charge(_Read):
    """`data.object` of charge.refunded."""

    id: StripeId
    amount: int
    amount_refunded: int
    currency: Currency
    refunded: bool
    payment_intent: StripeId | None = None
    metadata: Metadata | None = None


class EventData(_Read):
    object: dict[str, Any] = Field(description="a PaymentIntent (payment_intent.*) or a Charge (charge.*)")


class StripeEvent(_Read):
    """The envelope of every delivery; `data.object` is read according to `type`."""

    id: StripeId
    type: EventType
    created: int = Field(ge=0, le=LATEST_TIMESTAMP)
    data: EventData


OBJECT_MODELS: dict[str, type[PaymentIntent] | type[Charge]] = {
    SUCCEEDED: PaymentIntent, PAYMENT_FAILED: PaymentIntent, REFUNDED: Charge}


@dataclass(frozen=True)
class Delivery:
    """A verified event: its id, type, when Stripe created it, and its `data.object` (None for the
    types healer acknowledges without reading)."""

    event_id: str
    type: str
    created: datetime
    obj: PaymentIntent | Charge | None


def verify(body: bytes, signature: str | None, secret: str) -> Delivery:
    """The event in `body` if Stripe signed it with `secret` recently; raises `Refusal`."""
    check_signature(body, signature, secret)
    return parse(body)


def check_signature(body: bytes, signature: str | None, secret: str) -> None:
    # Stripe's header is ASCII; the library's comparison raises TypeError on anything else.
    if not signature or not signature.isascii():
        raise Refusal(400, WebhookResult.BAD_SIGNATURE, "signature not verified: missing or not ASCII")
    try:
        stripe.WebhookSignature.verify_header(body.decode("utf-8", "replace"), signature, secret,
                                              TOLERANCE_SECONDS)
    except (stripe.SignatureVerificationError, TypeError, ValueError) as error:
        raise Refusal(400, WebhookResult.BAD_SIGNATURE, f"signature not verified: {error}"[:300]) from None


def parse(body: bytes) -> Delivery:
    """Signed by Stripe, yet perhaps not what Stripe sends: refused whole, naming the field."""
    try:
        event = StripeEvent.model_validate_json(body)
    except ValidationError as error:
        raise Refusal(400, WebhookResult.MALFORMED, f"not a Stripe event: {_fields(error)}") from None
    model = OBJECT_MODELS.get(event.type)
    try:
        obj = model.model_validate(event.data.object) if model else None
    except ValidationError as error:
        raise Refusal(400, WebhookResult.MALFORMED, f"event object not understood: {_fields(error, 'data.object.')}",
                      event_type=event.type) from None
    return Delivery(event.id, event.type, datetime.fromtimestamp(event.created, UTC), obj)


def _fields(error: ValidationError, prefix: str = "") -> str:
    """`field: what is wrong` for the first few errors; never the value sent (it may be anything)."""
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:3]:
        where = prefix + ".".join(str(part) for part in item["loc"])
        parts.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "; ".join(parts)[:300]
