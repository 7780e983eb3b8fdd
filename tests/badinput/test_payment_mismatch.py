"""A succeeded PaymentIntent whose `metadata.order_id` names another order does not pay for this one.

The verify step refuses it (`payment_unverified`, pinned in tests/fulfilment). The two other ways a
payment becomes known, a signed webhook and reconciliation, must refuse it alike: "nothing is
fulfilled for an unverified payment", whichever way the news arrives.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from tests.badinput.helpers import Seeded, post, signed
from tests.e2e.daemon import RunningDaemon
from tests.fakes.shop_fixtures import Shop

pytestmark = pytest.mark.timeout(120)


def order_paid_for_another(shop: Shop) -> uuid.UUID:
    """An unpaid order holding a succeeded intent that was taken for some other order."""
    order_id = shop.paid_order(queued=False)
    intent = shop.stripe.create_payment_intent(4900, "eur", {"order_id": str(uuid.uuid4())})
    with shop.sessions() as session, session.begin():
        session.get_one(type(shop.order(order_id)), order_id).stripe_payment_intent_id = intent["id"]
    return order_id


def test_a_webhook_whose_intent_names_another_order_is_not_applied(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded
) -> None:
    order_id = order_paid_for_another(shop)
    intent = shop.stripe.payment_intent(shop.order(order_id).stripe_payment_intent_id or "")
    body, _ = shop.stripe.webhook_payload("payment_intent.succeeded", intent)

    status = post(daemon, "/stripe/webhook", body, signed(body, shop.stripe.webhook_secret))

    assert status == 200
    order = shop.order(order_id)
    assert (order.status, order.payment_verified_at, order.next_attempt_at) == ("pending_payment", None, None)


def test_reconciliation_does_not_mark_paid_an_order_whose_intent_names_another_order(
    shop: Shop, shop_env: dict[str, str]
) -> None:
    order_id = order_paid_for_another(shop)

    result = subprocess.run([sys.executable, "-m", "healer", "reconcile"], env=shop_env,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
    order = shop.order(order_id)
    assert (order.status, order.payment_verified_at, order.next_attempt_at) == ("pending_payment", None, None), (
        json.dumps([e.message for e in shop.events(order_id)]))
