"""Schemathesis against the running daemon's own schemas, both listeners', with all its response
checks: no 5xx, every status, content type, header and body as documented, data the schema calls
invalid refused. And a refused request changes nothing. The operator listener serves
`/openapi.json` (its own API) and `/public/openapi.json` (the public listener's, which publishes no
schema of its own).

Every operation gets generated requests, both ones that fit the schema and ones that do not
(negative mode: wrong types, missing parameters, junk headers), over real HTTP to a real
`healer run`. Random ids mostly meet 404s, so further passes aim them at the orders that exist:
with their real session tokens, the real download link and the admin token (so that 200, 202, 307
and 409 are checked as well), with tokens guessed wrong (403), and Stripe deliveries signed with the
real secret (so the event models, not the signature, decide). After each request answered 4xx, the
orders, their stories and the stored webhook events are exactly as before.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.badinput.helpers import ADMIN, Seeded, signed, snapshot
from tests.e2e.daemon import RunningDaemon
from tests.fakes.shop_fixtures import Shop

EXAMPLES = 20  # per operation and mode; with the passes below about 1,500 requests in all
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
BOTH = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
pytestmark = pytest.mark.timeout(300)
# Adds what the generated request carries (a signature over its body, for the webhook).
Sign = Callable[[Any], dict[str, Any]]


def _operations(daemon: RunningDaemon) -> list[tuple[str, Any]]:
    """(the listener's base URL, operation) for every operation of both schemas."""
    found = []
    for schema_path, base_url in (("/openapi.json", daemon.ops_url), ("/public/openapi.json", daemon.base_url)):
        schema = schemathesis.openapi.from_url(f"{daemon.ops_url}{schema_path}")
        results = list(schema.get_all_operations())
        broken = [result.err() for result in results if isinstance(result, Err)]
        assert not broken, f"the daemon's schema {schema_path} has operations schemathesis cannot read: {broken}"
        found += [(base_url, result.ok()) for result in results if isinstance(result, Ok)]
    assert len(found) == 13, [op.label for _, op in found]
    return found


def _fuzz(shop: Shop, base_url: str, operation: Any, mode: GenerationMode, seen: Counter[str], *,
          sign: Sign | None = None, examples: int = EXAMPLES, **strategy_args: Any) -> None:
    session = requests.Session()

    @given(case=operation.as_strategy(generation_mode=mode, **strategy_args))
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def one_request(case: Any) -> None:
        before = snapshot(shop.sessions)
        extra = sign(case) if sign else {}
        response = case.call(base_url=base_url, session=session, timeout=15, allow_redirects=False, **extra)
        seen[f"{operation.label} {response.status_code}"] += 1
        case.validate_response(response, checks=CHECKS, headers=extra.get("headers"))
        if 400 <= response.status_code < 500:
            assert snapshot(shop.sessions) == before, (case.as_curl_command(), response.status_code)

    try:
        one_request()
    except Unsatisfiable:
        # Nothing in this operation can be made invalid (no parameters, or only free-form text).
        assert mode is GenerationMode.NEGATIVE, operation.label
        seen[f"{operation.label} (no negative cases)"] += 1


def test_generated_requests_conform_to_the_schemas_and_refusals_change_nothing(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded
) -> None:
    seen: Counter[str] = Counter()
    for base_url, operation in _operations(daemon):
        for mode in BOTH:
            _fuzz(shop, base_url, operation, mode, seen)

    assert any(key.endswith(" 422") for key in seen), seen  # negative mode reached validation
    assert "GET /metrics 200" in seen and "GET /health 200" in seen, seen
    assert "Traceback" not in daemon.log()


def test_requests_with_real_ids_and_tokens_conform_to_the_schemas(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded
) -> None:
    seen: Counter[str] = Counter()
    operations = {(url == daemon.ops_url, op.method.upper(), op.path): (url, op) for url, op in _operations(daemon)}
    admin = {"Authorization": f"Bearer {ADMIN}"}
    # Completed and unpaid: the admin's retry answers 409 and changes nothing. The order that needs
    # attention would be re-queued (202) and set the worker going: its retry has its own pass below.
    for order_id in seeded.all:
        path = {"order_id": str(order_id)}
        customer = {"X-Session-Token": shop.order(order_id).session_token}
        for key in [(False, "POST", "/api/orders/{order_id}/complete"), (False, "GET", "/api/orders/{order_id}")]:
            for mode in BOTH:
                _fuzz(shop, *operations[key], mode, seen, path_parameters=path, headers=customer)
        _fuzz(shop, *operations[(True, "GET", "/api/orders/{order_id}")], GenerationMode.POSITIVE, seen,
              path_parameters=path)
        if order_id != seeded.needs_attention:
            _fuzz(shop, *operations[(True, "POST", "/api/orders/{order_id}/retry")], GenerationMode.POSITIVE, seen,
                  path_parameters=path, headers=admin)
    link = {"token": shop.order(seeded.completed).download_token}
    _fuzz(shop, *operations[(False, "GET", "/download/{token}")], GenerationMode.POSITIVE, seen, path_parameters=link)
    for check in ("database", "s3"):
        _fuzz(shop, *operations[(True, "GET", "/health/{check}")], GenerationMode.POSITIVE, seen,
              path_parameters={"check": check})

    expected = {"POST /api/orders/{order_id}/complete 202", "POST /api/orders/{order_id}/complete 409",
                "GET /api/orders/{order_id} 200", "POST /api/orders/{order_id}/retry 409",
                "GET /download/{token} 307", "GET /health/{check} 200"}
    assert expected <= set(seen), seen
    # Last, as it sets the worker going: retried while it is queued, nothing more happens.
    _fuzz(shop, *operations[(True, "POST", "/api/orders/{order_id}/retry")], GenerationMode.POSITIVE, seen,
          examples=5, path_parameters={"order_id": str(seeded.needs_attention)}, headers=admin)
    assert "POST /api/orders/{order_id}/retry 202" in seen, seen
    assert "Traceback" not in daemon.log()


def test_wrong_tokens_on_real_orders_are_refused_and_change_nothing(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded
) -> None:
    seen: Counter[str] = Counter()
    # The operator listener's order view is open by design (a private network); its admin API is not.
    operations = [(url, op) for url, op in _operations(daemon) if "{order_id}" in op.path
                  and not (url == daemon.ops_url and op.method.upper() == "GET")]
    for order_id in seeded.all:  # completed, needs_attention, unpaid
        for base_url, operation in operations:
            _fuzz(shop, base_url, operation, GenerationMode.POSITIVE, seen, path_parameters={"order_id": str(order_id)})

    refusals = sum(n for key, n in seen.items() if key.endswith((" 403", " 422")))
    assert refusals > 0 and not any(key.endswith((" 200", " 202")) for key in seen), seen
    assert "Traceback" not in daemon.log()


def test_signed_generated_deliveries_conform_to_the_schema_and_refusals_store_nothing(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded
) -> None:
    """The body Stripe sends, generated from the schema (and, negative, against it), signed with
    the real secret: what the event models make of it is answered as documented."""
    seen: Counter[str] = Counter()
    [(base_url, webhook)] = [(url, op) for url, op in _operations(daemon) if op.path == "/stripe/webhook"]
    secret = shop.stripe.webhook_secret

    def sign(case: Any) -> dict[str, Any]:
        try:
            body = json.dumps(case.body).encode()
        except TypeError:  # negative mode's raw bytes: sent as generated, unsigned (a 400)
            return {}
        return {"data": body, "headers": signed(body, secret)}

    for mode in BOTH:
        _fuzz(shop, base_url, webhook, mode, seen, sign=sign, examples=40)

    assert {"POST /stripe/webhook 200", "POST /stripe/webhook 400"} <= set(seen), seen
    assert "Traceback" not in daemon.log()
