"""The two HTTP apps over ASGI, with the real pipeline behind them and real peers behind that:
the public one (customers) and the operator one (probes, stories, the admin API)."""

from __future__ import annotations

import logging
import urllib.request
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fulfilment.models import OrderStatus
from fulfilment.storage import LocalStore, S3Store, make_s3_client
from healer.http.public import GONE
from tests.fakes.http_fixtures import operator_client, public_client
from tests.fakes.ports import free_port
from tests.fakes.shop_fixtures import Shop

ADMIN = "admin-token-for-tests-0123456789"


def client_for(shop: Shop) -> TestClient:
    return public_client(shop.sessions, shop.pipeline(), shop.store)


def operator_for(shop: Shop, admin: str | None = ADMIN) -> TestClient:
    return operator_client(shop.sessions, shop.pipeline(), admin=admin)


def token(order_id: uuid.UUID) -> dict[str, str]:
    return {"X-Session-Token": f"sess-{order_id.hex}"}


@pytest.fixture
def client(shop: Shop) -> TestClient:
    return client_for(shop)


def test_complete_answers_202_and_queues_a_paid_order(shop: Shop, client: TestClient) -> None:
    order_id = shop.paid_order(queued=False)

    response = client.post(f"/api/orders/{order_id}/complete", headers=token(order_id))

    assert response.status_code == 202
    assert response.json() == {"order_id": str(order_id), "status": "paid"}
    assert shop.order(order_id).next_attempt_at is not None


def test_complete_answers_202_even_when_stripe_is_down(shop: Shop, client: TestClient) -> None:
    order_id = shop.paid_order(queued=False)
    shop.stripe.fail_next(500, count=5)

    response = client.post(f"/api/orders/{order_id}/complete", headers=token(order_id))

    assert response.status_code == 202 and response.json()["status"] == "pending_payment"


@pytest.mark.parametrize(
    ("path_id", "headers", "status"),
    [
        ("unknown", {}, 404),
        ("known", {"X-Session-Token": "somebody-else"}, 403),
        ("known", {}, 403),
        ("not-a-uuid", {}, 422),
    ],
)
def test_complete_refuses_bad_requests_and_changes_nothing(
    shop: Shop, client: TestClient, path_id: str, headers: dict[str, str], status: int
) -> None:
    order_id = shop.paid_order(queued=False)
    target = {"unknown": str(uuid.uuid4()), "known": str(order_id), "not-a-uuid": "not-a-uuid"}[path_id]

    response = client.post(f"/api/orders/{target}/complete", headers=headers)

    assert response.status_code == status
    assert "detail" in response.json()
    order = shop.order(order_id)
    assert order.status == "pending_payment" and order.next_attempt_at is None


def test_complete_answers_409_when_the_payment_did_not_succeed(shop: Shop, client: TestClient) -> None:
    order_id = shop.paid_order(payment_status="requires_payment_method", queued=False)

    response = client.post(f"/api/orders/{order_id}/complete", headers=token(order_id))

    assert response.status_code == 409
    # Stripe's reason is for operators (logged with the order id), not for the customer's answer.
    assert response.json()["detail"].startswith("payment not succeeded")
    assert "requires_payment_method" not in response.text


def test_the_operator_listener_shows_an_orders_whole_story(shop: Shop, client: TestClient) -> None:
    order_id = shop.paid_order(queued=False)

    assert client.post(f"/api/orders/{order_id}/complete", headers=token(order_id)).status_code == 202
    body = operator_for(shop).get(f"/api/orders/{order_id}").json()
    assert body["status"] == "paid"
    assert [e["step"] for e in body["events"]] == ["verify_payment"]


def test_the_customers_view_needs_the_customers_token(shop: Shop, client: TestClient) -> None:
    order_id = shop.paid_order()

    assert client.get(f"/api/orders/{order_id}").status_code == 403
    assert client.get(f"/api/orders/{order_id}", headers=token(order_id)).json()["order_id"] == str(order_id)


def test_retry_is_refused_without_the_admin_token(shop: Shop) -> None:
    order_id = shop.paid_order()

    no_admin = operator_for(shop, admin=None).post(f"/api/orders/{order_id}/retry")
    wrong = operator_for(shop).post(f"/api/orders/{order_id}/retry", headers={"Authorization": "Bearer nope"})

    assert no_admin.status_code == 403 and "HEALER_ADMIN_TOKEN" in no_admin.json()["detail"]
    assert wrong.status_code == 403


def test_retry_requeues_an_order_that_needs_attention(shop: Shop, client: TestClient) -> None:
    order_id = shop.paid_order(status="needs_attention", last_error_step="render", paid_at=None)

    response = operator_for(shop).post(f"/api/orders/{order_id}/retry", headers={"Authorization": f"Bearer {ADMIN}"})

    assert response.status_code == 202 and response.json()["status"] == "files_migrated"
    assert shop.order(order_id).status == OrderStatus.FILES_MIGRATED.value


