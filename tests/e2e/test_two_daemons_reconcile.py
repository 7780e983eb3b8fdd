"""Two daemons on one PostgreSQL: workers run on both, reconciliation on one at a time.

Two `healer run` processes share the database and the peers. Reconciliation is driven by two
`ReconcileJob`s, each with its own Services (its own connection pool, as a second daemon has),
started together from two threads, exactly as each daemon's scheduler calls its job; if the daemons
also run the job themselves, their runs take the same advisory lock and the same checks hold.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from healer.config import Settings
from healer.metrics import Metrics
from healer.models import OrphanPayment, ReconcileRun
from healer.reconcile import ReconcileJob, ReconcileReport, reconcile_job
from healer.services import Services
from healer.worker import worker_identity
from tests.e2e.test_daemon import RunningDaemon, free_port, start_daemon, wait_for
from tests.fakes.shop_fixtures import Shop

ROUNDS = 4


@pytest.fixture
def two_daemons(shop_env: dict[str, str], tmp_path: Path) -> Iterator[list[RunningDaemon]]:
    daemons = []
    try:
        for n in (1, 2):
            env = dict(shop_env, HEALER_HTTP_PORT=str(free_port()), HEALER_WORKER_INTERVAL_SECONDS="0.2",
                       HEALER_WORKERS="2", HEALER_DATA_DIR=str(tmp_path / f"data{n}"),
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
            except Exception:  # noqa: BLE001 - a daemon that will not stop is killed
                daemon.process.kill()


def reconcile_from(services: Services, start: threading.Barrier, results: list[ReconcileReport | None]) -> None:
    job = reconcile_job(services, services.pipeline(lambda _inputs: b""), Metrics(), worker_identity())
    assert isinstance(job, ReconcileJob)
    start.wait()
    for _ in range(ROUNDS):
        results.append(job())
        time.sleep(0.1)


def test_two_daemons_complete_lost_webhook_orders_and_reconcile_one_at_a_time(
    shop: Shop, shop_env: dict[str, str], two_daemons: list[RunningDaemon],
    caplog: pytest.LogCaptureFixture,
) -> None:
    lost = [shop.paid_order(queued=False) for _ in range(6)]  # paid in Stripe, no webhook came
    orphan = shop.stripe.create_payment_intent(1200, "eur", {"order_id": "deleted-order"})
    shop.stripe.set_delay(0.3)  # each run takes a while, so the two jobs meet
    settings = Settings.from_env(shop_env)
    services = [Services.build(settings), Services.build(settings)]
    start = threading.Barrier(2)
    results: list[list[ReconcileReport | None]] = [[], []]
    threads = [threading.Thread(target=reconcile_from, args=(s, start, r)) for s, r in zip(services, results)]
    try:
        with caplog.at_level(logging.INFO, logger="healer.reconcile"):
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
    finally:
        for s in services:
            s.close()
    shop.stripe.set_delay(0)

    ran = [r for rs in results for r in rs if r is not None]
    assert len(ran) >= 1 and len(ran) < 2 * ROUNDS  # at least once the other held the lock
    with shop.sessions() as session:
        runs = list(session.scalars(select(ReconcileRun).order_by(ReconcileRun.started_at)))
        stored_orphans = list(session.scalars(select(OrphanPayment)))
    assert all(run.result == "success" for run in runs)
    for earlier, later in zip(runs, runs[1:]):  # never two runs at once
        assert earlier.finished_at is not None and later.started_at >= earlier.finished_at
    assert [o.payment_intent_id for o in stored_orphans] == [orphan["id"]]
    logs = caplog.text + "".join(d.log() for d in two_daemons)
    assert logs.count(f"Orphan payment {orphan['id']}") == 1  # reported once, by whoever found it

    wait_for(lambda: all(shop.order(o).status == "completed" for o in lost), 120,
             "the lost-webhook orders to complete")
    workers = {e.worker.split(":")[1] for o in lost for e in shop.events(o) if e.worker}
    assert len(workers) == 2, workers  # both daemons' workers took a share
    for order_id in lost:  # marked paid once, by reconciliation, then worked once
        story = [e for e in shop.events(order_id) if e.outcome == "ok"]
        assert [e.step for e in story] == ["verify_payment", "migrate_files", "render", "email"]
        assert "found by reconciliation" in story[0].message
    assert len(shop.emails_to("ada@example.com")) == len(lost)
