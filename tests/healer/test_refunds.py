"""Refunds of orders that can never complete, after the grace period: made once with Stripe
(the fake Stripe server, through the real library), always recorded whatever shape Stripe's answer
has, the order's lease released, once across daemons, and told to the customer in one email (the
SendGrid server), against PostgreSQL and the real pipeline."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from fulfilment.models import Outcome, transaction, utcnow
from fulfilment.payments import StripePayments
from healer.jobs.refunds import RefundReceipt, refund_key
from tests.eventually import eventually
from tests.fakes.sendgrid_server import SentMessage
from tests.fakes.shop_fixtures import Shop
from tests.healer.test_stuck import paid, sweeper

GAVE_UP_LONG_AGO = 2 * 24 * 60  # minutes: past the default grace of a day


def given_up(shop: Shop, minutes_ago: float = GAVE_UP_LONG_AGO, **columns: object) -> uuid.UUID:
    columns.setdefault("email", "ada@example.com")
    return paid(shop, minutes_ago, status="needs_attention", last_error_class="s3_missing_file", **columns)


def refund_emails(shop: Shop) -> list[SentMessage]:
    return [m for m in shop.sendgrid.messages if "refunded" in m.subject]


def test_refund_after_final_failure_is_off_by_default(shop: Shop) -> None:
    paid(shop, 3 * 24 * 60, status="needs_attention")

    sweeper(shop)()

    assert shop.stripe.refunds() == []


def test_refund_after_final_failure_refunds_once_with_an_idempotency_key(shop: Shop) -> None:
    order_id = paid(shop, 2 * 24 * 60, status="needs_attention")
    within_grace = paid(shop, 60, status="needs_attention")
    never_verified = shop.paid_order(queued=False, status="needs_attention",
                                     paid_at=utcnow() - timedelta(days=2))
    sweep = sweeper(shop, refund_on_failure=True)

    sweep()
    sweep()

    pi = shop.order(order_id).stripe_payment_intent_id
    [refund] = shop.stripe.refunds()
    assert refund["payment_intent"] == pi and refund["metadata"] == {"order_id": str(order_id)}
    [post] = [r for r in shop.stripe.requests if r.path == "/v1/refunds"]
    assert post.idempotency_key == refund_key(order_id)
    assert shop.order(order_id).status == "refunded"
    assert "Refunded after final failure" in shop.events(order_id)[-1].message
    assert shop.order(within_grace).status == shop.order(never_verified).status == "needs_attention"


def test_refund_retried_after_a_crash_is_not_made_twice(shop: Shop) -> None:
    order_id = paid(shop, 2 * 24 * 60, status="needs_attention")
    pi = shop.order(order_id).stripe_payment_intent_id
    client = StripePayments(shop.stripe.api_key, api_base=shop.stripe.url, timeout=5).client
    # A previous sweep refunded in Stripe, then died before recording it on the order.
    client.v1.refunds.create(
        params={"payment_intent": pi, "reason": "requested_by_customer",
                "metadata": {"order_id": str(order_id)}},
        options={"idempotency_key": refund_key(order_id)},
    )

    sweeper(shop, refund_on_failure=True)()

    assert len(shop.stripe.refunds()) == 1 and shop.order(order_id).status == "refunded"


def test_refund_when_stripe_refunded_it_already_elsewhere(shop: Shop) -> None:
    order_id = paid(shop, 2 * 24 * 60, status="needs_attention")
    client = StripePayments(shop.stripe.api_key, api_base=shop.stripe.url, timeout=5).client
    client.v1.refunds.create(params={"payment_intent": shop.order(order_id).stripe_payment_intent_id})

    sweeper(shop, refund_on_failure=True)()

    assert len(shop.stripe.refunds()) == 1 and shop.order(order_id).status == "refunded"
    assert "refunded already in Stripe" in shop.events(order_id)[-1].message


def test_the_grace_period_is_the_policys(shop: Shop) -> None:
    two_hours = given_up(shop, 120)

    sweeper(shop, refund_on_failure=True)()  # the default grace: a day
    assert shop.order(two_hours).status == "needs_attention" and shop.stripe.refunds() == []

    sweeper(shop, refund_on_failure=True, refund_grace_seconds=3600)()
    assert shop.order(two_hours).status == "refunded"


def test_an_order_whose_download_email_bounced_is_never_refunded(shop: Shop) -> None:
    bounced = paid(shop, 3 * 24 * 60, status="needs_attention", last_error_class="email_undelivered",
                   last_error_step="email")

    sweeper(shop, refund_on_failure=True)()

    assert shop.order(bounced).status == "needs_attention" and shop.stripe.refunds() == []


def test_a_refund_whose_answer_lacks_optional_fields_is_recorded_released_and_told(shop: Shop) -> None:
    order_id = given_up(shop, title="Our song")
    shop.stripe.omit_fields("/v1/refunds", "amount", "currency", "status", "charge", "metadata", "reason")

    sweeper(shop, refund_on_failure=True)()

    order = shop.order(order_id)
    [refund] = shop.stripe.refunds()
    assert (order.status, order.lease_owner, order.lease_expires_at) == ("refunded", None, None)
    assert shop.events(order_id)[-1].message == f"Refunded after final failure: {refund['id']}"
    [email] = refund_emails(shop)
    assert email.to == ("ada@example.com",) and email.subject == "Your poster order has been refunded"
    text = " ".join((email.text or "").split())
    assert "\u201cOur song\u201d" in text and "We have refunded your payment in full" in text
    assert "the photo or recording you uploaded could no longer be found" in text  # why, in their words
    assert str(order_id) in text and "s3_missing_file" not in text and "download" not in text


def test_an_answer_without_even_an_id_is_still_a_refund_recorded() -> None:
    assert str(RefundReceipt.parse(object())) == "refund (no id in Stripe answer)"
    assert str(RefundReceipt.parse({"id": "re_1", "amount": "lots", "currency": "eur"})) == "re_1 (eur)"
    assert RefundReceipt.parse({"status": "pending"}).status == "pending"


def test_daemons_sweeping_at_once_refund_record_and_tell_each_order_once(shop: Shop) -> None:
    orders = [given_up(shop, GAVE_UP_LONG_AGO + i, email=f"c{i}@example.com") for i in range(4)]
    sweeps = [sweeper(shop, refund_on_failure=True) for _ in range(3)]  # three daemons

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda sweep: sweep(), sweeps))
    for sweep in sweeps:
        sweep()

    assert shop.stripe.request_count("/v1/refunds") == 4 and len(shop.stripe.refunds()) == 4
    assert sorted(m.to[0] for m in refund_emails(shop)) == [f"c{i}@example.com" for i in range(4)]
    for order_id in orders:
        lines = [e for e in shop.events(order_id) if e.outcome == Outcome.REFUNDED]
        assert len(lines) == 1 and shop.order(order_id).lease_owner is None


def test_a_refund_the_webhook_recorded_first_joins_the_story_and_is_told_once(shop: Shop) -> None:
    order_id = given_up(shop)
    shop.stripe.set_delay(1.0)  # Stripe's answer is slow; its charge.refunded webhook lands first
    sweep = threading.Thread(target=sweeper(shop, refund_on_failure=True))
    sweep.start()
    eventually(lambda: shop.stripe.request_count("/v1/refunds") == 1, what="the refund request")
    with transaction(shop.sessions) as session:
        shop.pipeline().mark_refunded(session, order_id, "Refunded in Stripe: 4900 of 4900 eur (webhook)")
    sweep.join(timeout=30)

    lines = [e.message for e in shop.events(order_id) if e.outcome == Outcome.REFUNDED]
    assert lines[0].startswith("Refunded in Stripe") and lines[1].startswith("Refunded after final failure: re_")
    assert len(refund_emails(shop)) == 1 and shop.order(order_id).status == "refunded"


def test_a_refund_email_that_fails_to_send_is_sent_on_a_later_sweep_once(shop: Shop) -> None:
    order_id = given_up(shop)
    shop.sendgrid.fail_next(500, count=1)
    sweep = sweeper(shop, refund_on_failure=True)

    sweep()
    assert shop.order(order_id).status == "refunded" and refund_emails(shop) == []
    sweep()
    sweep()

    assert len(refund_emails(shop)) == 1 and len(shop.stripe.refunds()) == 1


@pytest.mark.parametrize("refunds", [True, False])
def test_a_delay_email_to_an_order_that_gave_up_promises_no_download(shop: Shop, refunds: bool) -> None:
    given_up(shop, 120)
    active = paid(shop, 120, status="files_migrated", email="active@example.com")

    sweeper(shop, delay_email_after_seconds=3600, refund_on_failure=refunds)()

    by_address = {m.to[0]: m for m in shop.sendgrid.messages}
    gave_up, waiting = by_address["ada@example.com"], by_address["active@example.com"]
    assert "download" not in (gave_up.text or "") + (gave_up.html or "")
    assert gave_up.subject == "A problem with your poster order"
    assert ("refund your payment in full" in " ".join((gave_up.text or "").split())) is refunds
    assert "download link" in (waiting.text or "") and str(active) in (waiting.text or "")
    assert shop.stripe.refunds() == []  # within the grace: nothing refunded yet
