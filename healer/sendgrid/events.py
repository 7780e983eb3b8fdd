"""What a verified batch from SendGrid's event webhook says: a JSON array of events, read into a
typed model of the fields healer uses, and what each event is to healer.

SendGrid sends many more fields than these; only the ones read are typed (strictly: a number where
SendGrid sends a string is refused, never coerced), and the rest is ignored. A signed batch that is
not what SendGrid sends raises `Malformed` naming the field, before anything is stored.

An event finds its order through the custom arguments the mailer set on the email
(fulfilment.mailer.ORDER_ARG, KIND_ARG), which SendGrid copies into every event about it. Events
without them are about emails healer did not send (the shop's own share the account and webhook).
"""

from __future__ import annotations

import enum
import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from fulfilment.mailer import EmailKind

LATEST_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z

# SendGrid's ids and names are short printable ASCII: no NUL, space or newline reaches SQL or a log.
Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[!-~]+$")]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[!-~]+$")]
# Words from the receiving mail server (a bounce's reason) go into the order's story: any text but
# NUL, which PostgreSQL's text refuses.
Text = Annotated[str, StringConstraints(max_length=2000, pattern=r"^[^\x00]*$")]
Arg = Annotated[str, StringConstraints(max_length=64, pattern=r"^[^\x00]*$")]


class EmailEventLabel(enum.StrEnum):
    """The `event` label of healer_email_events_total, and the `event` of each stored row."""

    DELIVERED = "delivered"
    BOUNCE = "bounce"
    DROPPED = "dropped"
    BLOCKED = "blocked"  # SendGrid's `bounce` of type `blocked`: the receiving server refused it
    SPAMREPORT = "spamreport"
    UNKNOWN_ORDER = "unknown_order"  # an email healer sent, for an order this database does not hold
    OTHER = "other"  # an event healer does not act on, or about an email healer did not send


UNDELIVERED = frozenset({EmailEventLabel.BOUNCE, EmailEventLabel.DROPPED, EmailEventLabel.BLOCKED})
_TYPES = {label.value: label for label in (EmailEventLabel.DELIVERED, EmailEventLabel.BOUNCE,
                                           EmailEventLabel.DROPPED, EmailEventLabel.BLOCKED,
                                           EmailEventLabel.SPAMREPORT)}


class EventResult(enum.StrEnum):
    """What applying one event did (the `result` of its stored row)."""

    NEEDS_ATTENTION = "needs_attention"  # the order's download email is undelivered: it needs attention
    RECORDED = "recorded"  # a line in the order's story, nothing else
    UNKNOWN_ORDER = "unknown_order"
    IGNORED = "ignored"


class Malformed(Exception):
    """A signed body that is not a batch of SendGrid events: which field, never its value."""


class EmailEvent(BaseModel):
    """One element of the batch: an event about one email."""

    # strict: SendGrid's JSON has exact types; extra="ignore": it sends more fields than these.
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)

    event: Name
    sg_event_id: EventId
    timestamp: int | None = Field(default=None, ge=0, le=LATEST_TIMESTAMP)
    sg_message_id: EventId | None = None
    email: Text | None = None
    type: Name | None = None  # a bounce's: `bounce` or `blocked`
    reason: Text | None = None
    status: Text | None = None
    response: Text | None = None
    # The custom arguments fulfilment.mailer sets (ORDER_ARG, KIND_ARG; a test pins the names).
    order_arg: Arg | None = Field(default=None, alias="healer_order_id", description="the order (a custom argument)")
    kind_arg: Arg | None = Field(default=None, alias="healer_email", description="which email (a custom argument)")

    @property
    def label(self) -> EmailEventLabel:
        """What kind of event this is to healer, before its order is looked for."""
        if self.event == "blocked" or (self.event == "bounce" and self.type == "blocked"):
            return EmailEventLabel.BLOCKED
        return _TYPES.get(self.event, EmailEventLabel.OTHER)

    @property
    def order_id(self) -> uuid.UUID | None:
        """The order healer sent this email for; None if healer did not send it."""
        try:
            return uuid.UUID(self.order_arg) if self.order_arg else None
        except ValueError:
            return None

    @property
    def kind(self) -> EmailKind | None:
        try:
            return EmailKind(self.kind_arg) if self.kind_arg else None
        except ValueError:  # a kind a newer healer sends
            return None


_BATCH: TypeAdapter[list[EmailEvent]] = TypeAdapter(list[EmailEvent])


def batch_schema() -> dict[str, object]:
    """The body's JSON Schema, inlined (no `$defs`), for the OpenAPI document."""
    schema: dict[str, object] = EmailEvent.model_json_schema(by_alias=True)
    schema.pop("$defs", None)
    return {"type": "array", "items": schema}


def parse(body: bytes) -> list[EmailEvent]:
    """The events of a verified body; raises `Malformed`."""
    try:
        return _BATCH.validate_json(body)
    except ValidationError as error:
        raise Malformed(f"not a batch of SendGrid events: {_fields(error)}") from None


def _fields(error: ValidationError) -> str:
    """`field: what is wrong` for the first few errors; never the value sent (it may be anything)."""
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(part) for part in item["loc"])
        parts.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "; ".join(parts)[:300]
