"""Metrics follow Prometheus conventions and are fed by real step results and order rows."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from checks.base import CheckResult, Runbook, Status
from checks.database import DatabaseCheck
from checks.orders import OrdersCheck
from fulfilment.errors import ErrorClass
from fulfilment.models import Order, OrderStatus, Outcome, Step, transaction, utcnow
from fulfilment.recording import StepResult
from healer import db
from healer.config import Settings
from healer.daemon import Daemon
from healer.health.metrics import Metrics
from healer.health.monitor import HealthMonitor
from healer.jobs.scheduler import JobState
from tests.fakes.db_fixtures import unreachable_pg_url


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_known_label_sets_exist_at_zero_from_start_up() -> None:
    found = samples(Metrics(CollectorRegistry()))

    assert found[("healer_order_step_failures_total", (("error_class", "s3_auth"), ("step", "migrate_files")))] == 0
    assert found[("healer_order_completions_total", (("outcome", "completed"),))] == 0
    assert found[("healer_order_completions_total", (("outcome", "needs_attention"),))] == 0
    assert found[("healer_order_step_duration_seconds_count", (("step", "render"),))] == 0
    assert found[("healer_build_info", (("version", __import__("healer").__version__),))] == 1
    assert any(name == "process_resident_memory_bytes" for name, _ in found)


def test_step_results_feed_counters_and_histograms() -> None:
    metrics = Metrics(CollectorRegistry())
    order = uuid.uuid4()
    metrics.observe_step(StepResult(order, Step.EMAIL, Outcome.FAILED, 0.2, OrderStatus.PDF_RENDERED,
                                    ErrorClass.EMAIL_TRANSIENT, "503"))
    metrics.observe_step(StepResult(order, Step.EMAIL, Outcome.OK, 0.1, OrderStatus.COMPLETED,
                                    completion_latency_seconds=42.0))
    metrics.observe_step(StepResult(order, Step.RENDER, Outcome.WAITING, 0.0, OrderStatus.FILES_MIGRATED))

    found = samples(metrics)
    assert found[("healer_order_step_failures_total", (("error_class", "email_transient"), ("step", "email")))] == 1
    assert found[("healer_order_step_duration_seconds_count", (("step", "email"),))] == 2
    assert found[("healer_order_step_duration_seconds_count", (("step", "render"),))] == 0
    assert found[("healer_order_completions_total", (("outcome", "completed"),))] == 1
    assert found[("healer_order_completion_latency_seconds_sum", ())] == 42.0


@dataclass
class State:
    name: str
    result: CheckResult | None
    last_success: datetime | None


def test_check_and_job_state_is_read_at_scrape_time() -> None:
    metrics = Metrics(CollectorRegistry())
    passed = utcnow()
    current = [State("s3", CheckResult("s3", Status.OK, 0.05, "fine", runbook=Runbook.S3_PERMISSION), passed),
               State("docker", None, None)]
    metrics.watch_checks(lambda: current)
    metrics.watch_jobs(lambda: [JobState("worker", 2.0, 1700000000.0, None, 3, 0)])

    assert samples(metrics)[("healer_check_up", (("check", "s3"),))] == 1
    current[0].result = CheckResult("s3", Status.FAILING, 0.05, "403", runbook=Runbook.S3_PERMISSION)
    found = samples(metrics)
    assert found[("healer_check_up", (("check", "s3"),))] == 0
    assert found[("healer_check_status", (("check", "s3"), ("status", "failing")))] == 1
    assert not [key for key in found if ("check", "docker") in key[1]]  # not probed yet: no sample of any kind
    assert found[("healer_check_last_success_timestamp_seconds", (("check", "s3"),))] == passed.timestamp()
    assert found[("healer_job_last_success_timestamp_seconds", (("job", "worker"),))] == 1700000000.0


def check_samples(metrics: Metrics, check: str) -> dict[str, float]:
    """healer_check_up and each healer_check_status of one check, by `up` and status."""
    found = samples(metrics)
    statuses = {dict(labels)["status"]: value for (name, labels), value in found.items()
                if name == "healer_check_status" and dict(labels)["check"] == check}
    up = found.get(("healer_check_up", (("check", check),)))
    return {**statuses, **({"up": up} if up is not None else {})}


def test_check_status_has_a_series_per_status_and_up_is_1_only_when_ok() -> None:
    metrics = Metrics(CollectorRegistry())
    state = State("disk", None, None)
    metrics.watch_checks(lambda: [state])
    zeros = {"ok": 0.0, "warning": 0.0, "failing": 0.0, "disabled": 0.0, "skipped": 0.0}

    seen = {}
    for status in Status:
        state.result = CheckResult("disk", status, 0.01, "detail")
        seen[status.value] = check_samples(metrics, "disk")

    assert seen == {
        "ok": {**zeros, "ok": 1.0, "up": 1.0},
        "warning": {**zeros, "warning": 1.0, "up": 0.0},  # 10% free: alertable, no longer "up"
        "failing": {**zeros, "failing": 1.0, "up": 0.0},
        "disabled": {**zeros, "disabled": 1.0, "up": 0.0},
        "skipped": {**zeros, "skipped": 1.0},  # no up sample: the check it depends on pages
    }


def test_a_check_not_run_yet_exports_no_status_at_all() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.watch_checks(lambda: [State("docker", None, None)])

    assert check_samples(metrics, "docker") == {}


def test_the_runbook_base_is_an_info_metric_only_when_given() -> None:
    given = samples(Metrics(CollectorRegistry(), runbook_base_url="https://ops.shop.example/runbook"))
    bare = samples(Metrics(CollectorRegistry()))

    assert given[("healer_runbook_info", (("base_url", "https://ops.shop.example/runbook"),))] == 1
    assert not [name for name, _ in bare if name == "healer_runbook_info"]


def test_the_daemon_exports_the_runbook_base_of_its_settings(tmp_path: Path) -> None:
    env = {"HEALER_DATA_DIR": str(tmp_path), "STRIPE_SECRET_KEY": "sk_test_runbook",
           "STRIPE_WEBHOOK_SECRET": "whsec_runbook"}
    configured = Daemon(Settings.from_env({**env, "HEALER_RUNBOOK_BASE_URL": "https://ops.shop.example/runbook"}))
    try:
        exported = samples(configured.metrics)
    finally:
        configured.shutdown()
    default = Daemon(Settings.from_env({**env, "HEALER_OPS_HOST": "10.0.0.7", "HEALER_OPS_PORT": "9181"}))
    try:
        by_default = samples(default.metrics)
    finally:
        default.shutdown()

    assert exported[("healer_runbook_info", (("base_url", "https://ops.shop.example/runbook"),))] == 1
    assert by_default[("healer_runbook_info", (("base_url", "http://10.0.0.7:9181/runbook"),))] == 1


def test_a_skipped_check_exports_no_up_sample_so_that_it_cannot_page(sessions) -> None:  # type: ignore[no-untyped-def]
    # The real chain: the orders check skipped by a monitor whose database check fails.
    monitor = HealthMonitor([
        DatabaseCheck(engine=db.make_engine(unreachable_pg_url()), failure_threshold=1),
        OrdersCheck(sessions=sessions),
    ])
    metrics = Metrics(CollectorRegistry())
    metrics.watch_checks(monitor.reports)

    results = monitor.run_all()

    found = samples(metrics)
    assert results["orders"].status is Status.SKIPPED
    assert found[("healer_check_up", (("check", "database"),))] == 0
    assert ("healer_check_up", (("check", "orders"),)) not in found
    assert found[("healer_check_status", (("check", "orders"), ("status", "skipped")))] == 1
    assert found[("healer_check_status", (("check", "orders"), ("status", "failing")))] == 0
    assert found[("healer_check_status", (("check", "database"), ("status", "failing")))] == 1
    assert ("healer_check_duration_seconds", (("check", "orders"),)) not in found


def test_order_figures_come_from_one_cached_query(sessions) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    with transaction(sessions) as session:
        for status, paid_ago in [("completed", 5000), ("paid", 4000), ("pdf_rendered", 60),
                                 ("needs_attention", 9000), ("pending_payment", None)]:
            session.add(Order(email="a@example.com", amount_cents=100, currency="eur", template="a4-portrait",
                              status=status, paid_at=None if paid_ago is None else now - timedelta(seconds=paid_ago)))
    metrics = Metrics(CollectorRegistry())
    figures = metrics.watch_orders(sessions, sla_seconds=600, ttl_seconds=60)

    first, second = samples(metrics), samples(metrics)

    orders_only = lambda found: {k: v for k, v in found.items() if "order" in k[0]}  # noqa: E731
    assert orders_only(first) == orders_only(second) and figures.queries == 1
    assert first[("healer_orders", (("status", "paid"),))] == 1
    assert first[("healer_orders", (("status", "refunded"),))] == 0
    assert first[("healer_orders_stuck", ())] == 1  # the paid one; needs_attention is counted apart
    assert 3990 < first[("healer_oldest_stuck_order_age_seconds", ())] < 4100


def _add_order(sessions, status: str) -> None:  # type: ignore[no-untyped-def]
    with transaction(sessions) as session:
        session.add(Order(email="a@example.com", amount_cents=100, currency="eur", template="a4-portrait",
                          status=status))


def test_a_scrape_never_waits_for_the_order_query_once_a_snapshot_exists(sessions, pg_engine) -> None:  # type: ignore[no-untyped-def]
    _add_order(sessions, "paid")
    metrics = Metrics(CollectorRegistry())
    figures = metrics.watch_orders(sessions, sla_seconds=600, ttl_seconds=0.2)
    assert samples(metrics)[("healer_orders", (("status", "paid"),))] == 1  # the first scrape waits for it
    _add_order(sessions, "paid")
    time.sleep(0.3)
    # A real slow query: another transaction holds a lock that blocks every read of the table.
    with pg_engine.connect() as locker:
        locker.execute(text("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        stale = samples(metrics)  # starts the refresh, which waits on the lock; the scrape does not
        again = samples(metrics)  # the refresh still runs: no second one
        waited = time.monotonic() - started
        assert figures._refreshing is not None and figures._refreshing.is_alive()
        locker.rollback()
    assert waited < 1.0
    assert stale[("healer_orders", (("status", "paid"),))] == again[("healer_orders", (("status", "paid"),))] == 1
    figures.wait_for_refresh(timeout=10)
    # The next scrape has the figures as the refresh found them: at most one interval behind.
    assert samples(metrics)[("healer_orders", (("status", "paid"),))] == 2
    assert figures.queries == 2


def test_figures_are_refreshed_at_most_once_per_interval(sessions) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics(CollectorRegistry())
    figures = metrics.watch_orders(sessions, sla_seconds=600, ttl_seconds=0.5)
    for _ in range(20):
        samples(metrics)
        figures.wait_for_refresh(timeout=10)
    assert figures.queries == 1
    time.sleep(0.6)
    for _ in range(20):
        samples(metrics)
        figures.wait_for_refresh(timeout=10)
    assert figures.queries == 2


def test_order_series_are_absent_once_a_refresh_finds_the_database_down(sessions) -> None:  # type: ignore[no-untyped-def]
    _add_order(sessions, "paid")
    metrics = Metrics(CollectorRegistry())
    figures = metrics.watch_orders(sessions, sla_seconds=600, ttl_seconds=0.1)
    assert ("healer_orders", (("status", "paid"),)) in samples(metrics)
    outage = db.make_engine(unreachable_pg_url())
    try:
        figures.sessions = db.make_session_factory(outage)  # the database goes away
        time.sleep(0.2)
        samples(metrics)  # the last snapshot, and a refresh that fails
        figures.wait_for_refresh(timeout=30)
        found = samples(metrics)
    finally:
        outage.dispose()
    assert not [key for key in found if key[0].startswith(("healer_orders", "healer_orphan_payments"))]
