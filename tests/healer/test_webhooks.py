"""`POST /stripe/webhook` over ASGI, with deliveries signed by the stripe library's own scheme (from
the fake Stripe server), the real pipeline, PostgreSQL (and SQLite) behind it."""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import stripe
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.models import Order, OrderStatus, transaction
from fulfilment.payments import StripePayments
from fulfilment.pipeline import Pipeline
from healer import db
from healer.config import Secret
from healer.db.models import OrphanPayment, WebhookEvent
from healer.health.metrics import Metrics
from healer.stripe.reconcile import ReconcileConfig, Reconciler
from healer.stripe.webhooks import webhook_router
from tests.fakes.shop_fixtures import Shop
from tests.fakes.stripe_server import FakeStripeServer, WebhookSignature


class Hook:
    """The webhook endpoint mounted on an app, and what it counted."""

    def __init__(self, sessions: sessionmaker[Session], pipeline: Pipeline, secret: str | None,
                 max_body_bytes: int = 256 * 1024) -> None:
        self.metrics = Metrics()
        app = FastAPI()
        app.include_router(webhook_router(sessions, pipeline, Secret(secret) if secret else None,
                                          self.metrics, max_body_bytes=max_body_bytes))
        self.client = TestClient(app)
        self.sessions = sessions

    def deliver(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        response = self.client.post("/stripe/webhook", content=body, headers=headers)
        return response.status_code, response.json()

    def counted(self, event_type: str, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "healer_webhook_events_total", {"type": event_type, "result": result})
        return value or 0.0

    def stored_events(self) -> list[WebhookEvent]:
        with self.sessions() as session:
            return list(session.scalars(select(WebhookEvent)))


@pytest.fixture
def hook(shop: Shop) -> Hook:
    return Hook(shop.sessions, shop.pipeline(), shop.stripe.webhook_secret)


def succeeded(shop: Shop, order_id: uuid.UUID, **changes: Any) -> tuple[bytes, dict[str, str]]:
    intent = shop.stripe.payment_intent(shop.order(order_id).stripe_payment_intent_id)
    intent.update(changes)
    return shop.stripe.webhook_payload("payment_intent.succeeded", intent)


def stripe_client(server: FakeStripeServer) -> stripe.StripeClient:
    return StripePayments(server.api_key, api_base=server.url, timeout=5).client


def refund(shop: Shop, order_id: uuid.UUID, amount: int | None = None) -> tuple[bytes, dict[str, str]]:
    """Refund the order's payment in Stripe and return the `charge.refunded` delivery it causes."""
    pi = shop.order(order_id).stripe_payment_intent_id
    params: dict[str, Any] = {"payment_intent": pi}
    if amount is not None:
        params["amount"] = amount
    stripe_client(shop.stripe).v1.refunds.create(params=params)
    event = shop.stripe.events("charge.refunded")[0]
    return shop.stripe.webhook_for(event)


def complete(shop: Shop, order_id: uuid.UUID) -> None:
    pipeline = shop.pipeline()
    assert pipeline.claim_order(order_id, "worker")
    pipeline.run(order_id, "worker")
    assert shop.order(order_id).status == OrderStatus.COMPLETED.value


def test_signed_success_marks_the_order_paid_and_queued_without_asking_stripe(shop: Shop, hook: Hook) -> None:
    order_id = shop.paid_order(queued=False)
    body, headers = succeeded(shop, order_id)
    requests_before = len(shop.stripe.requests)

    status, answer = hook.deliver(body, headers)

    assert (status, answer["result"]) == (200, "applied")
    assert len(shop.stripe.requests) == requests_before  # answered from the signed event alone
    order = shop.order(order_id)
    assert order.status == "paid" and order.payment_verified_at is not None
    assert order.next_attempt_at is not None and order.paid_at is not None
    assert hook.counted("payment_intent.succeeded", "applied") == 1
    # The worker goes on from `paid`: the payment is not verified a second time.
    complete(shop, order_id)
    steps = [(e.step, e.outcome) for e in shop.events(order_id)]
    assert steps.count(("verify_payment", "ok")) == 1
    assert shop.stripe.request_count(method="GET") == 0


def test_replayed_event_is_acknowledged_and_changes_nothing(shop: Shop, hook: Hook) -> None:
    order_id = shop.paid_order(queued=False)
    body, headers = succeeded(shop, order_id)
    hook.deliver(body, headers)
    story = len(shop.events(order_id))

    status, answer = hook.deliver(body, headers)

    assert (status, answer["result"]) == (200, "duplicate")
    assert len(shop.events(order_id)) == story
    assert [(e.type, e.result) for e in hook.stored_events()] == [("payment_intent.succeeded", "applied")]
    assert hook.counted("payment_intent.succeeded", "duplicate") == 1


def test_two_copies_delivered_at_once_are_applied_once(shop: Shop, hook: Hook) -> None:
    order_id = shop.paid_order(queued=False)
    body, headers = succeeded(shop, order_id)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: hook.deliver(body, headers), range(4)))

    assert sorted(a["result"] for _, a in answers) == ["applied", "duplicate", "duplicate", "duplicate"]
    assert [(e.step, e.outcome) for e in shop.events(order_id)] == [("verify_payment", "ok")]


