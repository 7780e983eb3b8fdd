"""Schemathesis against the running daemon's own schemas, both listeners': no 5xx, and a refused
request changes nothing. The operator listener serves `/openapi.json` (its own API) and
`/public/openapi.json` (the public listener's, which publishes no schema of its own).

Every operation in the schema gets generated requests, both ones that fit the schema and ones that
do not (negative mode: wrong types, missing parameters, junk headers), over real HTTP to a real
`healer run`. A second pass aims them at the orders that exist, with the tokens guessed wrong, so
the 403 paths see as much as the 404 ones. After each request answered 4xx, the orders, their
stories and the stored webhook events are exactly as before.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Err, Ok

from tests.badinput.helpers import Seeded, snapshot
from tests.e2e.daemon import RunningDaemon
from tests.fakes.shop_fixtures import Shop

EXAMPLES = 25  # per operation and mode; a few hundred requests in all
# /readyz answers 503 by design while a critical check fails; none does here, so none is allowed.
pytestmark = pytest.mark.timeout(240)


def _operations(daemon: RunningDaemon) -> list[tuple[str, Any]]:
    """(the listener's base URL, operation) for every operation of both schemas."""
    found = []
    for schema_path, base_url in (("/openapi.json", daemon.ops_url), ("/public/openapi.json", daemon.base_url)):
        schema = schemathesis.openapi.from_url(f"{daemon.ops_url}{schema_path}")
        results = list(schema.get_all_operations())
        broken = [result.err() for result in results if isinstance(result, Err)]
        assert not broken, f"the daemon's schema {schema_path} has operations schemathesis cannot read: {broken}"
        found += [(base_url, result.ok()) for result in results if isinstance(result, Ok)]
    assert len(found) >= 12, [op.label for _, op in found]
    return found


def _fuzz(shop: Shop, base_url: str, operation: Any, mode: GenerationMode, seen: Counter[str],
          **strategy_args: Any) -> None:
    session = requests.Session()

    @given(case=operation.as_strategy(generation_mode=mode, **strategy_args))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def one_request(case: Any) -> None:
        before = snapshot(shop.sessions)
        response = case.call(base_url=base_url, session=session, timeout=15, allow_redirects=False)
        seen[f"{operation.label} {response.status_code}"] += 1
        assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text[:300])
        if 400 <= response.status_code < 500:
            assert snapshot(shop.sessions) == before, (case.as_curl_command(), response.status_code)

    try:
        one_request()
    except Unsatisfiable:
        # Nothing in this operation can be made invalid (no parameters, or only free-form text).
        assert mode is GenerationMode.NEGATIVE, operation.label
        seen[f"{operation.label} (no negative cases)"] += 1


def test_generated_requests_get_no_5xx_and_refusals_change_nothing(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded
) -> None:
    seen: Counter[str] = Counter()
    for base_url, operation in _operations(daemon):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(shop, base_url, operation, mode, seen)

    assert any(key.endswith(" 422") for key in seen), seen  # negative mode reached validation
    assert "GET /metrics 200" in seen and "GET /health 200" in seen, seen
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
