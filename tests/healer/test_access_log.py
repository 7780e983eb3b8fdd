"""One access-log line per request on both listeners (healer.http.observe, logger
`healer.http.access`), over ASGI on the real apps and a shop's real peers: who asked what, the
answer and how long it took, with structured fields, and never a download token or another
secret from a path or query string."""

from __future__ import annotations

import logging
import re
import uuid

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from healer.http.observe import HttpMetrics
from tests.fakes.http_fixtures import operator_client, public_client
from tests.fakes.shop_fixtures import Shop

ACCESS = "healer.http.access"


@pytest.fixture
def http_metrics() -> HttpMetrics:
    return HttpMetrics(CollectorRegistry())


@pytest.fixture
def public(shop: Shop, http_metrics: HttpMetrics) -> TestClient:
    return public_client(shop.sessions, shop.pipeline(), shop.store, http_metrics=http_metrics)


@pytest.fixture
def operator(shop: Shop, http_metrics: HttpMetrics) -> TestClient:
    return operator_client(shop.sessions, shop.pipeline(), http_metrics=http_metrics)


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=ACCESS)
    return caplog


def records(access: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in access.records if record.name == ACCESS]


def lines(access: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in records(access)]


def download_token(shop: Shop) -> str:
    order_id = shop.paid_order()
    pipeline = shop.pipeline()
    assert pipeline.claim_order(order_id, "w")
    pipeline.run(order_id, "w")
    token = shop.order(order_id).download_token
    assert token
    return token


def test_each_request_is_one_info_line_with_structured_fields(
    operator: TestClient, access: pytest.LogCaptureFixture
) -> None:
    response = operator.get("/livez?verbose")

    [record] = records(access)
    assert record.levelno == logging.INFO
    assert re.fullmatch(r'operator testclient "GET /livez\?verbose" 200 \d+\.\d ms \d+ B', record.getMessage())
    fields = [getattr(record, name) for name in ("listener", "client", "method", "route", "status", "response_bytes")]
    assert fields == ["operator", "testclient", "GET", "/livez", 200, len(response.content)]
    assert isinstance(record.duration_ms, float) and record.duration_ms >= 0


def test_a_download_token_never_appears_in_the_access_log(
    shop: Shop, public: TestClient, access: pytest.LogCaptureFixture
) -> None:
    token = download_token(shop)
    requests = [f"/download/{token}", f"/download/{token}/", f"/download/{token}/x",
                f"/download/{token}?token={token}", f"/download/{'y' * 40}"]

    statuses = [public.get(path).status_code for path in requests]
    public.head(f"/download/{token}")

    logged = lines(access)
    assert statuses == [307, 307, 404, 307, 404]
    assert len(logged) == len(requests) + 1  # one line per request, HEAD included
    assert not [line for line in logged if token in line]
    assert not [r for r in records(access) if token in " ".join(str(value) for value in vars(r).values())]
    assert logged[0].startswith('public testclient "GET /download/…" 307 ')
    assert '"GET /download/…" 307' in logged[1]  # no route matched (a redirect): first segment only
    assert '"GET /download/…" 404' in logged[2]
    assert '"GET /download/…?token=…" 307' in logged[3]
    assert [r.route for r in records(access)][:3] == ["/download/{token}", "unmatched", "unmatched"]
    assert logged[-1].startswith('public testclient "HEAD /download/…" 307 ')  # what the client asked


def test_secret_query_values_are_dropped_and_the_rest_kept(
    operator: TestClient, access: pytest.LogCaptureFixture
) -> None:
    operator.get("/livez?verbose&session_id=cs_live_123456&api_key=k-123456&x=1&token=t-123456&exclude=s3")

    [line] = lines(access)
    assert '"GET /livez?verbose&session_id=…&api_key=…&x=1&token=…&exclude=s3" 200' in line
    assert "123456" not in line


def test_a_path_no_route_matched_shows_only_its_first_segment(
    public: TestClient, operator: TestClient, access: pytest.LogCaptureFixture
) -> None:
    public.get("/wp-admin/setup-config.php?step=1")
    operator.get(f"/api/orders/{uuid.uuid4()}/retry/extra")

    assert [line.split('"')[1] for line in lines(access)] == ["GET /wp-admin/…?…", "GET /api/…"]


def test_a_path_cannot_break_the_line_or_the_log_format(
    operator: TestClient, access: pytest.LogCaptureFixture
) -> None:
    operator.get("/health/x%0Afake%20line%22")

    [line] = lines(access)
    assert '"GET /health/x%0Afake%20line%22" 404 ' in line and "\n" not in line


def test_the_line_says_what_the_client_got_when_healer_failed(
    public: TestClient, access: pytest.LogCaptureFixture
) -> None:
    def fail() -> None:
        raise RuntimeError("boom")

    public.app.add_api_route("/fails/{order_id}", fail)  # type: ignore[attr-defined]
    public.get("/fails/1234")

    [line] = lines(access)
    assert '"GET /fails/1234" 500 ' in line
