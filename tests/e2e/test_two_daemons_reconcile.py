"""Two daemons on one PostgreSQL: workers run on both, reconciliation on one at a time.

Two `healer run` processes share the database and the peers, each scheduling its own `reconcile`
job every 2 s; the advisory lock lets one of them run at a time, and the work is done once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from healer.db.models import OrphanPayment, ReconcileRun
from tests.e2e.daemon import RunningDaemon, start_daemon
from tests.eventually import eventually
from tests.fakes.ports import free_port
from tests.fakes.shop_fixtures import Shop


@pytest.fixture
def two_daemons(shop_env: dict[str, str], tmp_path: Path) -> Iterator[list[RunningDaemon]]:
    daemons = []
    try:
        for n in (1, 2):
            env = dict(shop_env, HEALER_HTTP_PORT=str(free_port()), HEALER_OPS_PORT=str(free_port()),
                       HEALER_WORKER_INTERVAL_SECONDS="0.2",
                       # Three orders at once each (healer.config.ORDERS_PER_RENDER_PROCESS): the six
                       # lost orders are more than one daemon takes at once, so both take a share.
                       HEALER_WORKERS="1", HEALER_DATA_DIR=str(tmp_path / f"data{n}"),
                       HEALER_RECONCILE_INTERVAL_SECONDS="2")
            daemons.append(start_daemon(env, tmp_path / f"daemon{n}.log"))
        yield daemons
    finally:
        for daemon in daemons:
            if daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGTERM)
        for daemon in daemons:
            try:
                daemon.process.wait(timeout=30)
            except Exception:
                daemon.process.kill()


@pytest.mark.slow  # ~13 s with its two daemons' start and stop
def test_two_daemons_complete_lost_webhook_orders_and_reconcile_one_at_a_time(
    shop: Shop, two_daemons: list[RunningDaemon]
) -> None:
    lost = [shop.paid_order(queued=False) for _ in range(6)]  # paid in Stripe, no webhook came
    orphan = shop.stripe.create_payment_intent(1200, "eur", {"order_id": "deleted-order"})
    shop.stripe.set_delay(0.3)  # each run takes a while, so the two daemons' jobs meet

    def runs() -> list[ReconcileRun]:
        with shop.sessions() as session:
            return list(session.scalars(select(ReconcileRun).order_by(ReconcileRun.started_at)))

    def orphans() -> list[str]:
        with shop.sessions() as session:
            return [o.payment_intent_id for o in session.scalars(select(OrphanPayment))]

    # Runs that began before the payments existed found nothing: wait for the work, then for two
    # more runs, which must find nothing new to report.
    eventually(lambda: orphans() and all(shop.order(o).paid_at for o in lost),
               timeout=90, what="reconciliation to repair")
    done = len(runs())
    eventually(lambda: len([r for r in runs() if r.finished_at]) >= done + 2, timeout=60, what="two more runs")
    shop.stripe.set_delay(0)

    finished = [r for r in runs() if r.finished_at is not None]
    assert all(run.result == "success" for run in finished)
    for earlier, later in zip(finished, finished[1:], strict=False):  # never two runs at once
        assert later.started_at >= earlier.finished_at
    assert orphans() == [orphan["id"]]
    logs = "".join(d.log() for d in two_daemons)
    assert logs.count(f"Orphan payment {orphan['id']}") == 1  # reported once, by whoever found it

    eventually(lambda: all(shop.order(o).status == "completed" for o in lost), timeout=120,
               what="the lost-webhook orders to complete")
    workers = {e.worker.split(":")[1] for o in lost for e in shop.events(o) if e.worker}
    assert len(workers) == 2, workers  # both daemons' workers took a share
    for order_id in lost:  # marked paid once, by reconciliation, then worked once
        story = [e for e in shop.events(order_id) if e.outcome == "ok"]
        assert [e.step for e in story] == ["verify_payment", "migrate_files", "render", "email"]
        assert "found by reconciliation" in story[0].message
    assert len(shop.emails_to("ada@example.com")) == len(lost)
