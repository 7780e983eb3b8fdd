"""What customers reach: a view without internals, sessions that expire, download links of
refunded orders gone, at most one Stripe call per order however often `/complete` is called, and a
rate limit per client that answers 429 with `Retry-After`, never a 5xx."""

from __future__ import annotations

import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from fastapi.testclient import TestClient

from fulfilment.models import utcnow
from fulfilment.payments import StripePayments
from tests.fakes.http_fixtures import public_client
from tests.fakes.shop_fixtures import Shop

CUSTOMER_FIELDS = {"order_id", "status", "message", "created_at", "paid_at", "completed_at", "download_url"}


def token(order_id: uuid.UUID) -> dict[str, str]:
    return {"X-Session-Token": f"sess-{order_id.hex}"}


def test_the_customers_view_shows_no_internals(shop: Shop) -> None:
    order_id = shop.paid_order(
        status="needs_attention", last_error_step="render", last_error_class="asset_missing",
        last_error="font file /app/fonts/Inter.ttf is missing (s3://shop-uploads/orders/x)",
        lease_owner="web-3.internal:4242:abcd", final_pdf_key="pdfs/final_x.pdf",
    )
    client = public_client(shop.sessions, shop.pipeline(), shop.store)

    response = client.get(f"/api/orders/{order_id}", headers=token(order_id))

    body = response.json()
    assert response.status_code == 200 and set(body) == CUSTOMER_FIELDS
    assert body["status"] == "needs_attention" and "taking longer than usual" in body["message"]
    for internal in ("font", "/app", "s3://", "tmp/", "pdfs/", "web-3", "asset_missing", "render", "attempt"):
        assert internal not in response.text, internal


def test_a_completed_orders_view_carries_its_download_link(shop: Shop) -> None:
    link = secrets.token_urlsafe(32)
    order_id = shop.paid_order(status="completed", download_token=link, completed_at=utcnow())
    client = public_client(shop.sessions, shop.pipeline(), shop.store)

    body = client.get(f"/api/orders/{order_id}", headers=token(order_id)).json()

    assert body["download_url"] == f"https://shop.example/download/{link}"


def test_an_expired_session_is_403_and_changes_nothing(shop: Shop) -> None:
    order_id = shop.paid_order(queued=False, created_at=utcnow() - timedelta(hours=25))
    client = public_client(shop.sessions, shop.pipeline(), shop.store, session_lifetime=timedelta(hours=24))

    completed = client.post(f"/api/orders/{order_id}/complete", headers=token(order_id))
    viewed = client.get(f"/api/orders/{order_id}", headers=token(order_id))

    assert (completed.status_code, viewed.status_code) == (403, 403)
    assert completed.json()["detail"].startswith("session expired")
    order = shop.order(order_id)
    assert (order.status, order.next_attempt_at, order.payment_verified_at) == ("pending_payment", None, None)
    assert shop.stripe.request_count(method="GET") == 0


def test_a_refunded_orders_download_link_is_gone(shop: Shop) -> None:
    link = secrets.token_urlsafe(32)
    order_id = shop.paid_order(status="refunded", download_token=link, final_pdf_key="pdfs/final_x.pdf")
    client = public_client(shop.sessions, shop.pipeline(), shop.store)

    response = client.get(f"/download/{link}")

    assert response.status_code == 410 and "refunded" in response.json()["detail"]
    assert "location" not in response.headers
    assert shop.order(order_id).status == "refunded"


def test_sixty_completions_of_an_unpaid_order_make_one_stripe_call(shop: Shop) -> None:
    order_id = shop.paid_order(payment_status="requires_payment_method", queued=False)
    payments = StripePayments(shop.stripe.api_key, api_base=shop.stripe.url, timeout=5)  # as the daemon has it
    shop.stripe.set_delay(0.5)  # a slow Stripe: the calls overlap
    client = public_client(shop.sessions, shop.pipeline(payments=payments), shop.store)
    before = shop.stripe.request_count(method="GET")

    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(lambda _: client.post(f"/api/orders/{order_id}/complete",
                                                    headers=token(order_id)).status_code, range(60)))

    assert codes == [409] * 60
    assert shop.stripe.request_count(method="GET") - before == 1


def test_a_client_over_the_rate_limit_gets_429_with_retry_after(shop: Shop) -> None:
    order_id = shop.paid_order(queued=False)
    limited = public_client(shop.sessions, shop.pipeline(), shop.store, per_minute=5)

    codes = [limited.get(f"/api/orders/{order_id}", headers=token(order_id)).status_code for _ in range(7)]
    refused = limited.get(f"/download/{'x' * 43}")
    other_client = TestClient(limited.app, client=("203.0.113.9", 50000))

    assert codes == [200] * 5 + [429] * 2
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
    assert other_client.get(f"/api/orders/{order_id}", headers=token(order_id)).status_code == 200


def test_a_burst_of_wrong_tokens_gets_no_5xx(shop: Shop) -> None:
    order_id = shop.paid_order(queued=False)
    client = public_client(shop.sessions, shop.pipeline(), shop.store, per_minute=100,
                           raise_server_exceptions=False)

    def guess(n: int) -> int:
        wrong = {"X-Session-Token": secrets.token_urlsafe(16 + n % 40)}
        if n % 3 == 0:
            return client.post(f"/api/orders/{order_id}/complete", headers=wrong).status_code
        if n % 3 == 1:
            return client.get(f"/api/orders/{order_id}", headers=wrong).status_code
        return client.get(f"/download/{secrets.token_urlsafe(32)}").status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = set(pool.map(guess, range(300)))

    assert codes <= {403, 404, 429} and 429 in codes
    assert shop.order(order_id).next_attempt_at is None
