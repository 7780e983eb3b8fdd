"""Prometheus metrics, recorded here from what checks and steps return.

Counters and histograms are fed by `observe_*` calls. Everything that describes current state
(checks, jobs, orders, unresolved orphan payments and reconciliation runs that missed webhooks, in
the database) is computed by collectors at scrape time, the database figures from a snapshot: one
aggregate query and two small reads, refreshed in the background at most once per `ttl_seconds`,
however often or by how many scrapers the endpoint is read, and never waited for by a scrape but
the first (`OrderFigures`). So every daemon sharing the database reports the same figures,
whichever of them (or an operator's CLI) changed them. The registry is injected, so each test
gets a fresh one.

A completion's latency carries its trace id as an exemplar (when tracing is on): from the histogram
on a dashboard to the trace of one slow order. Exemplars exist only in the OpenMetrics format, which
`exposition` answers when the scraper's Accept header asks for it (Prometheus does).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from checks.base import CheckResult, Status
from fulfilment.errors import ErrorClass
from fulfilment.models import Order, OrderStatus, Outcome, Step, utcnow
from fulfilment.pipeline import ACTIVE
from fulfilment.recording import StepResult
from healer import __version__
from healer.db import tally
from healer.health.coalesce import Coalesced
from healer.jobs.canary_results import CanaryState, PhaseOutcome
from healer.jobs.scheduler import JobState
from healer.sendgrid.events import EmailEventLabel
from healer.stripe.orphans import count_unresolved
from healer.stripe.streak import STREAK_LIMIT, missed_streak

log = logging.getLogger(__name__)

# Steps take from milliseconds (a verified payment) to minutes (a render of a huge photo).
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Paid to emailed: seconds when all is well, up to hours when an order waits out an outage.
LATENCY_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600, 86400)
COMPLETION_OUTCOMES = ("completed", "needs_attention")
# Exposition formats whose concurrent scrapes share a render (text, OpenMetrics, a version or two).
MAX_SHARED_FORMATS = 4


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, runbook_base_url: str | None = None) -> None:
        """`runbook_base_url`: where the alerts' runbook links point (Settings.runbook_base_url); the
        daemon passes it, and commands that export nothing need not."""
        # No `<name>_created` series. In the text format each child of a counter or histogram has one,
        # a gauge of when the process made it: a quarter of the samples a scrape renders (and of its
        # CPU), a series each in Prometheus, read by no dashboard or alert. The switch is the
        # client library's, for the whole process: the one that exports is the daemon.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.step_duration = Histogram(
            "healer_order_step_duration_seconds", "Duration of one order step attempt.",
            ["step"], buckets=STEP_BUCKETS, registry=r)
        self.step_failures = Counter(
            "healer_order_step_failures_total", "Failed order step attempts, by error class.",
            ["step", "error_class"], registry=r)
        self.completions = Counter(
            "healer_order_completions_total", "Orders that reached a final outcome.",
            ["outcome"], registry=r)
        self.completion_latency = Histogram(
            "healer_order_completion_latency_seconds", "Time from payment to the download email.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.reconcile_runs = Counter(
            "healer_reconcile_runs_total", "Stripe reconciliation runs, by result.", ["result"], registry=r)
        self.reconcile_last_success = Gauge(
            "healer_reconcile_last_success_timestamp_seconds",
            "When a reconciliation run last succeeded.", registry=r)
        self.remediations = Counter(
            "healer_remediations_total", "Self-healing actions taken, by action and result.",
            ["action", "result"], registry=r)
        # Fed by successful reconciliation runs, each payment once (healer.stripe.missed).
        self.payments_succeeded = Counter(
            "healer_reconcile_payments_succeeded_total",
            "Succeeded Stripe payments judged by reconciliation: those that reached healer by webhook "
            "first and those that did not.", registry=r)
        self.webhook_missed = Counter(
            "healer_webhook_missed_total",
            "Succeeded Stripe payments healer had no webhook for before reconciliation found them.", registry=r)
        self.webhook_events = Counter(
            "healer_webhook_events_total", "Stripe webhook deliveries, by event type and result.",
            ["type", "result"], registry=r)
        self.email_events = Counter(
            "healer_email_events_total", "SendGrid's email events (delivered, bounce...), each counted once.",
            ["event"], registry=r)
        Gauge("healer_build_info", "The running healer's version.", ["version"], registry=r).labels(
            __version__).set(1)
        if runbook_base_url is not None:
            # Alert rules read it in their runbook_url annotations, so that links follow the
            # configured base instead of an address written into dashboards/prometheus/alerts.yml.
            Gauge("healer_runbook_info", "Where alerts' runbook links point (HEALER_RUNBOOK_BASE_URL).",
                  ["base_url"], registry=r).labels(runbook_base_url).set(1)
        self._renders: dict[str, Coalesced[bytes]] = {}  # content type -> its shared render
        self._renders_lock = threading.Lock()
        self._zero_known_labels()

    def _zero_known_labels(self) -> None:
        """Known label sets exist from start-up, so rate() and absence alerts see them at 0."""
        for step in Step:
            self.step_duration.labels(step.value)
            for error_class in ErrorClass:
                self.step_failures.labels(step.value, error_class.value)
        for outcome in COMPLETION_OUTCOMES:
            self.completions.labels(outcome)
        for event in EmailEventLabel:  # the first bounce after a start is an increase, for its alert
            self.email_events.labels(event.value)
        for result in ("success", "failure"):
            self.reconcile_runs.labels(result)

    # -- fed by the worker -----------------------------------------------------------------------

    def observe_step(self, result: StepResult) -> None:
        if result.outcome is Outcome.WAITING and result.error_class is None:
            return  # a gated step did not run: no duration, no failure
        # A failure its check confirmed (WAITING with its class) did run: it counts here, though
        # not as one of the order's attempts.
        self.step_duration.labels(result.step.value).observe(result.duration_seconds)
        if result.error_class is not None:
            self.step_failures.labels(result.step.value, result.error_class.value).inc()
        if result.outcome is Outcome.GAVE_UP:
            self.completions.labels("needs_attention").inc()
        elif result.outcome is Outcome.OK and result.status is OrderStatus.COMPLETED:
            self.completions.labels("completed").inc()
            if result.completion_latency_seconds is not None:
                exemplar = {"trace_id": result.trace_id} if result.trace_id else None
                self.completion_latency.observe(result.completion_latency_seconds, exemplar)

    # -- state read at scrape time ---------------------------------------------------------------

    def watch_checks(self, states: Callable[[], Iterable[CheckState]]) -> None:
        self.registry.register(_ChecksCollector(states))

    def watch_jobs(self, jobs: Callable[[], Sequence[JobState]]) -> None:
        self.registry.register(_JobsCollector(jobs))

    def watch_leadership(self, roles: Callable[[], Mapping[str, bool]]) -> None:
        """healer_leader{job}: 1 on the replica leading each singleton role (Leadership.roles)."""
        self.registry.register(_LeadersCollector(roles))

    def watch_canary(self, state: Callable[[], CanaryState], interval_seconds: float) -> None:
        """healer_canary_*: the canary's latest run (healer.jobs.canary), run every `interval_seconds`
        (HEALER_CANARY_INTERVAL_SECONDS), its phases only while that run is current (see _CanaryCollector)."""
        self.registry.register(_CanaryCollector(state, interval_seconds))

    def watch_orders(
        self, sessions: sessionmaker[Session], sla_seconds: int, ttl_seconds: float = 15.0
    ) -> OrderFigures:
        figures = OrderFigures(sessions, sla_seconds, ttl_seconds)
        self.registry.register(_OrdersCollector(figures))
        return figures

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """`GET /metrics`: body and content type. OpenMetrics (with exemplars) when the scraper's
        `accept` header asks for it, else the text format, as before."""
        encoder, content_type = choose_encoder(accept)
        if content_type.startswith(OPENMETRICS_CONTENT_TYPE.split(";")[0]):
            return self._rendered(content_type, encoder), content_type
        return self._rendered(CONTENT_TYPE_LATEST, generate_latest), CONTENT_TYPE_LATEST

    def _rendered(self, content_type: str, encoder: Callable[[CollectorRegistry], bytes]) -> bytes:
        """The exposition, rendered once for the scrapes that ask for it together (`Coalesced`),
        per format. The formats come from the scraper's header (a version in it): past a few,
        a format is rendered for each scrape rather than keep one more sharer."""
        with self._renders_lock:
            render = self._renders.get(content_type)
            if render is None and len(self._renders) < MAX_SHARED_FORMATS:
                render = self._renders[content_type] = Coalesced(partial(encoder, self.registry))
        return render() if render is not None else encoder(self.registry)


class CheckState(Protocol):
    """What the metrics need of a check: its latest reported result and its last success."""

    @property
    def name(self) -> str: ...
    @property
    def result(self) -> CheckResult | None: ...
    @property
    def last_success(self) -> datetime | None: ...


class _ChecksCollector(Collector):
    def __init__(self, states: Callable[[], Iterable[CheckState]]) -> None:
        self.states = states

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("healer_check_up", "1 if the check is ok, 0 if it warns, fails or is disabled; "
                               "no sample while it is skipped or has not run.", labels=["check"])
        status = GaugeMetricFamily("healer_check_status", "1 for the check's current status, 0 for the "
                                   "others; no sample before its first run.", labels=["check", "status"])
        duration = GaugeMetricFamily("healer_check_duration_seconds", "Duration of the last probe.",
                                     labels=["check"])
        success = GaugeMetricFamily("healer_check_last_success_timestamp_seconds",
                                    "When the check last passed.", labels=["check"])
        for state in self.states():
            if state.last_success is not None:
                success.add_metric([state.name], state.last_success.timestamp())
            if state.result is None:
                continue  # not probed yet: no status to tell, rather than a false one
            current = state.result.status
            # Every status, the others at 0 (as kube-state-metrics' kube_pod_status_phase): a rule
            # selects the one it means, and a series never vanishes when the status changes.
            for each in Status:
                status.add_metric([state.name, each.value], 1 if each is current else 0)
            if current is Status.SKIPPED:
                # A skipped check's up of 0 would page for a cause whose own check already does.
                continue
            up.add_metric([state.name], 1 if current is Status.OK else 0)
            duration.add_metric([state.name], state.result.latency_seconds)
        return [up, status, duration, success]


class _JobsCollector(Collector):
    def __init__(self, jobs: Callable[[], Sequence[JobState]]) -> None:
        self.jobs = jobs

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("healer_job_last_success_timestamp_seconds",
                                   "When each scheduled job last succeeded (a singleton job: on the replica "
                                   "leading it).", labels=["job"])
        for job in self.jobs():
            # A replica that lost a job's leadership keeps its last success: exported, it would age
            # into the job's alert on a replica that is not meant to run it.
            if job.last_success is not None and not job.following:
                family.add_metric([job.name], job.last_success)
        return [family]


class _LeadersCollector(Collector):
    def __init__(self, roles: Callable[[], Mapping[str, bool]]) -> None:
        self.roles = roles

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("healer_leader", "1 if this replica leads the singleton job (one replica "
                                   "at a time runs it), 0 if another does or this replica's database check "
                                   "fails.", labels=["job"])
        for role, leading in sorted(self.roles().items()):
            family.add_metric([role], 1 if leading else 0)
        return [family]


class _CanaryCollector(Collector):
    """Like blackbox_exporter's probe_success and probe_duration_seconds, per phase: 1 or 0, and
    seconds, for the phases the latest run reached (no sample for one it skipped), with how many
    runs in a row have failed. They describe the latest run, so they last while it is current: until
    the run after next is due (two intervals, and a minute for the run itself). A daemon whose latest
    run is older (it waits on a failing dependency, or another replica runs the canary now) says
    nothing of them, so no stale failure keeps an alert firing. When the canary last passed stays,
    and so does the interval: the "not succeeded for too long" alert compares the two, and needs
    them most when no run is current. The alerts read the interval rather than assume the default,
    so they follow a shop's HEALER_CANARY_INTERVAL_SECONDS."""

    def __init__(self, state: Callable[[], CanaryState], interval_seconds: float) -> None:
        self.state = state
        self.interval_seconds = interval_seconds
        self.fresh_seconds = 2 * interval_seconds + 60

    def collect(self) -> Iterable[Metric]:
        success = GaugeMetricFamily("healer_canary_success", "1 if the canary's phase passed in its latest "
                                    "run, 0 if it failed; no sample for a phase not reached.", labels=["phase"])
        duration = GaugeMetricFamily("healer_canary_duration_seconds", "How long the phase took in the "
                                     "canary's latest run.", labels=["phase"])
        failed = GaugeMetricFamily("healer_canary_failed_runs_in_a_row",
                                   "Canary runs in a row, the latest back, that failed (0 once one passes); "
                                   "no sample once the latest run is two intervals old.")
        last = GaugeMetricFamily("healer_canary_last_success_timestamp_seconds",
                                 "When a canary run last passed every phase.")
        interval = GaugeMetricFamily("healer_canary_interval_seconds",
                                     "How often the scheduled canary runs (HEALER_CANARY_INTERVAL_SECONDS).",
                                     value=self.interval_seconds)
        state = self.state()
        if state.last_success_at is not None:
            last.add_metric([], state.last_success_at.timestamp())
        run = state.latest
        if run is not None and (utcnow() - run.finished_at).total_seconds() <= self.fresh_seconds:
            failed.add_metric([], state.failed_in_a_row)
            for phase in run.phases:
                if phase.outcome is PhaseOutcome.SKIPPED:
                    continue
                success.add_metric([phase.phase.value], 1 if phase.outcome is PhaseOutcome.OK else 0)
                duration.add_metric([phase.phase.value], phase.duration_seconds)
        return [success, duration, failed, last, interval]


