"""Two listeners: a real `healer run` serves customers and Stripe on its public port, and nothing
else there; probes, health, metrics, docs and the admin API answer only on its operator port."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.daemon import ADMIN, RunningDaemon, healer_env, start_daemon
from tests.fakes.shop_fixtures import Shop

OPERATOR_ONLY = ["/livez", "/readyz", "/health", "/health/database", "/metrics", "/docs", "/openapi.json",
                 "/public/openapi.json", "/redoc", "/docs/oauth2-redirect",
                 "/", "/orders/0000abcd"]  # the status page and an order's page


@pytest.fixture
def daemon(shop_env: dict[str, str], tmp_path: Path) -> Iterator[RunningDaemon]:
    running = start_daemon(healer_env(shop_env), tmp_path / "daemon.log")
    try:
        yield running
    finally:
        running.process.send_signal(signal.SIGTERM)
        running.process.wait(timeout=30)


def test_the_public_listener_answers_404_for_everything_operators_use(shop: Shop, daemon: RunningDaemon) -> None:
    order_id = shop.paid_order(status="needs_attention", last_error_step="render", queued=False)
    admin = {"Authorization": f"Bearer {ADMIN}"}

    public = {path: daemon.request("GET", path)[0] for path in OPERATOR_ONLY}
    public["GET /api/orders (as admin)"] = daemon.request("GET", f"/api/orders/{order_id}", admin)[0]
    public["POST retry (as admin)"] = daemon.request("POST", f"/api/orders/{order_id}/retry", admin)[0]

    assert public == {**dict.fromkeys(OPERATOR_ONLY, 404), "GET /api/orders (as admin)": 403,
                      "POST retry (as admin)": 404}
    assert shop.order(order_id).status == "needs_attention"  # the retry did not happen


def test_the_operator_listener_serves_probes_health_metrics_docs_and_the_admin_api(
    shop: Shop, daemon: RunningDaemon
) -> None:
    order_id = shop.paid_order(status="needs_attention", last_error_step="render", queued=False)

    served = {path: daemon.ops("GET", path)[0] for path in ["/livez", "/health", "/metrics", "/docs",
                                                             "/openapi.json", "/public/openapi.json", "/",
                                                             f"/orders/{order_id}"]}
    refused = daemon.ops("POST", f"/api/orders/{order_id}/retry")[0]
    retried = daemon.ops("POST", f"/api/orders/{order_id}/retry", {"Authorization": f"Bearer {ADMIN}"})[0]

    assert served == dict.fromkeys(served, 200)
    assert (refused, retried) == (403, 202)
    story = json.loads(daemon.ops("GET", f"/api/orders/{order_id}")[2])
    # The retry's line is in the story; the daemon (its worker, its start-up reconciliation) may
    # have added lines of its own around it by now.
    assert story["id"] == str(order_id) and "requeued" in [event["outcome"] for event in story["events"]]


def test_each_schema_describes_its_own_listener(daemon: RunningDaemon) -> None:
    operator = json.loads(daemon.ops("GET", "/openapi.json")[2])
    public = json.loads(daemon.ops("GET", "/public/openapi.json")[2])

    assert set(public["paths"]) == {"/api/orders/{order_id}/complete", "/api/orders/{order_id}",
                                    "/download/{token}", "/stripe/webhook", "/sendgrid/events"}
    assert {"/livez", "/readyz", "/health", "/metrics", "/api/orders/{order_id}/retry"} <= set(operator["paths"])
    assert not set(operator["paths"]) & {"/download/{token}", "/stripe/webhook", "/sendgrid/events",
                                         "/api/orders/{order_id}/complete"}
    complete = public["paths"]["/api/orders/{order_id}/complete"]["post"]["responses"]
    assert {"202", "403", "404", "409", "429"} <= set(complete)


def test_an_unknown_path_is_404_on_both_listeners(daemon: RunningDaemon) -> None:
    path = f"/{uuid.uuid4().hex}"
    assert daemon.request("GET", path)[0] == daemon.ops("GET", path)[0] == 404
