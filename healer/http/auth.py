"""Who is asking: the order's customer (a session token that has not expired) or an operator
(the admin bearer token). Tokens are compared in constant time, as bytes."""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta

from fulfilment.models import Order, utcnow


def same_secret(given: str, expected: str) -> bool:
    # compare_digest refuses non-ASCII str: a header of any bytes must be a wrong token, not a 500.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


def bearer_token(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


class SessionDenied(Exception):
    """The customer may not act on this order; the message is safe to show them."""


def check_session(order: Order, token: str | None, lifetime: timedelta, now: datetime | None = None) -> None:
    """The shop's session token lives `SESSION_EXPIRATION` from the order's creation.

    An expired session changes nothing for the order itself: a paid order still completes through
    its webhook or reconciliation, and the email carries its own link.
    """
    if not token or not order.session_token or not same_secret(token, order.session_token):
        raise SessionDenied("wrong or missing X-Session-Token for this order")
    if (now or utcnow()) >= order.created_at + lifetime:
        raise SessionDenied("session expired: your download link is in your email")
