"""Emails to customers about an order that is late: "your poster is delayed" (optional, once per
order) and "your order was refunded, and why" (once per refund healer made).

Each notice is a row of `order_notices` whose primary key (order, kind) makes it once per order
whichever daemon gets there first; a daemon claims it before sending, so two never both send it:
at most once, by design (a crash between SendGrid's answer and the commit loses that one email,
rather than risking two). A send that fails is handed back and tried on the next sweep.

A delay email makes a promise only what the order can keep: an order still being worked will be
emailed its download link; one that gave up (`needs_attention`) waits on a person, and its email
says so, and says the payment will be refunded if the refund policy is on.
"""

from __future__ import annotations

import html
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, exists, select, update
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.errors import ErrorClass, StepError
from fulfilment.mailer import Email, EmailKind, Mailer, single_line
from fulfilment.models import Order, OrderStatus, transaction, utcnow
from fulfilment.pipeline import ACTIVE
from healer.db.models import NoticeKind, OrderNotice, insert_once

log = logging.getLogger(__name__)

# States of a refund email's notice row: written "due" with the refund, claimed, then sent.
DUE = "due"
SENDING = "sending"

_DELAY_TEXT = """\
Hello,

Your poster{title} is taking longer than usual. It is not forgotten: we are on it, and we will
email you the download link as soon as it is ready. You do not need to do anything.

Order reference: {order_id}
"""

_TROUBLE_TEXT = """\
Hello,

We ran into a problem making your poster{title}, and a person on our team is looking into it.
{next_step} You do not need to do anything.

Order reference: {order_id}
"""
_IF_NOT_FIXED_REFUND = "If we cannot make it, we will refund your payment in full and tell you."
_IF_NOT_FIXED = "We will email you again as soon as we know more."

_REFUND_TEXT = """\
Hello,

We are sorry: we could not make your poster{title}, because {reason}. We have refunded your
payment in full, to the card you paid with; depending on your bank, it can take 5 to 10 days to
show on your statement.

Order reference: {order_id}
"""

# Why an order gave up, in the customer's words: never error text, keys or hosts.
_REFUND_REASONS = {
    ErrorClass.S3_MISSING_FILE: "the photo or recording you uploaded could no longer be found",
    ErrorClass.BAD_INPUT: "the photo or recording you uploaded could not be used to make a poster",
}
_REFUND_REASON = "of a technical problem on our side that we could not fix in time"


def _quoted(title: str) -> str:
    title = single_line(title)
    return f" \u201c{title}\u201d" if title else ""


def _email(to: str, subject: str, text: str, order_id: str, kind: EmailKind) -> Email:
    body = "".join(f"<p>{html.escape(p).replace(chr(10), ' ')}</p>" for p in text.strip().split("\n\n"))
    return Email(to=to, subject=subject, text=text, html=f"<!DOCTYPE html><html><body>{body}</body></html>",
                 order_id=order_id, kind=kind)  # SendGrid's events about it name its order (healer.sendgrid)


def delay_email(*, to: str, title: str, order_id: str, given_up: bool = False, refunds: bool = False) -> Email:
    """The "delayed" email; for an order that gave up, one that promises no download link."""
    if not given_up:
        text = _DELAY_TEXT.format(title=_quoted(title), order_id=order_id)
        return _email(to, "Your poster is on its way, a little late", text, order_id, EmailKind.DELAY_NOTICE)
    next_step = _IF_NOT_FIXED_REFUND if refunds else _IF_NOT_FIXED
    text = _TROUBLE_TEXT.format(title=_quoted(title), next_step=next_step, order_id=order_id)
    return _email(to, "A problem with your poster order", text, order_id, EmailKind.DELAY_NOTICE)


def refund_email(*, to: str, title: str, order_id: str, error_class: ErrorClass | None) -> Email:
    """The "refunded" email: that the payment came back, and why, in the customer's words."""
    reason = _REFUND_REASONS.get(error_class, _REFUND_REASON) if error_class else _REFUND_REASON
    text = _REFUND_TEXT.format(title=_quoted(title), reason=reason, order_id=order_id)
    return _email(to, "Your poster order has been refunded", text, order_id, EmailKind.REFUND_NOTICE)


# -- "your poster is delayed" ----------------------------------------------------------------------


