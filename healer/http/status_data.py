"""What the operator's status page shows, read from sources that are cheap to ask every few seconds.

The checks come from the health monitor's cache (no probe runs for a page view); which singleton
work this replica leads comes from its leadership, the same reading as /health's `leader` (memory,
no query); each database section is one or two small queries over an index or a short key range;
nothing calls Stripe or S3.
A section whose query fails says so on its own (`Unavailable`) while the others still show: the
page must work best exactly when the database is what is broken.

Every string that reaches a page passes through the redactor here, once, whatever it came from
(an order's title, an exception's message, a check's detail); the templates escape it.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from prometheus_client import Counter
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from checks.base import Runbook, Status, Verdict
from checks.registry import CHECK_NAMES
from fulfilment.errors import ErrorClass, one_line
from fulfilment.models import OrderStatus, utcnow
from fulfilment.secrets import Redactor
from healer import orders
from healer.db.models import ReconcileRun, RunResult, WebhookEvent
from healer.health.monitor import CheckReport, HealthMonitor
from healer.jobs.canary_results import CanaryState
from healer.jobs.leadership import LeadershipView, Standing
from healer.remediation.audit import RemediationView, list_remediations
from healer.stripe.orphans import count_unresolved
from healer.stripe.webhook_events import WebhookResult

T = TypeVar("T")

ATTENTION_LIMIT = 20  # orders shown; `healer orders list --status needs_attention` has them all
REMEDIATION_LIMIT = 10
RECONCILE_RUNS = 10  # the newest runs read, by primary key, to find the latest success among them
WEBHOOK_WINDOW = timedelta(hours=24)
# HealerReconcileNotRun's threshold: reconciliation is late once no run has succeeded for this long
# (or three intervals, when the interval is longer).
RECONCILE_LATE_SECONDS = 1800.0
# Refusals happen before an event is stored, so only this daemon's counter knows of them.
REFUSALS = (WebhookResult.BAD_SIGNATURE, WebhookResult.NOT_CONFIGURED, WebhookResult.MALFORMED,
            WebhookResult.TOO_LARGE, WebhookResult.ERROR)

# docs/operations.md's headings, as /runbook (and GitHub) anchor them; tests check each exists.
RUNBOOK_ANCHORS: dict[str, str] = {
    Runbook.S3_PERMISSION.value: "runbook-1-s3-permission-denied",
    Runbook.S3_FILES_MISSING.value: "runbook-2-s3-files-missing",
    Runbook.PDF_GENERATION.value: "runbook-3-pdf-generation-failing",
    Runbook.EMAIL.value: "runbook-4-email-sending-failing",
    Runbook.DATABASE.value: "runbook-5-database-error",
    Runbook.RESOURCES.value: "runbook-6-memory-and-resource-issues",
}


@dataclass(frozen=True)
class PageConfig:
    """What the pages need beyond the operator context: built by healer.wiring from Settings."""

    order_sla_seconds: float = 600.0
    # None: reconciliation does not run here (no STRIPE_SECRET_KEY).
    reconcile_interval_seconds: float | None = None
    # This daemon's webhook deliveries since it started, by result (healer_webhook_events_total).
    webhook_deliveries: Callable[[], Mapping[str, int]] = dict
    # The canary job's state (healer.jobs.canary.CanaryJob.state); None: the canary is off here.
    canary: Callable[[], CanaryState] | None = None
    canary_interval_seconds: float | None = None
    # This replica's leadership (healer.jobs.leadership.Leadership.view), the one /health's `leader`
    # reads; None: no singleton roles here (leadership does not apply).
    leadership: Callable[[], LeadershipView] | None = None


@dataclass(frozen=True)
class Unavailable:
    """A section that could not be read (the database is down): the page says so and goes on."""

    reason: str


@dataclass(frozen=True)
class RunbookLink:
    label: str  # "1 S3 permission denied"
    anchor: str  # on /runbook


@dataclass(frozen=True)
class CheckRow:
    name: str
    status: str  # a checks.base.Status value, or "pending" before the first run
    critical: bool
    latency_seconds: float | None
    checked_at: datetime | None
    last_success: datetime | None
    detail: str
    remedy: str
    runbook: RunbookLink | None
    anchor: str  # the check's own section on /runbook

    @property
    def problem(self) -> bool:
        return self.status in (Status.FAILING, Status.WARNING)


@dataclass(frozen=True)
class MoneyView:
    orders: int
    oldest_paid_at: datetime | None
    oldest_age_seconds: float | None
    past_sla: bool
    amounts: tuple[tuple[str, int], ...]  # (currency, minor units), by currency


@dataclass(frozen=True)
class AttentionOrder:
    id: str
    title: str
    template: str
    paid_at: str | None
    attempts: int
    last_error_step: str | None
    last_error_class: str | None
    last_error: str | None
    runbook: RunbookLink | None


@dataclass(frozen=True)
class AttentionList:
    orders: tuple[AttentionOrder, ...]
    more: bool  # there are more than the page shows


@dataclass(frozen=True)
class ReconcileView:
    state: str  # off, never, running, ok, late, failing
    interval_seconds: float | None
    last_started_at: datetime | None
    last_result: str | None
    last_error: str | None
    payments_read: int
    orders_repaired: int
    orphans_found: int
    # The last run's succeeded payments judged, and those that reached healer by no webhook
    # (healer.stripe.missed): what tells a quiet shop from a broken webhook.
    payments_succeeded: int
    payments_missed: int
    last_success_at: datetime | None
    unresolved_orphans: int


@dataclass(frozen=True)
class WebhookView:
    state: str  # ok, quiet (nothing stored in the window), refused (this daemon refused deliveries)
    stored: tuple[tuple[str, int], ...]  # (result, events) in the window, all daemons
    last_received_at: datetime | None
    refused: tuple[tuple[str, int], ...]  # (result, deliveries) refused by this daemon since start
    window_hours: int


@dataclass(frozen=True)
class CanaryPhaseRow:
    phase: str
    outcome: str  # ok, failed, skipped
    seconds: float
    detail: str


@dataclass(frozen=True)
class CanaryView:
    state: str  # never (not run by this daemon yet), ok, failing
    interval_seconds: float | None
    last_run_at: datetime | None
    seconds: float
    phases: tuple[CanaryPhaseRow, ...]
    failed_phase: str | None
    error_class: str | None
    remedy: str
    runbook: RunbookLink | None
    last_success_at: datetime | None


@dataclass(frozen=True)
class RolesView:
    """Which singleton roles (reconcile, stuck, canary, containers) this replica leads, and why it
    does not lead the others. Each role is in exactly one of the tuples, in declaration order."""

    # alone: one process on SQLite, every role its own; leader: leads one role or more; follower:
    # leads none and the database answered; no_database: leads none, and some role's last try met
    # a database error (or the database check has failed since); stopping: shutting down, every
    # role given up.
    state: str
    leads: tuple[str, ...]
    follows: tuple[str, ...]  # another replica leads them
    no_database: tuple[str, ...]  # the database did not answer (Standing.NO_DATABASE): not led here, maybe elsewhere
    not_tried: tuple[str, ...]  # their work has not come up on this replica since it started
    released: tuple[str, ...]


@dataclass(frozen=True)
class StatusPage:
    generated_at: datetime
    verdict: str  # what `healer check` says: ok, warning, failing, unknown
    failing: tuple[str, ...]
    checks: tuple[CheckRow, ...]
    notices: tuple[str, ...]
    money: MoneyView | Unavailable
    attention: AttentionList | Unavailable
    remediations: tuple[RemediationView, ...] | Unavailable
    reconcile: ReconcileView | Unavailable
    webhooks: WebhookView | Unavailable
    canary: CanaryView | None = None  # None: the canary is off on this daemon
    roles: RolesView | None = None  # None: no singleton roles here (leadership does not apply)


@dataclass(frozen=True)
class OrderPage:
    order: orders.OrderView
    runbook: RunbookLink | None  # of its last error
    retryable: bool  # an operator's retry has something to do
    retry_message: str | None  # why there is no retry button, when there is none


# -- the status page ---------------------------------------------------------------------------------


def status_page(sessions: sessionmaker[Session], health: HealthMonitor | None, notices: tuple[str, ...],
                config: PageConfig, redact: Redactor) -> StatusPage:
    now = utcnow()
    reports = health.reports() if health is not None else []
    checks = tuple(sorted((check_row(report) for report in reports), key=_worst_first))
    page = StatusPage(
        generated_at=now,
        verdict=health.overall().value if health is not None else Verdict.UNKNOWN.value,
        failing=tuple(row.name for row in checks if row.status == Status.FAILING),
        checks=checks,
        notices=notices,
        money=_guarded(lambda: money_view(sessions, config.order_sla_seconds, now)),
        attention=_guarded(lambda: attention_list(sessions)),
        remediations=_guarded(lambda: tuple(list_remediations(sessions, limit=REMEDIATION_LIMIT))),
        reconcile=_guarded(lambda: reconcile_view(sessions, config.reconcile_interval_seconds, now)),
        webhooks=_guarded(lambda: webhook_view(sessions, config.webhook_deliveries(), now)),
        canary=canary_view(config.canary(), config.canary_interval_seconds) if config.canary else None,
        roles=roles_view(config.leadership()) if config.leadership else None,
    )
    return redacted(page, redact)


def _guarded(read: Callable[[], T]) -> T | Unavailable:
    try:
        return read()
    except SQLAlchemyError as error:
        return Unavailable(f"database unavailable: {one_line(error)}")


def _worst_first(row: CheckRow) -> int:
    # Problems at the top, where a phone shows them first; otherwise the monitor's display order.
    return {Status.FAILING.value: 0, Status.WARNING.value: 1}.get(row.status, 2)


def check_row(report: CheckReport) -> CheckRow:
    result = report.result
    runbook = runbook_link(report.check.runbook.value)
    anchor = f"check-{report.name}" if report.name in CHECK_NAMES else "checks"
    if result is None:
        return CheckRow(report.name, "pending", report.check.critical, None, None, report.last_success,
                        "not run yet", "", runbook, anchor)
    return CheckRow(report.name, result.status.value, report.check.critical, result.latency_seconds,
                    result.checked_at, report.last_success, result.detail, result.remedy, runbook, anchor)


def runbook_link(label: str | None) -> RunbookLink | None:
    """The runbook issue named by a check or an error class ("1 S3 permission denied"), if any."""
    anchor = RUNBOOK_ANCHORS.get(label or "")
    return RunbookLink(str(label), anchor) if anchor else None


def error_runbook(error_class: str | None) -> RunbookLink | None:
    if error_class is None:
        return None
    try:
        policy = ErrorClass(error_class).policy
    except ValueError:  # a class this version does not know (written by a newer one)
        return None
    return runbook_link(policy.runbook)


def money_view(sessions: sessionmaker[Session], sla_seconds: float, now: datetime) -> MoneyView:
    risk = orders.money_at_risk(sessions)
    age = risk.oldest_age_seconds(now)
    return MoneyView(risk.orders, risk.oldest_paid_at, age, age is not None and age > sla_seconds,
                     tuple(risk.amounts.items()))


def attention_list(sessions: sessionmaker[Session]) -> AttentionList:
    views = orders.list_orders(sessions, status=OrderStatus.NEEDS_ATTENTION, limit=ATTENTION_LIMIT + 1)
    shown = [AttentionOrder(v.id, v.title, v.template, v.paid_at, v.attempts, v.last_error_step,
                            v.last_error_class, v.last_error, error_runbook(v.last_error_class))
             for v in views[:ATTENTION_LIMIT]]
    return AttentionList(tuple(shown), more=len(views) > ATTENTION_LIMIT)


def reconcile_view(sessions: sessionmaker[Session], interval_seconds: float | None, now: datetime) -> ReconcileView:
    with sessions() as session:
        runs = session.scalars(select(ReconcileRun).order_by(ReconcileRun.id.desc()).limit(RECONCILE_RUNS)).all()
        orphans = count_unresolved(session)
    last = runs[0] if runs else None
    success = next((run.finished_at or run.started_at for run in runs if run.result is RunResult.SUCCESS), None)
    return ReconcileView(
        state=_reconcile_state(interval_seconds, last, success, now),
        interval_seconds=interval_seconds,
        last_started_at=last.started_at if last else None,
        last_result=last.result.value if last else None,
        last_error=last.error if last else None,
        payments_read=last.payments_read if last else 0,
        orders_repaired=last.orders_repaired if last else 0,
        orphans_found=last.orphans_found if last else 0,
        payments_succeeded=last.payments_succeeded if last else 0,
        payments_missed=last.payments_missed if last else 0,
        last_success_at=success,
        unresolved_orphans=orphans,
    )


def _reconcile_state(interval: float | None, last: ReconcileRun | None, success: datetime | None,
                     now: datetime) -> str:
    if interval is None:
        return "off"
    if last is None:
        return "never"
    if last.result is RunResult.RUNNING:
        return "running"
    if last.result is RunResult.FAILURE:
        return "failing"
    late_after = max(RECONCILE_LATE_SECONDS, 3 * interval)
    return "late" if success is None or (now - success).total_seconds() > late_after else "ok"


def webhook_view(sessions: sessionmaker[Session], deliveries: Mapping[str, int], now: datetime) -> WebhookView:
    # No index on received_at: this reads the table's rows of the window. Stripe sends a few events
    # per order, so that is a day's orders times a few, once per refresh.
    since = now - WEBHOOK_WINDOW
    with sessions() as session:
        rows = session.execute(
            select(WebhookEvent.result, func.count(), func.max(WebhookEvent.received_at))
            .where(WebhookEvent.received_at >= since).group_by(WebhookEvent.result)
        ).all()
    stored = tuple(sorted((str(result), int(count)) for result, count, _ in rows))
    newest = [orders.as_utc(at) for _, _, at in rows if at is not None]
    refused = tuple((result.value, deliveries[result.value]) for result in REFUSALS
                    if deliveries.get(result.value))
    state = "refused" if refused else ("ok" if stored else "quiet")
    return WebhookView(state, stored, max(newest, default=None), refused, int(WEBHOOK_WINDOW.total_seconds() // 3600))


def canary_view(state: CanaryState, interval_seconds: float | None) -> CanaryView:
    """The canary's latest run on this daemon (memory, not the database: its order is gone)."""
    run = state.latest
    if run is None:
        return CanaryView("never", interval_seconds, None, 0.0, (), None, None, "", None, state.last_success_at)
    failure = run.failure
    phases = tuple(CanaryPhaseRow(p.phase.value, p.outcome.value, p.duration_seconds, p.detail) for p in run.phases)
    return CanaryView(
        state="ok" if failure is None else "failing", interval_seconds=interval_seconds, last_run_at=run.started_at,
        seconds=run.duration_seconds, phases=phases,
        failed_phase=failure.phase.value if failure else None,
        error_class=failure.error_class.value if failure and failure.error_class else None,
        remedy=failure.remedy if failure else "", runbook=runbook_link(failure.runbook) if failure else None,
        last_success_at=state.last_success_at,
    )


