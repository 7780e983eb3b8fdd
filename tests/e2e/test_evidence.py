"""Runbook issue 1 as an operator met it, on a running `healer run`: S3 write permission removed
right after start, with a short retry policy. The daemon's own `s3` check lists the bucket every
interval but makes its write round trip only every 20 intervals, so before failures were evidence
it stayed green and the paid order spent its four attempts in seconds and gave up. Now the step's
`s3_auth` failure runs the check in full at once: the order waits without spending attempts, and
completes once writes are allowed again.

S3 is moto behind tests/fakes/s3_proxy.py, which answers writes with S3's own AccessDenied.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fulfilment.errors import ErrorClass
from fulfilment.models import Order, OrderStatus, Outcome
from tests.e2e.daemon import RunningDaemon, healer_env, running_daemon
from tests.eventually import eventually
from tests.fakes.s3_proxy import WRITES, S3FaultProxy
from tests.fakes.shop_fixtures import Shop

# Four attempts backing off 1, 2 and 4 s (half of each fixed, half random) are spent within 7 s of
# the first failure: the order is watched for longer than that while S3 denies writes.
RETRY = {"HEALER_MAX_ATTEMPTS": "4", "HEALER_RETRY_BASE_SECONDS": "1", "HEALER_RETRY_MAX_SECONDS": "4"}
DENIED_SECONDS = 8.0


@pytest.fixture
def daemon(shop_env: dict[str, str], s3_fault_proxy: S3FaultProxy, tmp_path: Path) -> Iterator[RunningDaemon]:
    env = healer_env(shop_env, S3_ENDPOINT_URL=s3_fault_proxy.url,
                     HEALER_CHECK_INTERVAL_SECONDS="2",  # s3 every 2 s, its round trip every 40 s
                     **RETRY)
    with running_daemon(env, tmp_path / "daemon.log") as running:
        eventually(lambda: s3_check(running)["status"] == "ok", timeout=30, what="the s3 check green at start")
        yield running


def s3_check(daemon: RunningDaemon) -> dict[str, object]:
    body: dict[str, object] = json.loads(daemon.ops("GET", "/health/s3")[2])
    return body


def test_an_order_waits_out_denied_s3_writes_without_spending_attempts_and_then_completes(
    shop: Shop, daemon: RunningDaemon, s3_fault_proxy: S3FaultProxy
) -> None:
    s3_fault_proxy.set_fault(403, methods=WRITES)
    order_id = shop.paid_order()

    confirmed = eventually(lambda: _confirmed(shop.order(order_id)), timeout=30,
                           what="the order's s3_auth failure confirmed by the s3 check")
    seen = _watch(shop, order_id, DENIED_SECONDS)
    check_while_denied = s3_check(daemon)
    s3_fault_proxy.clear()
    eventually(lambda: shop.order(order_id).status == OrderStatus.COMPLETED, timeout=30,
               what="the order to complete once S3 takes writes again")

    assert confirmed.startswith("waiting: s3_auth confirmed by its check: s3 failing: access denied")
    assert {(status, attempts) for status, attempts in seen} == {(OrderStatus.PAID, 0)}
    assert check_while_denied["status"] == "failing" and "access denied" in str(check_while_denied["detail"])
    story = shop.events(order_id)
    assert not [e for e in story if e.outcome in (Outcome.FAILED, Outcome.GAVE_UP)]
    assert [e.error_class for e in story if e.outcome == Outcome.WAITING][0] is ErrorClass.S3_AUTH
    assert "Check s3 run at once on a step's failure: failing" in daemon.log()


def _confirmed(order: Order) -> str:
    """The order's last error if it is a confirmed failure, else "" (not yet)."""
    error = order.last_error or ""
    return error if "confirmed by its check" in error else ""


def _watch(shop: Shop, order_id: uuid.UUID, seconds: float) -> list[tuple[OrderStatus, int]]:
    """(status, attempts) of the order, polled for `seconds`: how long S3 denies writes is the
    test's choice, so this watches for a duration rather than waiting for a state."""
    seen: list[tuple[OrderStatus, int]] = []
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        order = shop.order(order_id)
        seen.append((order.status, order.attempts))
        time.sleep(0.5)  # deliberate: the polling period of a fixed-length watch
    return seen
