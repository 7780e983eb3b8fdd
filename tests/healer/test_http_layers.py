"""What wraps every route of both listeners (healer.http.layers), over ASGI on the real apps:
HEAD answered wherever GET is, every request counted by route template, and an error nobody
handled turned into a logged, counted 500 (or a 400 for input that could not be decoded), never a
traceback for an answer."""

from __future__ import annotations

import logging
import uuid

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from healer.http.errors import INTERNAL, MALFORMED
from healer.http.observe import HttpMetrics
from tests.fakes.http_fixtures import operator_client, public_client
from tests.fakes.shop_fixtures import Shop

ADMIN = "admin-token-for-tests-0123456789"


def counted(registry: CollectorRegistry, listener: str, route: str, code: int) -> float:
    value = registry.get_sample_value("healer_http_requests_total",
                                      {"listener": listener, "route": route, "code": str(code)})
    return value or 0.0


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def http_metrics(registry: CollectorRegistry) -> HttpMetrics:
    return HttpMetrics(registry)  # one for both listeners, as the daemon has


@pytest.fixture
def public(shop: Shop, http_metrics: HttpMetrics) -> TestClient:
    return public_client(shop.sessions, shop.pipeline(), shop.store, http_metrics=http_metrics)


@pytest.fixture
def operator(shop: Shop, http_metrics: HttpMetrics) -> TestClient:
    return operator_client(shop.sessions, shop.pipeline(), admin=ADMIN, http_metrics=http_metrics)


def completed_order(shop: Shop) -> uuid.UUID:
    order_id = shop.paid_order()
    pipeline = shop.pipeline()
    assert pipeline.claim_order(order_id, "w")
    pipeline.run(order_id, "w")
    return order_id


# -- HEAD -------------------------------------------------------------------------------------------


def test_head_answers_wherever_get_does_with_the_gets_status_and_headers_and_no_body(
    shop: Shop, public: TestClient, operator: TestClient
) -> None:
    order_id = completed_order(shop)
    link = f"/download/{shop.order(order_id).download_token}"
    session = {"X-Session-Token": f"sess-{order_id.hex}"}
    gets = [(public, link, {}), (public, f"/api/orders/{order_id}", session),
            (public, f"/api/orders/{uuid.uuid4()}", session), (public, "/download/nope", {}),
            (operator, "/livez", {}), (operator, "/readyz?verbose", {}), (operator, "/health", {}),
            (operator, "/health/nope", {}), (operator, f"/api/orders/{order_id}", {}), (operator, "/docs", {}),
            (operator, "/openapi.json", {})]

    for client, path, headers in gets:
        got, head = client.get(path, headers=headers), client.head(path, headers=headers)
        assert (path, head.status_code) == (path, got.status_code)
        assert head.content == b"", path
        assert head.headers.get("content-type") == got.headers.get("content-type"), path
        assert head.headers.get("content-length") == got.headers.get("content-length"), path
    assert public.head(link).status_code == 307 and public.head(link).headers["location"].startswith("http")


def test_head_of_a_route_without_get_is_405(public: TestClient, operator: TestClient) -> None:
    assert public.head(f"/api/orders/{uuid.uuid4()}/complete").status_code == 405
    assert operator.head(f"/api/orders/{uuid.uuid4()}/retry").status_code == 405


# -- counting -----------------------------------------------------------------------------------------


def test_requests_are_counted_by_route_template_never_by_path(
    shop: Shop, public: TestClient, operator: TestClient, registry: CollectorRegistry
) -> None:
    token = "x" * 40
    public.get(f"/download/{token}")
    public.head(f"/download/{token}")
    public.get("/no/such/path")
    operator.get("/livez")

    assert counted(registry, "public", "/download/{token}", 404) == 2
    assert counted(registry, "public", "unmatched", 404) == 1
    assert counted(registry, "operator", "/livez", 200) == 1
    assert token.encode() not in generate_latest(registry)


# -- errors nobody handled ----------------------------------------------------------------------------


def failing_route(client: TestClient, error: Exception) -> str:
    """A route on the real app that fails as a bug (or undecodable input) would, mid-request."""
    path = f"/fails/{type(error).__name__}"

    def fail() -> None:
        raise error

    client.app.add_api_route(path, fail)  # type: ignore[attr-defined]
    return path


def test_an_unexpected_error_is_a_logged_counted_500_with_a_fixed_sentence(
    public: TestClient, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    path = failing_route(public, RuntimeError("boom: sk_live_secret in a message"))

    with caplog.at_level(logging.ERROR, logger="healer.http.errors"):
        response = public.get(path)

    assert (response.status_code, response.json()) == (500, {"detail": INTERNAL})
    assert "sk_live" not in response.text
    [line] = [r for r in caplog.records if r.name == "healer.http.errors"]
    assert line.exc_info is not None and path in line.getMessage()  # a bug: its traceback is logged
    assert counted(registry, "public", path, 500) == 1


def test_input_that_cannot_be_decoded_is_a_400_logged_in_one_line(
    operator: TestClient, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    path = failing_route(operator, UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))

    with caplog.at_level(logging.WARNING, logger="healer.http.errors"):
        response = operator.get(path)

    assert (response.status_code, response.json()) == (400, {"detail": MALFORMED})
    [line] = [r for r in caplog.records if r.name == "healer.http.errors"]
    assert line.levelno == logging.WARNING and line.exc_info is None
    assert counted(registry, "operator", path, 400) == 1
