"""Applying SendGrid's email events to orders: each event once, in the order's story.

Every event id is stored in the same transaction as its effect, so a batch posted twice (SendGrid
retrying a delivery it thinks failed, or anyone replaying one) changes nothing the second time, and
two copies arriving at once cannot both apply. A batch is one transaction: it applies whole or not
at all (then SendGrid posts it again).

What an event does, once matched to its order by the email's custom arguments:
- `delivered`: a line in the story;
- `spamreport`: a line in the story (and a count: the customer called healer's email spam);
- `bounce`, `dropped`, `blocked` of the download email of a completed order: the customer has no
  link, so the order goes to `needs_attention` with `email_undelivered` (through the pipeline); an
  operator corrects the address and retries, which sends the email again. Of an earlier download
  email than the order's latest, or of another email, or for an order not completed: a line only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.errors import ErrorClass
from fulfilment.mailer import EmailKind, single_line
from fulfilment.models import Order, OrderStatus, Outcome, Step, transaction
from fulfilment.pipeline import Pipeline
from fulfilment.steps import mask_email
from healer.db.models import SendGridEvent, insert_once
from healer.sendgrid.events import UNDELIVERED, EmailEvent, EmailEventLabel, EventResult

log = logging.getLogger(__name__)

_WHICH = {EmailKind.DOWNLOAD: "Download email", EmailKind.DELAY_NOTICE: "Delay notice",
          EmailKind.REFUND_NOTICE: "Refund notice"}
_WHAT = {EmailEventLabel.DELIVERED: "delivered", EmailEventLabel.BOUNCE: "bounced",
         EmailEventLabel.BLOCKED: "blocked by the receiving server", EmailEventLabel.DROPPED: "dropped by SendGrid",
         EmailEventLabel.SPAMREPORT: "reported as spam by its recipient"}
_OUTCOMES = {EmailEventLabel.DELIVERED: Outcome.DELIVERED, EmailEventLabel.SPAMREPORT: Outcome.SPAM_REPORT}


@dataclass(frozen=True)
class _Order:
    """What an event's effect depends on, read under a lock."""

    id: uuid.UUID
    status: OrderStatus
    email_message_id: str | None


@dataclass(frozen=True)
class Applied:
    """What one batch did: how many events it held, how many had been applied before, and the
    label of each new one (for healer_email_events_total, counted once the batch is committed)."""

    received: int
    duplicates: int
    labels: tuple[EmailEventLabel, ...]


class DeliveryEvents:
    def __init__(self, sessions: sessionmaker[Session], pipeline: Pipeline) -> None:
        self.sessions = sessions
        self.pipeline = pipeline

    def apply(self, events: Sequence[EmailEvent]) -> Applied:
        labels: list[EmailEventLabel] = []
        with transaction(self.sessions) as session:
            for event in events:
                if not insert_once(session, SendGridEvent, id=event.sg_event_id, event=event.label.value,
                                   received_at=self.pipeline.clock(), result="processing"):
                    log.info("SendGrid event %s (%s) applied before: ignored", event.sg_event_id, event.event)
                    continue
                label, result, order_id = self._apply(session, event)
                session.execute(update(SendGridEvent).where(SendGridEvent.id == event.sg_event_id)
                                .values(event=label.value, result=result.value, order_id=order_id))
                labels.append(label)
        return Applied(len(events), len(events) - len(labels), tuple(labels))

    def _apply(self, session: Session, event: EmailEvent) -> tuple[EmailEventLabel, EventResult, uuid.UUID | None]:
        label, order_id = event.label, event.order_id
        if order_id is None or label is EmailEventLabel.OTHER:
            return EmailEventLabel.OTHER, EventResult.IGNORED, order_id
        # Locked: a retry re-sending the email meanwhile must not be parked on this old event.
        row = session.execute(select(Order.status, Order.email_message_id)
                              .where(Order.id == order_id).with_for_update()).first()
        if row is None:
            log.info("SendGrid event %s (%s) names order %s, which is not here: ignored", event.sg_event_id,
                     event.event, order_id)
            return EmailEventLabel.UNKNOWN_ORDER, EventResult.UNKNOWN_ORDER, None
        message = describe(event, label)
        if label in UNDELIVERED:
            order = _Order(order_id, row.status, row.email_message_id)
            return label, self._undelivered(session, event, order, message), order_id
        if label is EmailEventLabel.SPAMREPORT:
            log.warning("Order %s: %s", order_id, message)
        else:
            log.info("Order %s: %s", order_id, message)
        self.pipeline.note(session, order_id, Step.EMAIL, _OUTCOMES[label], message)
        return label, EventResult.RECORDED, order_id

    def _undelivered(self, session: Session, event: EmailEvent, order: _Order, message: str) -> EventResult:
        if event.kind is not EmailKind.DOWNLOAD:
            log.warning("Order %s: %s", order.id, message)
            self.pipeline.note(session, order.id, Step.EMAIL, Outcome.UNDELIVERED, message)
            return EventResult.RECORDED
        if not about_latest_email(event, order.email_message_id):
            message += "; an earlier email than the order's latest, so the order stays as it is"
        elif self.pipeline.mark_undelivered(session, order.id, message):
            return EventResult.NEEDS_ATTENTION
        else:
            message += f"; the order is {order.status}, not completed, so it stays as it is"
        log.warning("Order %s: %s", order.id, message)
        self.pipeline.note(session, order.id, Step.EMAIL, Outcome.UNDELIVERED, message, ErrorClass.EMAIL_UNDELIVERED)
        return EventResult.RECORDED


def describe(event: EmailEvent, label: EmailEventLabel) -> str:
    """The story line: which email, what happened, the receiving server's words, and the event."""
    which = _WHICH[event.kind] if event.kind else "Email"
    said = single_line(event.reason or event.status or event.response or "")[:300]
    why = f": {said}" if said and label in UNDELIVERED else ""
    to = f"to {mask_email(event.email)}, " if event.email else ""
    return f"{which} {_WHAT[label]}{why} ({to}SendGrid event {event.sg_event_id})"


def about_latest_email(event: EmailEvent, latest_message_id: str | None) -> bool:
    """Whether the event is about the order's latest email: SendGrid's `sg_message_id` starts with
    the X-Message-Id it answered the send with. Either may be missing (SendGrid leaves it out of
    some asynchronous bounces): then it cannot be told apart, and counts as the latest."""
    if not event.sg_message_id or not latest_message_id:
        return True
    return event.sg_message_id == latest_message_id or event.sg_message_id.startswith(f"{latest_message_id}.")