@pytest.mark.parametrize("signature", [WebhookSignature.FORGED, WebhookSignature.STALE, None])
def test_forged_stale_or_unsigned_delivery_is_refused_and_changes_nothing(
    shop: Shop, hook: Hook, signature: WebhookSignature | None
) -> None:
    order_id = shop.paid_order(queued=False)
    intent = shop.stripe.payment_intent(shop.order(order_id).stripe_payment_intent_id)
    body, headers = shop.stripe.webhook_payload(
        "payment_intent.succeeded", intent, signature=signature or WebhookSignature.VALID)
    if signature is None:
        del headers["Stripe-Signature"]

    status, answer = hook.deliver(body, headers)

    assert status == 400 and "signature" in answer["detail"]
    assert shop.order(order_id).status == "pending_payment"
    assert shop.events(order_id) == [] and hook.stored_events() == []
    assert hook.counted("unknown", "bad_signature") == 1


def test_without_a_webhook_secret_deliveries_are_refused_with_503(shop: Shop) -> None:
    hook = Hook(shop.sessions, shop.pipeline(), None)
    order_id = shop.paid_order(queued=False)

    status, answer = hook.deliver(*succeeded(shop, order_id))

    assert status == 503 and "STRIPE_WEBHOOK_SECRET" in answer["detail"]
    assert shop.order(order_id).status == "pending_payment" and hook.stored_events() == []


def test_signed_body_that_is_not_an_event_is_400(shop: Shop, hook: Hook) -> None:
    for body in (b"{not json", b'{"id": "evt_1"}'):
        header = stripe.WebhookSignature.generate_signature_header(body.decode(), shop.stripe.webhook_secret)

        status, answer = hook.deliver(body, {"Stripe-Signature": header})

        assert status == 400 and "not a Stripe event" in answer["detail"]
    assert hook.counted("unknown", "malformed") == 2 and hook.stored_events() == []


def test_signed_event_whose_object_lacks_what_healer_reads_is_400_and_not_stored(shop: Shop, hook: Hook) -> None:
    order_id = shop.paid_order(queued=False)
    body, headers = shop.stripe.webhook_payload("payment_intent.succeeded", {"metadata": {"order_id": str(order_id)}})

    status, answer = hook.deliver(body, headers)

    assert status == 400 and "not understood" in answer["detail"]
    assert hook.stored_events() == [] and shop.order(order_id).status == "pending_payment"


def test_oversized_body_is_413(shop: Shop) -> None:
    hook = Hook(shop.sessions, shop.pipeline(), shop.stripe.webhook_secret, max_body_bytes=1024)
    order_id = shop.paid_order(queued=False)
    body, headers = succeeded(shop, order_id, description="x" * 2000)

    status, _ = hook.deliver(body, headers)

    assert status == 413 and shop.order(order_id).status == "pending_payment"
    assert hook.counted("unknown", "too_large") == 1


