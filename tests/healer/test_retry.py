"""An operator's retry (healer.orders.retry), through `POST /api/orders/{id}/retry` on the real
operator app, with the real pipeline, PostgreSQL and the fake Stripe server behind it: it re-queues
an order where it stopped, refuses (409) an order with nothing to retry without touching it, and
is idempotent while the order is queued. `healer orders retry` shares it (tests/healer/test_cli_orders.py)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fulfilment.models import Order, OrderStatus, utcnow
from tests.fakes.http_fixtures import operator_client
from tests.fakes.shop_fixtures import Shop

ADMIN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
ROW = ("status", "attempts", "next_attempt_at", "lease_owner", "last_error", "paid_at", "completed_at")


def row(order: Order) -> tuple[Any, ...]:
    return tuple(getattr(order, column) for column in ROW)


@pytest.fixture
def admin(shop: Shop) -> TestClient:
    return operator_client(shop.sessions, shop.pipeline(), admin=ADMIN)


def retry(client: TestClient, order_id: uuid.UUID) -> tuple[int, dict[str, Any]]:
    response = client.post(f"/api/orders/{order_id}/retry", headers=AUTH)
    return response.status_code, response.json()


def completed(shop: Shop) -> uuid.UUID:
    order_id = shop.paid_order()
    pipeline = shop.pipeline()
    assert pipeline.claim_order(order_id, "w")
    pipeline.run(order_id, "w")
    assert shop.order(order_id).status is OrderStatus.COMPLETED
    return order_id


def test_retry_of_an_unpaid_order_is_409_and_changes_nothing_nor_asks_stripe(shop: Shop, admin: TestClient) -> None:
    order_id = shop.paid_order(payment_status="requires_payment_method", queued=False)
    before, stripe_calls = row(shop.order(order_id)), len(shop.stripe.requests)

    answers = [retry(admin, order_id) for _ in range(3)]

    assert {status for status, _ in answers} == {409}
    assert "payment has not succeeded" in answers[0][1]["detail"]
    assert row(shop.order(order_id)) == before and shop.events(order_id) == []
    assert len(shop.stripe.requests) == stripe_calls
    assert shop.pipeline().claim("worker", 10) == []  # nothing was queued for the worker to verify


@pytest.mark.parametrize("final", ["completed", "refunded"])
def test_retry_of_a_completed_or_refunded_order_is_409_nothing_to_do(
    shop: Shop, admin: TestClient, final: str
) -> None:
    order_id = completed(shop) if final == "completed" else shop.paid_order(status="refunded", queued=False)
    before, story = row(shop.order(order_id)), len(shop.events(order_id))

    status, answer = retry(admin, order_id)

    assert status == 409 and answer["detail"].startswith("nothing to do")
    assert row(shop.order(order_id)) == before and len(shop.events(order_id)) == story


def test_repeated_retries_requeue_once_while_the_order_is_queued(shop: Shop, admin: TestClient) -> None:
    order_id = shop.paid_order(status="needs_attention", last_error_step="render", queued=False)

    answers = [retry(admin, order_id) for _ in range(5)]

    assert answers == [(202, {"order_id": str(order_id), "status": "files_migrated"})] * 5
    assert [e.outcome for e in shop.events(order_id)] == ["requeued"]


def test_concurrent_retries_requeue_once(shop: Shop, admin: TestClient) -> None:
    order_id = shop.paid_order(status="needs_attention", last_error_step="email", queued=False)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: retry(admin, order_id)[0], range(8)))

    assert answers == [202] * 8
    assert [e.outcome for e in shop.events(order_id)] == ["requeued"]


def test_retry_cuts_a_backoff_short_once(shop: Shop, admin: TestClient) -> None:
    order_id = shop.paid_order(status="paid", attempts=3, next_attempt_at=utcnow() + timedelta(minutes=20))

    first, second = retry(admin, order_id), retry(admin, order_id)

    assert first == second == (202, {"order_id": str(order_id), "status": "paid"})
    order = shop.order(order_id)
    assert order.attempts == 0 and order.next_attempt_at is not None and order.next_attempt_at <= utcnow()
    assert [e.outcome for e in shop.events(order_id)] == ["requeued"]


def test_retry_of_an_order_needing_attention_for_its_payment_verifies_it_once(
    shop: Shop, admin: TestClient
) -> None:
    order_id = shop.paid_order(status="needs_attention", last_error_step="verify_payment",
                               last_error_class="payment_unverified", queued=False)

    first, again = retry(admin, order_id), retry(admin, order_id)

    assert first == (202, {"order_id": str(order_id), "status": "pending_payment"})
    assert again[0] == 409  # queued for its one verification: nothing more to do
    assert [e.outcome for e in shop.events(order_id)] == ["requeued"]


def test_retry_of_an_unknown_order_is_404(admin: TestClient) -> None:
    assert retry(admin, uuid.uuid4())[0] == 404


def test_the_api_takes_a_unique_id_prefix_as_the_cli_does(shop: Shop, admin: TestClient) -> None:
    first = shop.paid_order(order_id=uuid.UUID("feedbeef-0000-4000-8000-100000000001"), status="needs_attention",
                            last_error_step="email", queued=False)
    shop.paid_order(order_id=uuid.UUID("feedbeef-0000-4000-8000-200000000002"))

    shown = admin.get("/api/orders/feedbeef-0000-4000-8000-1")
    ambiguous = admin.get("/api/orders/feedbeef")
    unknown = admin.get("/api/orders/0123abcd")
    malformed = admin.get("/api/orders/xyz!")
    retried = admin.post("/api/orders/feedbeef00004000800010/retry", headers=AUTH)

    assert shown.status_code == 200 and shown.json()["id"] == str(first)
    assert ambiguous.status_code == 409 and "more than one order" in ambiguous.json()["detail"]
    assert unknown.status_code == 404 and malformed.status_code == 422
    assert retried.status_code == 202 and retried.json()["order_id"] == str(first)
