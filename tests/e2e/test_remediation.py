"""Self-healing of the running daemon (`healer run` in its own process): after a PostgreSQL outage
the connection pool recovers by itself (pool_pre_ping), with no restart of the daemon and no
order lost."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from fulfilment.models import OrderStatus
from tests.e2e.daemon import RunningDaemon, healer_env, running_daemon
from tests.eventually import eventually
from tests.fakes.db_fixtures import restart_postgresql
from tests.fakes.shop_fixtures import Shop


@pytest.fixture
def daemon(shop_env: dict[str, str], tmp_path: Path) -> Iterator[RunningDaemon]:
    env = healer_env(
        shop_env,
        HEALER_CHECK_INTERVAL_SECONDS="1",
        # A step whose commit was cut by the outage leaves its lease behind; short leases keep the
        # test short (the daemon re-claims its own leases at once anyway).
        HEALER_LEASE_SECONDS="10",
        HEALER_RETRY_BASE_SECONDS="1",
        HEALER_RETRY_MAX_SECONDS="2",
    )
    with running_daemon(env, tmp_path / "daemon.log") as running:
        yield running


@pytest.mark.serial  # restarts PostgreSQL, which every other test shares
def test_postgresql_restarted_under_a_running_daemon_loses_no_order(shop: Shop, daemon: RunningDaemon) -> None:
    before = [shop.paid_order() for _ in range(6)]
    # Restart while the daemon holds pooled connections and has orders in flight.
    eventually(lambda: any(shop.order(o).status == OrderStatus.COMPLETED.value for o in before), timeout=60,
               what="a first order to complete")

    restart_postgresql()
    after = [shop.paid_order() for _ in range(3)]

    eventually(lambda: all(shop.order(o).status == OrderStatus.COMPLETED.value for o in before + after), timeout=120,
               what="every order to complete")
    assert daemon.process.poll() is None, "the daemon survived without a restart"
    sent = {m.message_id for m in shop.emails_to("ada@example.com")}
    for order_id in before + after:
        assert shop.order(order_id).email_message_id in sent, order_id
    eventually(lambda: daemon.ops("GET", "/readyz")[0] == 200, timeout=30, what="the daemon to be ready again")
    assert daemon.ops("GET", "/livez")[0] == 200

    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=30) == 0, daemon.log()


def test_a_pdf_lost_from_s3_is_rendered_again_by_the_running_daemon(shop: Shop, daemon: RunningDaemon) -> None:
    order_id = shop.paid_order()
    eventually(lambda: shop.order(order_id).status == OrderStatus.COMPLETED.value,
               timeout=60, what="the order to complete")
    order = shop.order(order_id)
    assert order.final_pdf_key is not None
    shop.store.delete(order.final_pdf_key)  # a lifecycle rule, a slip of an operator's hand

    status, headers, _ = daemon.request("GET", f"/download/{order.download_token}")

    assert status == 503 and headers["retry-after"] == "60"
    eventually(lambda: shop.store.exists(order.final_pdf_key or ""), timeout=60, what="the PDF to be rendered again")
    eventually(lambda: daemon.request("GET", f"/download/{order.download_token}")[0] == 307,
               timeout=10, what="the link to work")
    assert f"Remediation rerender_pdf on {order_id}: success" in daemon.log()
    assert len(shop.emails_to("ada@example.com")) == 1
