"""Leases: several workers on one PostgreSQL never work one order at once, and a dead worker's
order is resumed once its lease expires."""

from __future__ import annotations

import time
from collections import Counter

from fulfilment.models import OrderStatus
from fulfilment.render import render_poster
from healer.worker import Worker
from tests.fakes.shop_fixtures import Shop


def wait_until(predicate, timeout: float = 90.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_two_workers_on_one_database_never_work_an_order_twice(shop: Shop) -> None:
    order_ids = [shop.paid_order() for _ in range(12)]

    def slow_render(inputs):  # type: ignore[no-untyped-def]
        time.sleep(0.2)  # widen the window in which a second worker could barge in
        return render_poster(shop.assets_dir, inputs, preview=False)

    workers = [Worker(shop.pipeline(render=slow_render), concurrency=3, owner=f"daemon-{n}") for n in (1, 2)]
    try:
        def all_done() -> bool:
            for w in workers:
                w.tick()
            return all(shop.order(o).status == OrderStatus.COMPLETED.value for o in order_ids)

        wait_until(all_done)
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
    time.sleep(2.2)
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
    from healer.worker import RenderPool

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


def _slow_render(seconds: float) -> str:
    time.sleep(seconds)
    return "/nonexistent"


def test_a_render_past_its_time_limit_is_stopped_and_frees_the_pool(
    tmp_path, sample_inputs, assets_dir  # type: ignore[no-untyped-def]
) -> None:
    import pytest

    from fulfilment.errors import ErrorClass, StepError
    from healer.worker import RenderPool

    pool = RenderPool(assets_dir, 1, tmp_path, timeout_seconds=3)
    try:
        hung_pool = pool._pool
        hung_pool.submit(_slow_render, 3600)  # a render that never ends holds the only process
        processes = list(hung_pool._processes.values())  # type: ignore[union-attr]
        with pytest.raises(StepError) as timed_out:
            pool(sample_inputs)  # queued behind it: times out, and the pool is replaced
        assert timed_out.value.error_class is ErrorClass.RESOURCES

        started = time.monotonic()
        assert pool(sample_inputs).startswith(b"%PDF")  # the fresh pool renders at once
        assert time.monotonic() - started < 3
        for process in processes:
            process.join(timeout=5)
        assert processes and not any(p.is_alive() for p in processes)  # stopped, not left running
    finally:
        pool.shutdown()
