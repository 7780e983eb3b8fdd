"""Leases: several workers on one PostgreSQL never work one order at once, and a dead worker's
order is resumed once its lease expires."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.models import OrderStatus
from fulfilment.render import render_poster
from healer import db
from healer.jobs.scheduler import Scheduler
from healer.worker import Worker
from tests.eventually import eventually
from tests.fakes.db_fixtures import unreachable_pg_url
from tests.fakes.shop_fixtures import Shop


def test_two_workers_on_one_database_never_work_an_order_twice(shop: Shop) -> None:
    order_ids = [shop.paid_order() for _ in range(12)]

    def slow_render(inputs):  # type: ignore[no-untyped-def]
        time.sleep(0.2)  # deliberate: widen the window in which a second worker could barge in
        return render_poster(shop.assets_dir, inputs, preview=False)

    workers = [Worker(shop.pipeline(render=slow_render), concurrency=3, owner=f"daemon-{n}") for n in (1, 2)]
    try:
        def tick() -> None:
            for w in workers:
                w.tick()

        eventually(lambda: all(shop.order(o).status == OrderStatus.COMPLETED.value for o in order_ids),
                   timeout=90, what="every order to complete", step=tick, interval=0.1)
    finally:
        for w in workers:
            w.shutdown()

    for order_id in order_ids:
        events = shop.events(order_id)
        assert Counter((e.step, e.outcome) for e in events) == Counter(
            {("verify_payment", "ok"): 1, ("migrate_files", "ok"): 1, ("render", "ok"): 1, ("email", "ok"): 1}
        )
        assert len(shop.emails_to("ada@example.com")) == len(order_ids)
    owners = Counter(e.worker for o in order_ids for e in shop.events(o))
    assert set(owners) == {"daemon-1", "daemon-2"}, owners  # both took a share of the work


def test_order_of_a_dead_worker_is_resumed_after_its_lease_expires(shop: Shop) -> None:
    order_id = shop.paid_order()
    dead = shop.pipeline(lease_seconds=2)
    assert dead.claim("crashed-daemon", 10) == [order_id]  # ...and then the process dies

    survivor = shop.pipeline(lease_seconds=2)
    assert survivor.claim("survivor", 10) == []
    time.sleep(2.2)  # deliberate: outlast the dead worker's 2 s lease
    assert survivor.claim("survivor", 10) == [order_id]
    survivor.run(order_id, "survivor")

    assert shop.order(order_id).status == OrderStatus.COMPLETED.value
    # The dead worker's late commit (if it ever woke) would be refused: it no longer holds the lease.
    assert dead.run_step(order_id, "crashed-daemon") is None


def test_render_pool_spools_through_scratch_and_reports_a_full_disk(
    tmp_path, sample_inputs, assets_dir  # type: ignore[no-untyped-def]
) -> None:
    import subprocess

    import pytest

    from fulfilment.errors import ErrorClass, StepError
    from healer.render.pool import RenderPool

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(scratch)], check=True)
    pool = RenderPool(assets_dir, 1, scratch)
    try:
        (scratch / "filler").write_bytes(b"\0" * (1024 * 1024 - 4096))
        with pytest.raises(StepError) as full:
            pool(sample_inputs)
        assert full.value.error_class is ErrorClass.RESOURCES and str(scratch) in full.value.message

        (scratch / "filler").unlink()
        assert pool(sample_inputs).startswith(b"%PDF")
        assert list(scratch.iterdir()) == []  # the spooled file is gone once read
    finally:
        pool.shutdown()
        subprocess.run(["umount", str(scratch)], check=True)


# A render past its time limit or over its memory cap is stopped, is `bad_input`, and the pool
# renders the next order: tests/security/test_render_limits.py. A render process killed, hung or
# idle, and the pool's owner stopped or killed: tests/healer/test_render_pool.py.


# -- a database outage ------------------------------------------------------------------------------

OUTAGE_PASSWORD = "outage-pw-" + "x7Qm2"


class Clock:
    """Monotonic seconds the test moves on by hand, so the 30 s repeat needs no 30 s wait."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def worker_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "healer.worker" and r.levelno == level]


@pytest.fixture
def outage(shop: Shop) -> Iterator[tuple[Shop, sessionmaker[Session]]]:
    """The shop as a worker sees it while PostgreSQL is unreachable; rebind the sessions to end it."""
    engine = db.make_engine(unreachable_pg_url(OUTAGE_PASSWORD))
    sessions = db.make_session_factory(engine)
    yield dataclasses.replace(shop, sessions=sessions), sessions
    engine.dispose()


def test_a_database_outage_is_one_warning_then_one_per_30s_and_the_worker_carries_on(
    shop: Shop, pg_engine: Engine, outage: tuple[Shop, sessionmaker[Session]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    down, sessions = outage
    clock = Clock()
    worker = Worker(down.pipeline(), concurrency=2, owner="outage-worker", clock=clock)
    try:
        for _ in range(5):  # 5 ticks, well under 30 s apart
            assert worker.tick() == 0
            clock.now += 2
        assert len(worker_lines(caplog, logging.WARNING)) == 1
        clock.now += 30
        assert worker.tick() == 0
        warnings = worker_lines(caplog, logging.WARNING)

        order_id = shop.paid_order()
        sessions.configure(bind=pg_engine)  # the database is back
        assert worker.tick() == 1
        eventually(lambda: shop.order(order_id).status == OrderStatus.COMPLETED.value, timeout=90,
                   what="the order to complete")
    finally:
        worker.shutdown(wait=True)

    first, again = warnings
    assert first.startswith("Worker cannot reach the database, claiming no orders until it can: OperationalError: ")
    assert "Connection refused" in first and "127.0.0.1" in first
    assert again.startswith("Worker still cannot reach the database after 40s: OperationalError: ")
    assert worker_lines(caplog, logging.INFO) == ["Worker reached the database again after 40s; claiming orders"]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], "no tracebacks, no errors"
    assert OUTAGE_PASSWORD not in caplog.text


def test_the_scheduled_worker_logs_no_traceback_while_the_database_is_down(
    outage: tuple[Shop, sessionmaker[Session]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    down, _ = outage
    worker = Worker(down.pipeline(), concurrency=1, owner="outage-worker")
    scheduler = Scheduler()
    scheduler.add("worker", worker.tick, 0.2, depends_on=Worker.depends_on)  # the daemon's own job, polled fast
    scheduler.start()
    try:
        eventually(lambda: scheduler.jobs()[0].runs >= 5, timeout=30, what="five runs of the worker's job")
    finally:
        scheduler.shutdown()
        worker.shutdown()

    [job] = scheduler.jobs()
    assert job.failures == 0 and job.last_error is None
    assert not [r for r in caplog.records if r.exc_info], "APScheduler logged a traceback"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(worker_lines(caplog, logging.WARNING)) == 1
    assert OUTAGE_PASSWORD not in caplog.text


def test_an_order_that_ends_claims_the_next_without_waiting_for_a_tick(shop: Shop) -> None:
    order_ids = [shop.paid_order() for _ in range(3)]
    worker = Worker(shop.pipeline(), concurrency=1, owner="refilling-worker")
    try:
        assert worker.tick() == 1  # the only tick: one slot, one order
        eventually(lambda: all(shop.order(o).status == OrderStatus.COMPLETED.value for o in order_ids),
                   timeout=90, what="all three orders to complete, one after another")
    finally:
        worker.shutdown()
    assert worker.in_flight == 0