def test_download_redirects_to_a_fresh_presigned_url(shop: Shop, client: TestClient) -> None:
    order_id = shop.paid_order()
    pipeline = shop.pipeline()
    pipeline.claim_order(order_id, "w")
    pipeline.run(order_id, "w")
    link_token = shop.order(order_id).download_token

    response = client.get(f"/download/{link_token}")

    assert response.status_code == 307
    with urllib.request.urlopen(response.headers["location"], timeout=10) as pdf:
        assert pdf.read().startswith(b"%PDF")


@pytest.mark.parametrize("bad", ["nope", "..%2F..%2Fetc%2Fpasswd", "A" * 43, "x" * 200])
def test_download_with_an_unknown_token_is_404(client: TestClient, bad: str) -> None:
    assert client.get(f"/download/{bad}").status_code == 404


def test_livez_reports_the_scheduler(shop: Shop) -> None:
    client = operator_client(shop.sessions, shop.pipeline(), liveness=lambda: (False, "jobs late: worker"))

    assert client.get("/livez").status_code == 503
    assert "[-]scheduler failed: jobs late: worker" in client.get("/livez?verbose").text


def test_non_ascii_tokens_are_wrong_tokens_not_errors(shop: Shop, client: TestClient) -> None:
    order_id = shop.paid_order(queued=False)

    assert client.get(f"/api/orders/{order_id}", headers={"X-Session-Token": "\xe9t\xe9".encode("latin-1")}
                      ).status_code == 403
    assert operator_for(shop).post(f"/api/orders/{order_id}/retry", headers={"Authorization": b"Bearer \xe9"}
                                   ).status_code == 403


def local_client(shop: Shop, root: Path) -> TestClient:
    store = LocalStore(root)
    return public_client(shop.sessions, shop.pipeline(store=store), store)


def download_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "healer.http.public" and r.levelno >= logging.ERROR]


LINK = "t" * 43


def test_download_of_a_file_lost_from_the_local_store_is_404_and_named_for_the_operator(
    shop: Shop, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    order_id = shop.paid_order(download_token=LINK, final_pdf_key="pdfs/final_gone.pdf", status="completed")

    response = local_client(shop, tmp_path / "store").get(f"/download/{LINK}")

    # Gone until someone re-renders it: a 503 would send the customer back every minute for nothing.
    assert response.status_code == 404 and "retry-after" not in response.headers
    assert "missing" in response.json()["detail"]
    [line] = download_errors(caplog)
    assert line.startswith(f"Download for order {order_id} failed: s3_missing_file: 'pdfs/final_gone.pdf'")
    assert shop.order(order_id).status == "completed"


def test_download_of_a_file_lost_from_s3_is_404_not_a_redirect_to_nothing(
    shop: Shop, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    order_id = shop.paid_order(download_token=LINK, final_pdf_key="pdfs/final_gone.pdf", status="completed")

    response = client.get(f"/download/{LINK}")

    assert response.status_code == 404 and "location" not in response.headers
    [line] = download_errors(caplog)
    assert line.startswith(f"Download for order {order_id} failed: s3_missing_file: 'pdfs/final_gone.pdf'")


BAD_STORED_KEYS = ["../../etc/passwd", "pdfs/../../final.pdf", "/etc/passwd", "pdfs//final.pdf", "pdfs\\final.pdf",
                   "pdfs/final\x07.pdf"]


@pytest.mark.parametrize("store_kind", ["s3", "local"])
@pytest.mark.parametrize("key", BAD_STORED_KEYS)
def test_download_whose_stored_key_is_invalid_is_404_and_logged_once_with_the_order(
    shop: Shop, client: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture, store_kind: str, key: str
) -> None:
    order_id = shop.paid_order(download_token=LINK, final_pdf_key=key, status="completed")
    used = client if store_kind == "s3" else local_client(shop, tmp_path / "store")

    response = used.get(f"/download/{LINK}")

    # The order row is broken, not the network: no retry helps, so not 503; and a paying customer
    # never gets a 500 (DESIGN), so 404 with the operator told which order.
    assert response.status_code == 404, response.text
    assert "retry-after" not in response.headers and "location" not in response.headers
    assert response.json() == {"detail": GONE}
    [line] = download_errors(caplog)
    assert line.startswith(f"Download for order {order_id} failed: bad_input: invalid object key ")
    assert "\n" not in line and "final_pdf_key is invalid" in line


def test_download_while_s3_is_unreachable_is_503_with_retry_after(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there: S3 is down
    client = make_s3_client(access_key_id="testing", secret_access_key="testing", region="us-east-1",
                            endpoint_url=f"http://127.0.0.1:{port}", connect_timeout=2, max_attempts=1)
    store = S3Store(client, shop.s3.bucket)
    order_id = shop.paid_order(download_token=LINK, final_pdf_key="pdfs/final_x.pdf", status="completed")
    app = public_client(shop.sessions, shop.pipeline(), store)

    response = app.get(f"/download/{LINK}")

    assert response.status_code == 503 and response.headers["retry-after"] == "60"
    [line] = download_errors(caplog)
    assert line.startswith(f"Download for order {order_id} failed: s3_unavailable: ")
