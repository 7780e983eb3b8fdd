"""A running `healer run` daemon on the shop's peers, with orders that do not move on their own
(completed, needs_attention, and an unpaid one nobody queued): any change to `helpers.snapshot` while
a test talks to it is the doing of a request.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.badinput.helpers import ADMIN, Seeded, complete, still
from tests.e2e.daemon import RunningDaemon, start_daemon
from tests.eventually import eventually
from tests.fakes.ports import free_port
from tests.fakes.shop_fixtures import Shop


@pytest.fixture
def seeded(shop: Shop) -> Seeded:
    completed = shop.paid_order()
    complete(shop, completed)
    broken = shop.paid_order(photo=b"not a photo at all")
    complete(shop, broken)
    unpaid = shop.paid_order(payment_status="requires_payment_method", queued=False)
    seeded = Seeded(completed, broken, unpaid)
    assert [shop.order(o).status for o in seeded.all] == ["completed", "needs_attention", "pending_payment"]
    return seeded


@pytest.fixture
def daemon(shop: Shop, shop_env: dict[str, str], seeded: Seeded, tmp_path: Path) -> Iterator[RunningDaemon]:
    env = dict(shop_env, HEALER_HTTP_PORT=str(free_port()), HEALER_OPS_PORT=str(free_port()),
               HEALER_ADMIN_TOKEN=ADMIN, HEALER_WORKERS="1",
               # Hundreds of generated requests from one address: the rate limit has its own test.
               HEALER_PUBLIC_RATE_LIMIT_PER_MINUTE="100000",
               HEALER_WORKER_INTERVAL_SECONDS="0.2", HEALER_CHECK_INTERVAL_SECONDS="2")
    running = start_daemon(env, tmp_path / "daemon.log")
    try:
        eventually(lambda: running.ops("GET", "/readyz")[0] == 200, timeout=60, what="the daemon to be ready")
        eventually(lambda: still(shop.sessions),
                   timeout=60, what="the daemon's start-up work (reconciliation) to settle")
        yield running
    finally:
        running.process.send_signal(signal.SIGTERM)  # not SIGKILL: its render workers exit with it
        try:
            running.process.wait(timeout=30)
        except Exception:
            running.process.kill()
