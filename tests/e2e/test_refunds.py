"""`healer run` refunds an order that can never complete once HEALER_REFUND_GRACE_SECONDS have
passed since it gave up, records it although Stripe's answer lacks optional fields, and tells the
customer once, against PostgreSQL, the Stripe server and the SendGrid server."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from fulfilment.models import utcnow
from tests.e2e.daemon import healer_env, running_daemon
from tests.eventually import eventually
from tests.fakes.shop_fixtures import Shop


def test_the_daemon_refunds_after_the_configured_grace_and_tells_the_customer_once(
    shop: Shop, shop_env: dict[str, str], tmp_path: Path
) -> None:
    def given_up(minutes_ago: int, email: str) -> uuid.UUID:
        at = utcnow() - timedelta(minutes=minutes_ago)
        return shop.paid_order(status="needs_attention", paid_at=at, payment_verified_at=at, queued=False,
                               email=email, last_error_class="bad_input")

    past_grace, within_grace = given_up(120, "late@example.com"), given_up(30, "recent@example.com")
    shop.stripe.omit_fields("/v1/refunds", "amount", "currency", "status")
    env = healer_env(shop_env, HEALER_REFUND_ON_FAILURE="on", HEALER_REFUND_GRACE_SECONDS="3600",
                     HEALER_ORDER_SLA_SECONDS="2")  # the sweep every second

    with running_daemon(env, tmp_path / "daemon.log") as daemon:
        eventually(lambda: shop.emails_to("late@example.com"), timeout=60, what="the refund email")
        eventually(lambda: daemon.log().count("Refund email sent for order") >= 1, what="its log line")
        refunded_log = daemon.log()

    order = shop.order(past_grace)
    [refund] = shop.stripe.refunds()
    assert (order.status, order.lease_owner) == ("refunded", None)
    assert shop.events(past_grace)[-1].message == f"Refunded after final failure: {refund['id']}"
    [email] = shop.emails_to("late@example.com")
    assert email.subject == "Your poster order has been refunded"
    assert "could not be used to make a poster" in " ".join((email.text or "").split())
    assert shop.order(within_grace).status == "needs_attention" and shop.emails_to("recent@example.com") == []
    assert "Traceback" not in refunded_log