def roles_view(leadership: LeadershipView) -> RolesView | None:
    """Where this replica stands on each singleton role; None when no role is declared."""
    if not leadership.standings:
        return None
    leads, no_database = leadership.having(Standing.LEADS), leadership.having(Standing.NO_DATABASE)
    released = leadership.having(Standing.RELEASED)
    if released:
        state = "stopping"
    elif leadership.sole:
        state = "alone"
    elif leads:
        state = "leader"
    else:
        state = "no_database" if no_database else "follower"
    return RolesView(state, leads, leadership.having(Standing.FOLLOWS), no_database,
                     leadership.having(Standing.NOT_TRIED), released)


def webhook_deliveries(counter: Counter) -> dict[str, int]:
    """healer_webhook_events_total summed over event types: deliveries by result since start."""
    totals: dict[str, int] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                result = sample.labels["result"]
                totals[result] = totals.get(result, 0) + int(sample.value)
    return totals


# -- an order's page ---------------------------------------------------------------------------------


def order_page(sessions: sessionmaker[Session], order_id: uuid.UUID, admin_enabled: bool,
               redact: Redactor) -> OrderPage | None:
    view = orders.story(sessions, order_id)
    if view is None:
        return None
    status = OrderStatus(view.status)
    nothing = orders.NOTHING_TO_RETRY.get(status)
    message = nothing
    if nothing is None and not admin_enabled:
        message = ("retry from this page is off: HEALER_ADMIN_TOKEN is not set on this daemon; "
                   "run `healer orders retry ID` where the daemon runs")
    page = OrderPage(view, error_runbook(view.last_error_class), retryable=nothing is None and admin_enabled,
                     retry_message=message)
    return redacted(page, redact)


# -- redaction -----------------------------------------------------------------------------------------


def redacted(value: T, redact: Redactor) -> T:
    """`value` with every string in it redacted: dataclasses, tuples and dicts are rebuilt."""
    return cast(T, _redacted(value, redact))


def _redacted(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _redacted(getattr(value, f.name), redact) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple):
        return tuple(_redacted(item, redact) for item in value)
    if isinstance(value, list):
        return [_redacted(item, redact) for item in value]
    if isinstance(value, dict):
        return {key: _redacted(item, redact) for key, item in value.items()}
    return value