@dataclass(frozen=True)
class OrderSnapshot:
    by_status: dict[str, int]
    stuck: int
    oldest_stuck_age_seconds: float
    orphan_payments: int  # unresolved ones
    webhook_missed_streak: int  # reconciliation runs in a row that found missed payments
    taken_at: float


class OrderFigures:
    """Order counts from the database's tally (healer.db.tally), the stuck orders, the unresolved
    orphan payments and the reconciliation runs in a row that missed webhooks, refreshed at most
    once per `ttl_seconds`: none of it reads more than the open orders.

    Only the first scrape waits for the query. Afterwards a scrape answers the last snapshot at once
    and, when that snapshot is `ttl_seconds` old, starts one refresh in a background thread for the
    next scrape: so a scrape never waits on the database (a slow or hanging one included), the
    figures are at most one scrape interval behind, and however many scrapers there are, one query
    runs at a time. A refresh that fails drops the snapshot, so the next scrapes have no order
    series (absent, not stale; the database check says why) until one succeeds again. With
    `ttl_seconds=0` every scrape reads afresh, waiting for it (what tests of the figures want)."""

    def __init__(self, sessions: sessionmaker[Session], sla_seconds: int, ttl_seconds: float) -> None:
        self.sessions = sessions
        self.sla = timedelta(seconds=sla_seconds)
        self.ttl = ttl_seconds
        self.queries = 0
        self._snapshot: OrderSnapshot | None = None
        self._tried_at: float | None = None  # when the latest query started, whatever came of it
        self._unavailable = False  # the last query failed: said once, not on every scrape
        self._lock = threading.Lock()  # one query at a time
        self._refreshing: threading.Thread | None = None

    def snapshot(self) -> OrderSnapshot | None:
        if self.ttl <= 0 or self._tried_at is None:
            with self._lock:
                if self.ttl <= 0 or self._tried_at is None:
                    self._refresh()
        elif time.monotonic() - self._tried_at >= self.ttl:
            self._refresh_in_background()
        return self._snapshot

    def _refresh_in_background(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # a refresh runs already
        try:
            if self._tried_at is not None and time.monotonic() - self._tried_at < self.ttl:
                return  # another scrape started and finished one since this one looked
            self._tried_at = time.monotonic()  # one thread per interval, even if this one is slow
            thread = threading.Thread(target=self._refresh_and_release, name="order-metrics", daemon=True)
            self._refreshing = thread
            thread.start()
        except BaseException:
            self._lock.release()
            raise

    def _refresh_and_release(self) -> None:
        try:
            self._refresh()
        finally:
            self._lock.release()

    def wait_for_refresh(self, timeout: float | None = None) -> None:
        """Until the background refresh started last (if any) has finished."""
        if self._refreshing is not None:
            self._refreshing.join(timeout)

    def _refresh(self) -> None:
        """The query, under `_lock` (held by the caller)."""
        self._tried_at = time.monotonic()
        try:
            self._snapshot = self._query()
        except SQLAlchemyError as error:
            log.log(logging.DEBUG if self._unavailable else logging.WARNING,
                    "Order metrics unavailable: %s", str(error).splitlines()[0])
            self._unavailable, self._snapshot = True, None
            return
        if self._unavailable:
            self._unavailable = False
            log.info("Order metrics available again")

    def _query(self) -> OrderSnapshot:
        """Counts from the tally the database keeps (healer.db.tally: no order is read); the stuck
        ones from the few open orders, found by their status's index."""
        now = utcnow()
        with self.sessions() as session:
            counted, tally_rows = tally.counts(session)
            stuck_count, oldest = session.execute(
                select(func.count(), func.min(Order.paid_at)).where(
                    Order.status.in_(ACTIVE), Order.is_canary.is_(False),
                    Order.paid_at.is_not(None), Order.paid_at < now - self.sla)
            ).one()
            orphans = count_unresolved(session)
            streak = missed_streak(session)
        if tally_rows > tally.FOLD_AFTER_ROWS:
            with self.sessions() as session, session.begin():
                tally.fold(session)
        self.queries += 1
        by_status = {status.value: counted.get(status.value, 0) for status in OrderStatus}
        age = (now - _aware(oldest)).total_seconds() if oldest is not None else 0.0
        return OrderSnapshot(by_status, stuck_count, age, orphans, streak, time.monotonic())


def _aware(value: datetime | str) -> datetime:
    # SQLite's MIN() hands back a string or naive datetime, bypassing the column type.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class _OrdersCollector(Collector):
    def __init__(self, figures: OrderFigures) -> None:
        self.figures = figures

    def collect(self) -> Iterable[Metric]:
        snapshot = self.figures.snapshot()
        if snapshot is None:
            return []
        orders = GaugeMetricFamily("healer_orders", "Orders by status.", labels=["status"])
        for status, count in snapshot.by_status.items():
            orders.add_metric([status], count)
        stuck = GaugeMetricFamily("healer_orders_stuck",
                                  "Paid orders not completed within HEALER_ORDER_SLA_SECONDS.",
                                  value=snapshot.stuck)
        oldest = GaugeMetricFamily("healer_oldest_stuck_order_age_seconds",
                                   "Age since payment of the oldest stuck order (0 when none).",
                                   value=snapshot.oldest_stuck_age_seconds)
        orphans = GaugeMetricFamily("healer_orphan_payments",
                                    "Succeeded payments with no matching order, not yet resolved "
                                    "(refunded, claimed by an order, or dealt with by an operator).",
                                    value=snapshot.orphan_payments)
        streak = GaugeMetricFamily("healer_webhook_missed_runs_in_a_row",
                                   "Reconciliation runs in a row, the newest back, that found succeeded "
                                   "payments healer had no webhook for (runs that saw no sale are passed "
                                   f"over; counted up to {STREAK_LIMIT}).", value=snapshot.webhook_missed_streak)
        return [orders, stuck, oldest, orphans, streak]