def test_success_with_another_amount_is_not_applied(shop: Shop, hook: Hook) -> None:
    order_id = shop.paid_order(queued=False, amount_cents=4900)

    status, answer = hook.deliver(*succeeded(shop, order_id, amount=100))

    assert (status, answer["result"]) == (200, "mismatch")
    assert shop.order(order_id).status == "pending_payment"
    [event] = shop.events(order_id)
    assert (event.outcome, event.error_class) == ("failed", "payment_unverified")
    assert "amount 100 != order amount 4900" in event.message


def test_failed_payment_attempt_is_recorded_in_the_story(shop: Shop, hook: Hook) -> None:
    order_id = shop.paid_order(queued=False, payment_status="processing")
    shop.stripe.set_status(shop.order(order_id).stripe_payment_intent_id, "requires_payment_method")
    event = shop.stripe.events("payment_intent.payment_failed")[0]

    status, answer = hook.deliver(*shop.stripe.webhook_for(event))

    assert (status, answer["result"]) == (200, "recorded")
    assert shop.order(order_id).status == "pending_payment"
    [line] = shop.events(order_id)
    assert line.step == "verify_payment" and "card_declined: Your card was declined." in line.message


def test_refund_of_an_unfinished_order_stops_it(shop: Shop, hook: Hook) -> None:
    order_id = shop.paid_order(queued=False)
    hook.deliver(*succeeded(shop, order_id))

    status, answer = hook.deliver(*refund(shop, order_id))

    assert (status, answer["result"]) == (200, "applied")
    order = shop.order(order_id)
    assert order.status == "refunded" and order.next_attempt_at is None
    assert shop.pipeline().claim("worker", 10) == []