def send_delay_emails(
    sessions: sessionmaker[Session], mailer: Mailer, *, after_seconds: int, refunds: bool = False,
    limit: int = 50, clock: Callable[[], datetime] = utcnow,
) -> list[uuid.UUID]:
    """Tell customers whose paid order is past `after_seconds` that it is delayed, once each;
    `refunds`: orders that gave up will be refunded (HEALER_REFUND_ON_FAILURE)."""
    now = clock()
    waiting = (*ACTIVE, OrderStatus.NEEDS_ATTENTION.value)
    already = exists().where(OrderNotice.order_id == Order.id,
                             OrderNotice.kind == NoticeKind.DELAY_EMAIL.value)
    with sessions() as session:
        rows = session.execute(
            select(Order.id, Order.email, Order.title, Order.status)
            .where(Order.status.in_(waiting), Order.paid_at < now - timedelta(seconds=after_seconds),
                   ~already)
            .order_by(Order.paid_at).limit(limit)
        ).all()
    sent = []
    for row in rows:
        email = delay_email(to=row.email, title=row.title, order_id=str(row.id), refunds=refunds,
                            given_up=OrderStatus(row.status) is OrderStatus.NEEDS_ATTENTION)
        if _claim_delay_email(sessions, row.id, now) and _send(sessions, mailer, row.id, NoticeKind.DELAY_EMAIL,
                                                              email, release=_unclaim_delay_email):
            sent.append(row.id)
    return sent


def _claim_delay_email(sessions: sessionmaker[Session], order_id: uuid.UUID, now: datetime) -> bool:
    with transaction(sessions) as session:
        return insert_once(session, OrderNotice, order_id=order_id, kind=NoticeKind.DELAY_EMAIL.value,
                           at=now, detail=SENDING)


def _unclaim_delay_email(session: Session, order_id: uuid.UUID) -> None:
    session.execute(delete(OrderNotice).where(OrderNotice.order_id == order_id,
                                              OrderNotice.kind == NoticeKind.DELAY_EMAIL.value))


# -- "your order was refunded" ----------------------------------------------------------------------


def queue_refund_email(session: Session, order_id: uuid.UUID, now: datetime) -> bool:
    """In the transaction that records a refund: the email is due from then on, once."""
    return insert_once(session, OrderNotice, order_id=order_id, kind=NoticeKind.REFUND_EMAIL.value,
                       at=now, detail=DUE)


def send_refund_emails(sessions: sessionmaker[Session], mailer: Mailer, *, limit: int = 50) -> list[uuid.UUID]:
    """Send every refund email that is due (one per refunded order, whichever daemon claims it)."""
    with sessions() as session:
        rows = session.execute(
            select(Order.id, Order.email, Order.title, Order.last_error_class)
            .join(OrderNotice, OrderNotice.order_id == Order.id)
            .where(OrderNotice.kind == NoticeKind.REFUND_EMAIL.value, OrderNotice.detail == DUE)
            .order_by(OrderNotice.at).limit(limit)
        ).all()
    sent = []
    for row in rows:
        error_class = ErrorClass(row.last_error_class) if row.last_error_class else None
        email = refund_email(to=row.email, title=row.title, order_id=str(row.id), error_class=error_class)
        if _claim_refund_email(sessions, row.id) and _send(sessions, mailer, row.id, NoticeKind.REFUND_EMAIL,
                                                           email, release=_unclaim_refund_email):
            sent.append(row.id)
    return sent


def _refund_notice(order_id: uuid.UUID, detail: str) -> tuple[ColumnElement[bool], ...]:
    return (OrderNotice.order_id == order_id, OrderNotice.kind == NoticeKind.REFUND_EMAIL.value,
            OrderNotice.detail == detail)


def _claim_refund_email(sessions: sessionmaker[Session], order_id: uuid.UUID) -> bool:
    # Compare-and-set from "due": of two daemons sweeping at once, one sends.
    with transaction(sessions) as session:
        claimed = session.execute(update(OrderNotice).where(*_refund_notice(order_id, DUE)).values(detail=SENDING))
        return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]


def _unclaim_refund_email(session: Session, order_id: uuid.UUID) -> None:
    session.execute(update(OrderNotice).where(*_refund_notice(order_id, SENDING)).values(detail=DUE))


# -- sending a claimed notice ---------------------------------------------------------------------


def _send(
    sessions: sessionmaker[Session], mailer: Mailer, order_id: uuid.UUID, kind: NoticeKind, email: Email, *,
    release: Callable[[Session, uuid.UUID], None],
) -> bool:
    """Send a notice this daemon has claimed; on failure hand the claim back for the next sweep."""
    what = kind.value.replace("_", " ").capitalize()
    try:
        message_id = mailer.send(email)
    except StepError as error:
        log.warning("%s for order %s not sent (%s): %s; will try again", what, order_id,
                    error.error_class.value, error.message)
        with transaction(sessions) as session:
            release(session, order_id)
        return False
    with transaction(sessions) as session:
        session.execute(update(OrderNotice).where(OrderNotice.order_id == order_id, OrderNotice.kind == kind.value)
                        .values(detail=f"sent: message {message_id}"))
    log.info("%s sent for order %s (message %s)", what, order_id, message_id)
    return True
