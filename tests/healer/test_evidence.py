"""Failures are evidence: a step's failure on a dependency runs that dependency's checks at once, in
full, and a failure they confirm makes the order wait instead of spending its attempt.

The monitor's own rules (threshold, rate limit, shared probes) use the stand-in checks of
test_health; the chain from a denied S3 write to a waiting order uses the real S3 check and the real
pipeline, with moto behind tests/fakes/s3_proxy.py answering S3's own AccessDenied.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from checks.base import CheckResult, Status
from checks.s3 import S3Check
from fulfilment.errors import ErrorClass
from fulfilment.models import OrderStatus, Outcome, Step
from fulfilment.recording import WAITING_PREFIX
from fulfilment.storage import S3Store
from healer.health.metrics import Metrics
from healer.health.monitor import HealthMonitor
from tests.eventually import eventually
from tests.fakes.s3_fixtures import moto_client
from tests.fakes.s3_proxy import WRITES, S3FaultProxy
from tests.fakes.shop_fixtures import Shop
from tests.fulfilment.test_pipeline import complete
from tests.healer.test_health import Peer, stand_in

# -- the monitor ------------------------------------------------------------------------------------


def test_a_confirmed_failure_is_reported_at_once_whatever_the_threshold() -> None:
    peer = Peer()
    monitor = HealthMonitor([stand_in("s3", peer, failure_threshold=3)])
    monitor.run("s3")
    seen: list[tuple[Status, Status | None]] = []
    monitor.add_listener(lambda new, old: seen.append((new.status, old.status if old else None)))
    peer.set(Status.FAILING, "access denied: put healthcheck/x")

    reason = monitor.confirm(("s3",))

    assert reason == "s3 failing: access denied: put healthcheck/x"
    assert monitor.results()["s3"].status is Status.FAILING
    assert monitor.gate(("s3",)) == reason
    assert seen == [(Status.FAILING, Status.OK)]  # remediation and readiness see it as a failure
    peer.set(Status.OK)
    assert monitor.run("s3").status is Status.OK  # and the scheduled run that finds it green ends it


def test_a_confirmation_that_passes_lets_the_failure_count() -> None:
    monitor = HealthMonitor([stand_in("s3"), stand_in("assets")])

    assert monitor.confirm(("s3", "assets")) is None
    assert monitor.confirm(("no-such-check",)) is None  # a dependency not watched here blames nothing


def test_concurrent_confirmations_share_one_probe_and_the_next_waits_its_turn() -> None:
    peer = Peer(Status.FAILING, "denied", delay=0.3)
    monitor = HealthMonitor([stand_in("s3", peer)], confirm_every_seconds=60)
    reasons: list[str | None] = []
    callers = [threading.Thread(target=lambda: reasons.append(monitor.confirm(("s3",)))) for _ in range(6)]

    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    again = monitor.confirm(("s3",))

    assert peer.probes == 1
    assert reasons == ["s3 failing: denied"] * 6 and again == "s3 failing: denied"


def test_a_confirmation_probes_again_once_its_interval_has_passed() -> None:
    peer = Peer(Status.FAILING, "denied")
    monitor = HealthMonitor([stand_in("s3", peer)], confirm_every_seconds=0.2)
    monitor.confirm(("s3",))

    eventually(lambda: monitor.confirm(("s3",)) and peer.probes == 2, timeout=5,
               what="a second confirming probe after confirm_every_seconds")


# -- the real s3 check --------------------------------------------------------------------------------


def test_denied_writes_are_seen_by_a_confirmation_and_by_every_run_while_failing(
    shop: Shop, s3_fault_proxy: S3FaultProxy
) -> None:
    # The round trip is due every 10 minutes: only its first probe and a confirmation make one.
    check = S3Check(client=moto_client(s3_fault_proxy.url), bucket=shop.s3.bucket, round_trip_every_seconds=600)
    monitor = HealthMonitor([check])
    monitor.run("s3")
    s3_fault_proxy.set_fault(403, methods=WRITES)

    scheduled = monitor.run("s3")
    reason = monitor.confirm(("s3",))
    while_failing = monitor.run("s3")
    s3_fault_proxy.clear()
    restored = monitor.run("s3")

    assert scheduled.status is Status.OK  # the cheap listing still passes: why confirmation exists
    assert reason is not None and reason.startswith("s3 failing: access denied: put ")
    assert "AccessDenied" in reason
    assert while_failing.status is Status.FAILING and "access denied" in while_failing.detail
    assert restored.status is Status.OK and "write/copy/delete ok just now" in restored.detail


# -- the pipeline ---------------------------------------------------------------------------------------


def _s3_monitor(shop: Shop, proxy: S3FaultProxy) -> HealthMonitor:
    return HealthMonitor([S3Check(client=moto_client(proxy.url), bucket=shop.s3.bucket,
                                  round_trip_every_seconds=600)])


def test_a_failure_its_check_confirms_waits_without_spending_the_attempt(
    shop: Shop, s3_fault_proxy: S3FaultProxy
) -> None:
    monitor = _s3_monitor(shop, s3_fault_proxy)
    monitor.run("s3")  # green, round trip done: the schedule alone would not look again for 10 min
    store = S3Store(moto_client(s3_fault_proxy.url), shop.s3.bucket)
    pipeline = shop.pipeline(gate=monitor.gate, confirm=monitor.confirm, store=store, max_attempts=1)
    order_id = shop.paid_order()
    s3_fault_proxy.set_fault(403, methods=WRITES)

    status = complete(pipeline, order_id)

    order = shop.order(order_id)
    assert status is OrderStatus.PAID and order.attempts == 0  # one attempt allowed, none spent
    assert order.last_error is not None and order.last_error.startswith(
        f"{WAITING_PREFIX}s3_auth confirmed by its check: s3 failing: access denied")
    assert order.last_error_class is ErrorClass.S3_AUTH
    line = shop.events(order_id)[-1]
    assert (line.step, line.outcome, line.error_class) == (Step.MIGRATE_FILES, Outcome.WAITING, ErrorClass.S3_AUTH)
    assert "(the step: copy " in line.message and "AccessDenied" in line.message
    metrics = Metrics(CollectorRegistry())
    for result in shop.results:
        metrics.observe_step(result)
    assert metrics.registry.get_sample_value(  # a failure that happened, though not an attempt
        "healer_order_step_failures_total", {"step": "migrate_files", "error_class": "s3_auth"}) == 1


def test_a_failure_its_check_does_not_confirm_counts_as_an_attempt(
    shop: Shop, s3_fault_proxy: S3FaultProxy
) -> None:
    monitor = _s3_monitor(shop, s3_fault_proxy)
    monitor.run("s3")
    store = S3Store(moto_client(s3_fault_proxy.url), shop.s3.bucket)
    pipeline = shop.pipeline(gate=monitor.gate, confirm=monitor.confirm, store=store, max_attempts=3)
    order_id = shop.paid_order()
    # Denied for the order's keys only: the check's own round trip under healthcheck/ passes.
    s3_fault_proxy.set_fault(403, methods=WRITES, path_contains="/orders/")

    complete(pipeline, order_id)

    order = shop.order(order_id)
    assert order.attempts == 1 and order.last_error_class is ErrorClass.S3_AUTH
    assert not order.last_error or not order.last_error.startswith(WAITING_PREFIX)
    assert shop.events(order_id)[-1].outcome == Outcome.FAILED
    result: CheckResult = monitor.results()["s3"]
    assert result.status is Status.OK and "write/copy/delete ok just now" in result.detail
