"""Requests as `curl` and mail link scanners send them, over real HTTP to a running `healer run`
(uvicorn and all): raw header bytes, HEAD, and query strings that try to write the probe's text."""

from __future__ import annotations

import http.client
import re
from urllib.parse import urlsplit

from tests.badinput.helpers import Seeded, snapshot
from tests.e2e.daemon import RunningDaemon
from tests.fakes.shop_fixtures import Shop


def raw(base_url: str, method: str, path: str, headers: dict[str, bytes], body: bytes = b"") -> tuple[int, bytes]:
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=15)
    try:
        connection.putrequest(method, path)
        for name, value in {**headers, "Content-Length": str(len(body)).encode()}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def webhook_count(daemon: RunningDaemon, result: str) -> float:
    metrics = daemon.ops("GET", "/metrics")[2].decode()
    found = re.search(rf'healer_webhook_events_total{{result="{result}",type="unknown"}} (\S+)', metrics)
    return float(found.group(1)) if found else 0.0


def test_a_non_ascii_stripe_signature_is_a_counted_400_without_a_traceback(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded
) -> None:
    before = snapshot(shop.sessions)

    # curl -X POST .../stripe/webhook -H $'Stripe-Signature: t=1,v1=\xc3\xa9' --data '{}'
    status, _ = raw(daemon.base_url, "POST", "/stripe/webhook",
                    {"Stripe-Signature": b"t=1,v1=\xc3\xa9", "Content-Type": b"application/json"}, b"{}")

    assert status == 400
    assert webhook_count(daemon, "bad_signature") == 1
    assert snapshot(shop.sessions) == before and "Traceback" not in daemon.log()


def test_head_of_a_download_link_and_of_every_probe_answers_as_get_does(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded
) -> None:
    link = f"/download/{shop.order(seeded.completed).download_token}"
    targets = [(daemon.base_url, link), (daemon.base_url, "/download/" + "x" * 40),
               (daemon.base_url, f"/api/orders/{seeded.completed}")]
    targets += [(daemon.ops_url, path) for path in ("/livez", "/readyz", "/health", "/health/s3", "/metrics",
                                                     "/openapi.json", "/public/openapi.json", "/docs",
                                                     f"/api/orders/{seeded.completed}")]

    answers = {path: (raw(url, "HEAD", path, {}), raw(url, "GET", path, {})[0]) for url, path in targets}

    assert {path: (head[0], head[1]) for path, (head, _) in answers.items()} == {
        path: (get, b"") for path, (_, get) in answers.items()}
    assert answers[link][1] == 307


def test_readyz_does_not_echo_an_exclude_that_is_no_check_name(daemon: RunningDaemon, seeded: Seeded) -> None:
    status, _, body = daemon.ops("GET", "/readyz?verbose&exclude=%0A%5B%2B%5Dfake%20ok")

    assert status == 422 and b"\n[+]fake ok" not in body
