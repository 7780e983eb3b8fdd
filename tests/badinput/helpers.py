"""Helpers for the bad-input tests: what a request may change, and how to reach a running daemon."""

from __future__ import annotations

import http.client
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import stripe
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.models import Order, OrderEvent
from healer.db.models import WebhookEvent
from tests.e2e.daemon import RunningDaemon
from tests.fakes.shop_fixtures import Shop

ADMIN = "badinput-admin-token-0123456789abcdef"


@dataclass(frozen=True)
class Seeded:
    completed: uuid.UUID
    needs_attention: uuid.UUID
    unpaid: uuid.UUID

    @property
    def all(self) -> tuple[uuid.UUID, ...]:
        return (self.completed, self.needs_attention, self.unpaid)


Snapshot = tuple[Any, ...]


def snapshot(sessions: sessionmaker[Session]) -> Snapshot:
    """Every order's state and the number of rows any request could add."""
    with sessions() as session:
        orders = sorted(tuple(row) for row in session.execute(select(
            Order.id, Order.status, Order.attempts, Order.next_attempt_at, Order.lease_owner,
            Order.last_error, Order.download_token, Order.paid_at, Order.completed_at,
            Order.email_message_id, Order.stripe_payment_intent_id)))
        events = session.scalar(select(func.count()).select_from(OrderEvent))
        webhooks = session.scalar(select(func.count()).select_from(WebhookEvent))
    return tuple(orders), events, webhooks


def complete(shop: Shop, order_id: uuid.UUID) -> None:
    pipeline = shop.pipeline(max_attempts=1)
    assert pipeline.claim_order(order_id, "seed")
    pipeline.run(order_id, "seed")


def still(sessions: sessionmaker[Session], seconds: float = 1.0) -> bool:
    first = snapshot(sessions)
    time.sleep(seconds)  # deliberate: nothing may change while this much time passes
    return snapshot(sessions) == first


def post(daemon: RunningDaemon, path: str, body: bytes, headers: dict[str, str]) -> int:
    parts = urlsplit(daemon.base_url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=15)
    try:
        connection.request("POST", path, body=body, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def signed(body: bytes, secret: str) -> dict[str, str]:
    """Headers of a delivery signed as Stripe signs it (by the stripe library itself)."""
    header = stripe.WebhookSignature.generate_signature_header(body.decode("utf-8", "replace"), secret,
                                                               timestamp=int(time.time()))
    return {"Content-Type": "application/json", "Stripe-Signature": header}
