"""Concurrent scrapes share a render, and none gets one that began before it arrived."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry, Counter

from healer.health.coalesce import Coalesced
from healer.health.metrics import Metrics
from tests.eventually import eventually


def test_callers_that_arrive_during_a_run_share_the_next_one_and_not_the_one_in_progress() -> None:
    value, release, entered = [0], threading.Event(), threading.Semaphore(0)

    def read() -> int:
        entered.release()
        release.wait(10)
        return value[0]

    shared = Coalesced(read)
    with ThreadPoolExecutor(9) as pool:
        first = pool.submit(shared)
        assert entered.acquire(timeout=10)  # the first run is under way, having read nothing yet
        value[0] = 1  # a change the first run may miss; every later caller must see it
        later = [pool.submit(shared) for _ in range(8)]
        eventually(lambda: shared._changed._waiters and len(shared._changed._waiters) == 8)  # type: ignore[attr-defined]
        release.set()
        results = [future.result(10) for future in later]
        first.result(10)
    assert results == [1] * 8
    assert shared.runs == 2  # eight callers, one run between them


def test_an_error_is_raised_to_its_caller_and_the_next_caller_runs_again() -> None:
    calls = [0]

    def read() -> int:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("collector broke")
        return calls[0]

    shared = Coalesced(read)
    try:
        shared()
    except RuntimeError:
        pass
    else:
        raise AssertionError("the error was swallowed")
    assert shared() == 2


def test_concurrent_scrapes_see_every_increment_made_before_they_asked() -> None:
    metrics = Metrics(CollectorRegistry())
    counter = Counter("bench_hits_total", "hits", registry=metrics.registry)

    def scrape_after_a_hit(_: int) -> tuple[float, bytes]:
        counter.inc()
        seen = counter._value.get()  # the count at the moment this scrape asks
        return seen, metrics.exposition("")[0]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(scrape_after_a_hit, range(64)))
    for seen, body in answers:
        line = next(x for x in body.decode().splitlines() if x.startswith("bench_hits_total "))
        assert float(line.split()[1]) >= seen