def test_refund_of_a_completed_order_is_recorded_and_reported(
    shop: Shop, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    order_id = shop.paid_order()
    complete(shop, order_id)

    with caplog.at_level(logging.WARNING, logger="healer.stripe.webhooks"):
        status, answer = hook.deliver(*refund(shop, order_id))

    assert (status, answer["result"]) == (200, "refund_after_completion")
    assert shop.order(order_id).status == "refunded"
    assert shop.events(order_id)[-1].outcome == "refunded"
    assert f"Refund of completed order {order_id}" in caplog.text
    assert hook.counted("charge.refunded", "refund_after_completion") == 1


def test_refund_delivered_before_the_success_changes_nothing_more(shop: Shop, hook: Hook) -> None:
    order_id = shop.paid_order(queued=False)
    success = succeeded(shop, order_id)
    refunded = refund(shop, order_id)

    assert hook.deliver(*refunded)[1]["result"] == "applied"
    status, answer = hook.deliver(*success)

    assert (status, answer["result"]) == (200, "unchanged")
    assert shop.order(order_id).status == "refunded"
    assert [e.outcome for e in shop.events(order_id)] == ["refunded"]


def test_partial_refund_is_recorded_and_the_order_goes_on(shop: Shop, hook: Hook) -> None:
    order_id = shop.paid_order(queued=False, amount_cents=4900)
    hook.deliver(*succeeded(shop, order_id))

    status, answer = hook.deliver(*refund(shop, order_id, amount=900))

    assert (status, answer["result"]) == (200, "recorded")
    assert shop.order(order_id).status == "paid"
    assert "Partial refund in Stripe: 900 of 4900 eur" in shop.events(order_id)[-1].message


def test_event_for_no_known_order_is_acknowledged_and_stored(shop: Shop, hook: Hook) -> None:
    intent = shop.stripe.create_payment_intent(4900, "eur", {"order_id": str(uuid.uuid4())})

    status, answer = hook.deliver(*shop.stripe.webhook_payload("payment_intent.succeeded", intent))

    assert (status, answer["result"]) == (200, "unknown_order")
    assert [e.result for e in hook.stored_events()] == ["unknown_order"]


def test_other_event_types_are_acknowledged_and_ignored(shop: Shop, hook: Hook) -> None:
    order_id = shop.paid_order(queued=False)
    intent = shop.stripe.payment_intent(shop.order(order_id).stripe_payment_intent_id)

    status, answer = hook.deliver(*shop.stripe.webhook_payload("payment_intent.created", intent))

    assert (status, answer["result"]) == (200, "ignored")
    assert shop.events(order_id) == [] and hook.counted("other", "ignored") == 1


def test_webhooks_on_the_embedded_sqlite_database(
    shop: Shop, sqlite_engine: Engine, stripe_server: FakeStripeServer
) -> None:
    sessions = db.make_session_factory(sqlite_engine)
    order_id = uuid.uuid4()
    intent = stripe_server.create_payment_intent(1500, "usd", {"order_id": str(order_id)})
    with transaction(sessions) as session:
        session.add(Order(id=order_id, email="ada@example.com", stripe_payment_intent_id=intent["id"],
                          amount_cents=1500, currency="usd", template="a4-portrait"))
    hook = Hook(sessions, shop.pipeline(), stripe_server.webhook_secret)
    body, headers = stripe_server.webhook_payload("payment_intent.succeeded", intent)

    first, second = hook.deliver(body, headers), hook.deliver(body, headers)

    assert (first[1]["result"], second[1]["result"]) == ("applied", "duplicate")
    with sessions() as session:
        assert session.get(Order, order_id).status == "paid"  # type: ignore[union-attr]
    assert json.loads(body)["id"] == hook.stored_events()[0].id


def test_refund_of_a_second_payment_naming_the_order_leaves_the_order_paid(shop: Shop, hook: Hook) -> None:
    order_id = shop.paid_order(queued=False)
    hook.deliver(*succeeded(shop, order_id))
    duplicate = shop.stripe.create_payment_intent(4900, "eur", {"order_id": str(order_id)})  # paid twice
    stripe_client(shop.stripe).v1.refunds.create(params={"payment_intent": duplicate["id"]})

    status, answer = hook.deliver(*shop.stripe.webhook_for(shop.stripe.events("charge.refunded")[0]))

    assert (status, answer["result"]) == (200, "recorded")
    assert shop.order(order_id).status == "paid"
    assert f"Refund of another payment {duplicate['id']}" in shop.events(order_id)[-1].message


# -- refunds of orphan payments -------------------------------------------------------------------


def stored_orphan(shop: Shop, amount: int = 2500) -> str:
    """A paid PaymentIntent no order claims, stored as an orphan by a real reconciliation run."""
    intent = shop.stripe.create_payment_intent(amount, "eur", {"order_id": str(uuid.uuid4())})
    Reconciler(shop.sessions, stripe_client(shop.stripe), shop.pipeline(), Metrics(),
               ReconcileConfig(sla_seconds=600)).run()
    assert orphan(shop, intent["id"]).resolved_at is None
    return str(intent["id"])


def orphan(shop: Shop, payment_intent_id: str) -> OrphanPayment:
    with shop.sessions() as session:
        row = session.get(OrphanPayment, payment_intent_id)
        assert row is not None
        return row


def refund_payment(shop: Shop, payment_intent_id: str, amount: int | None = None) -> tuple[bytes, dict[str, str]]:
    params: dict[str, Any] = {"payment_intent": payment_intent_id}
    if amount is not None:
        params["amount"] = amount
    stripe_client(shop.stripe).v1.refunds.create(params=params)
    return shop.stripe.webhook_for(shop.stripe.events("charge.refunded")[0])


def unresolved_gauge(hook: Hook) -> float | None:
    return hook.metrics.registry.get_sample_value("healer_orphan_payments")


@pytest.fixture
def scraped_hook(shop: Shop) -> Hook:
    """The endpoint, with the orphan gauge read at every scrape as the daemon reads it."""
    hook = Hook(shop.sessions, shop.pipeline(), shop.stripe.webhook_secret)
    hook.metrics.watch_orders(shop.sessions, sla_seconds=600, ttl_seconds=0)
    return hook


def test_refund_of_an_orphan_payment_resolves_it_and_a_redelivery_changes_nothing(
    shop: Shop, scraped_hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    pi = stored_orphan(shop)
    assert unresolved_gauge(scraped_hook) == 1
    body, headers = refund_payment(shop, pi)
    event_id = json.loads(body)["id"]

    with caplog.at_level(logging.INFO, logger="healer.stripe.webhooks"):
        status, answer = scraped_hook.deliver(body, headers)
    resolved = orphan(shop, pi)
    again = scraped_hook.deliver(body, headers)

    assert (status, answer["result"]) == (200, "orphan_resolved")
    assert resolved.resolved_at is not None and resolved.resolution == f"refunded in Stripe (event {event_id})"
    assert unresolved_gauge(scraped_hook) == 0
    assert [(e.id, e.result) for e in scraped_hook.stored_events()] == [(event_id, "orphan_resolved")]
    [line] = [r.getMessage() for r in caplog.records if "resolved" in r.getMessage()]
    assert line.startswith(f"Orphan payment {pi} resolved: refunded in Stripe") and event_id in line
    assert shop.stripe.api_key not in caplog.text and shop.stripe.webhook_secret not in caplog.text
    assert again == (200, {"received": True, "result": "duplicate"})
    assert orphan(shop, pi).resolved_at == resolved.resolved_at
    assert scraped_hook.counted("charge.refunded", "orphan_resolved") == 1


def test_another_refund_event_for_a_resolved_orphan_changes_nothing(shop: Shop, scraped_hook: Hook) -> None:
    pi = stored_orphan(shop)
    body, headers = refund_payment(shop, pi)
    scraped_hook.deliver(body, headers)
    first = orphan(shop, pi)
    charge = json.loads(body)["data"]["object"]

    # Same refund, another event id (Stripe may emit more than one event about a charge).
    status, answer = scraped_hook.deliver(*shop.stripe.webhook_payload("charge.refunded", charge))

    assert (status, answer["result"]) == (200, "unchanged")
    assert (orphan(shop, pi).resolved_at, orphan(shop, pi).resolution) == (first.resolved_at, first.resolution)


def test_refund_of_a_payment_that_is_no_orphan_and_no_order_changes_nothing(
    shop: Shop, scraped_hook: Hook
) -> None:
    pi = stored_orphan(shop)
    stranger = shop.stripe.create_payment_intent(700, "usd", {"order_id": str(uuid.uuid4())})  # never stored

    status, answer = scraped_hook.deliver(*refund_payment(shop, stranger["id"]))

    assert (status, answer["result"]) == (200, "unknown_order")
    assert orphan(shop, pi).resolved_at is None and unresolved_gauge(scraped_hook) == 1
    with shop.sessions() as session:
        assert session.get(OrphanPayment, stranger["id"]) is None


def test_partial_refund_of_an_orphan_payment_leaves_it_unresolved(shop: Shop, scraped_hook: Hook) -> None:
    pi = stored_orphan(shop, amount=2500)

    status, answer = scraped_hook.deliver(*refund_payment(shop, pi, amount=500))

    assert (status, answer["result"]) == (200, "unchanged")
    assert orphan(shop, pi).resolved_at is None and unresolved_gauge(scraped_hook) == 1


def test_refund_of_a_second_payment_resolves_its_orphan_and_notes_the_order(shop: Shop, hook: Hook) -> None:
    order_id = shop.paid_order(queued=False)
    hook.deliver(*succeeded(shop, order_id))
    duplicate = shop.stripe.create_payment_intent(4900, "eur", {"order_id": str(order_id)})  # paid twice
    Reconciler(shop.sessions, stripe_client(shop.stripe), shop.pipeline(), Metrics(),
               ReconcileConfig(sla_seconds=600)).run()
    assert orphan(shop, duplicate["id"]).resolved_at is None

    status, answer = hook.deliver(*refund_payment(shop, duplicate["id"]))

    assert (status, answer["result"]) == (200, "recorded")  # the order's story says so too
    assert orphan(shop, duplicate["id"]).resolved_at is not None
    assert shop.order(order_id).status == "paid"


def test_refund_of_an_orphan_on_the_embedded_sqlite_database(
    shop: Shop, sqlite_engine: Engine
) -> None:
    lite = dataclasses.replace(shop, sessions=db.make_session_factory(sqlite_engine))
    pi = stored_orphan(lite)
    hook = Hook(lite.sessions, lite.pipeline(), lite.stripe.webhook_secret)
    hook.metrics.watch_orders(lite.sessions, sla_seconds=600, ttl_seconds=0)

    assert hook.deliver(*refund_payment(lite, pi))[1]["result"] == "orphan_resolved"
    assert orphan(lite, pi).resolved_at is not None and unresolved_gauge(hook) == 0


# -- issue 20: no delivery, signed or not, gets a 500 ----------------------------------------------


def test_a_non_ascii_signature_is_a_bad_signature_not_a_500(shop: Shop, hook: Hook) -> None:
    order_id = shop.paid_order(queued=False)
    body, _ = succeeded(shop, order_id)

    # What `curl -H $'Stripe-Signature: t=1,v1=\xc3\xa9'` sends: the stripe library's own
    # comparison raised TypeError on it.
    response = hook.client.post("/stripe/webhook", content=body,
                                headers={"Stripe-Signature": b"t=1,v1=\xc3\xa9"})

    assert response.status_code == 400 and "signature" in response.json()["detail"]
    assert hook.counted("unknown", "bad_signature") == 1
    assert hook.stored_events() == [] and shop.events(order_id) == []


@pytest.mark.parametrize("last_payment_error", [42, "card_declined", ["card_declined"], True])
def test_a_failed_payment_whose_error_is_not_an_object_is_400_naming_the_field(
    shop: Shop, hook: Hook, last_payment_error: object
) -> None:
    order_id = shop.paid_order(queued=False)
    intent = shop.stripe.payment_intent(shop.order(order_id).stripe_payment_intent_id)
    intent["last_payment_error"] = last_payment_error
    body, headers = shop.stripe.webhook_payload("payment_intent.payment_failed", intent)

    first, again = hook.deliver(body, headers), hook.deliver(body, headers)  # Stripe redelivers

    assert first == again == (400, {"detail": first[1]["detail"]})
    assert "data.object.last_payment_error" in first[1]["detail"]
    assert hook.counted("payment_intent.payment_failed", "malformed") == 2  # each delivery, once
    assert hook.stored_events() == [] and shop.events(order_id) == []


@pytest.mark.parametrize(("field", "value"), [
    ("amount", "4900"), ("amount", 4900.0), ("currency", 978), ("metadata", {"order_id": 7}),
    ("id", "pi_\x00"),
])
def test_a_succeeded_event_with_a_field_of_the_wrong_type_is_400_naming_it(
    shop: Shop, hook: Hook, field: str, value: object
) -> None:
    order_id = shop.paid_order(queued=False)

    status, answer = hook.deliver(*succeeded(shop, order_id, **{field: value}))

    assert status == 400 and f"data.object.{field}" in answer["detail"]
    assert hook.counted("payment_intent.succeeded", "malformed") == 1
    assert shop.order(order_id).status == "pending_payment" and hook.stored_events() == []


def test_a_refund_whose_refunded_flag_is_not_a_boolean_is_400(shop: Shop, hook: Hook) -> None:
    order_id = shop.paid_order(queued=False)
    hook.deliver(*succeeded(shop, order_id))
    body, _ = refund(shop, order_id)
    event = json.loads(body)
    event["data"]["object"]["refunded"] = "yes"

    status, answer = hook.deliver(*shop.stripe.webhook_for(event))

    assert status == 400 and "data.object.refunded" in answer["detail"]
    assert shop.order(order_id).status == "paid"
