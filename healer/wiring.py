"""The composition root: the one place that reads Settings and builds components from them.

Clients and the pipeline (`Services`), the health monitor and its checks (`build_monitor`), the
remediator and its actions (`build_remediator`), the reconciler (`build_reconciler`,
`reconcile_job`) and the canary (`build_canary`, `canary_job`). Everything else receives what it
needs in its constructor.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parseaddr

from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from checks.assets import AssetsCheck
from checks.base import Check
from checks.database import DatabaseCheck
from checks.disk import DiskCheck
from checks.docker import DockerCheck, compose_project_label
from checks.memory import MemoryCheck
from checks.orders import OrdersCheck
from checks.s3 import LocalStoreCheck, S3Check
from checks.scheduler import SchedulerCheck
from checks.sendgrid import SendGridCheck
from checks.stripe import StripeCheck
from fulfilment.mailer import Mailer, OutboxMailer, SendGridMailer
from fulfilment.models import utcnow
from fulfilment.payments import DisabledPayments, Payments, StripePayments
from fulfilment.pipeline import Confirm, Gate, Pipeline, never_confirmed, never_gated
from fulfilment.recording import RetryPolicy, StepResult
from fulfilment.secrets import Redactor
from fulfilment.steps import RenderFn, Steps
from fulfilment.storage import LocalStore, ObjectStore, S3Store, make_s3_client
from healer import db
from healer.config import Settings
from healer.health.metrics import Metrics
from healer.health.monitor import HealthMonitor
from healer.http.observe import HttpMetrics
from healer.http.operator import OperatorContext, create_operator_app
from healer.http.public import PublicContext, create_public_app
from healer.http.ratelimit import ClientRateLimit
from healer.http.status_data import PageConfig, webhook_deliveries
from healer.jobs.canary import Canary, CanaryJob
from healer.jobs.canary_results import CanaryState
from healer.jobs.leadership import Leadership
from healer.jobs.scheduler import Failing, Scheduler
from healer.jobs.stuck import StuckOrders, StuckPolicy
from healer.remediation.audit import Audit
from healer.remediation.containers import ContainerHealer
from healer.remediation.pdfs import PdfRestorer
from healer.remediation.policy import RemediationPolicy
from healer.remediation.remediator import CONTAINERS, Remediator
from healer.remediation.resume import OrderResumer
from healer.remediation.scratch import ScratchSweeper
from healer.remediation.waveforms import WaveformRestorer
from healer.render.pool import RenderPool
from healer.sendgrid.webhook import events_router
from healer.stripe.reconcile import ReconcileConfig, Reconciler
from healer.stripe.reconcile_job import ReconcileJob, run_lock
from healer.stripe.webhook_events import HANDLED_TYPES
from healer.stripe.webhooks import webhook_router

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ObjectStore
    mailer: Mailer
    payments: Payments

    @classmethod
    def build(cls, settings: Settings, *, read_only: bool = False) -> Services:
        engine = db.make_engine(settings.effective_database_url, pool_size=settings.orders_in_flight + 4,
                                read_only=read_only)
        return cls(
            settings=settings,
            engine=engine,
            sessions=db.make_session_factory(engine),
            store=build_store(settings),
            mailer=build_mailer(settings),
            payments=build_payments(settings),
        )

    def pipeline(
        self,
        render: RenderFn,
        *,
        gate: Gate = never_gated,
        confirm: Confirm = never_confirmed,
        observe: Callable[[StepResult], None] = lambda _r: None,
    ) -> Pipeline:
        s = self.settings
        return Pipeline(
            sessions=self.sessions,
            store=self.store,
            payments=self.payments,
            mailer=self.mailer,
            render=render,
            public_base_url=s.public_base_url,
            retry=RetryPolicy(s.max_attempts, s.retry_base_seconds, s.retry_max_seconds),
            lease_seconds=s.lease_seconds,
            gate=gate,
            confirm=confirm,
            gate_wait_seconds=min(s.check_interval_seconds, 30.0),
            observe=observe,
        )

    def close(self) -> None:
        self.engine.dispose()


def build_store(settings: Settings) -> ObjectStore:
    if settings.s3_bucket is None:
        return LocalStore(settings.local_store_dir)
    client = make_s3_client(
        access_key_id=settings.aws_access_key_id.value if settings.aws_access_key_id else None,
        secret_access_key=(
            settings.aws_secret_access_key.value if settings.aws_secret_access_key else None
        ),
        region=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
    )
    return S3Store(client, settings.s3_bucket)


def build_mailer(settings: Settings) -> Mailer:
    if settings.sendgrid_api_key is None:
        return OutboxMailer(settings.outbox_dir, settings.from_email)
    return SendGridMailer(
        settings.sendgrid_api_key.value, settings.from_email, api_base=settings.sendgrid_api_base
    )


def build_payments(settings: Settings) -> Payments:
    if settings.stripe_secret_key is None:
        return DisabledPayments()
    return StripePayments(settings.stripe_secret_key.value, api_base=settings.stripe_api_base)


# -- health checks ---------------------------------------------------------------------------------


def build_monitor(settings: Settings, services: Services, extra_checks: Sequence[Check] = (),
                  render: RenderFn | None = None) -> HealthMonitor:
    """The four peer checks from Settings and Services, plus `extra_checks`, in one monitor.

    Intervals derive from HEALER_CHECK_INTERVAL_SECONDS (default 30 s), so a test or a demo that
    shortens it speeds up every check alike; at the default they are 15 s, 30 s and 60 s.
    `render` renders the assets check's canary (the daemon's render pool, so that the daemon's own
    process never imports the renderer); None: the check renders it in this process.
    """
    interval = settings.check_interval_seconds
    checks: list[Check] = [
        _database_check(services, interval),
        _s3_check(settings, interval),
        _sendgrid_check(settings, interval),
        _stripe_check(settings, interval),
        *_resource_checks(settings, services, interval, render),
        *extra_checks,
    ]
    return HealthMonitor(checks, redact=Redactor(settings.secret_values()))


def _resource_checks(settings: Settings, services: Services, interval: float,
                     render: RenderFn | None) -> list[Check]:
    # None of these gates readiness: taking the daemon out of a load balancer would not free a
    # disk or restart a container, and the completion API answers 202 whatever they say; they gate
    # the steps that need them instead, and alert.
    return [
        DiskCheck(
            paths=(("data", settings.data_dir), ("scratch", settings.scratch_dir), ("assets", settings.assets_dir)),
            interval_seconds=interval,
            timeout_seconds=5.0,
            critical=False,
        ),
        MemoryCheck(interval_seconds=interval, timeout_seconds=5.0, critical=False),
        # A canary render of every template, cached until an asset file changes.
        AssetsCheck(assets_dir=settings.assets_dir, interval_seconds=interval, render=render),
        DockerCheck(
            base_url=settings.docker_host,
            label=compose_project_label(settings.compose_project),
            interval_seconds=interval,
            timeout_seconds=10.0,
        ),
        OrdersCheck(
            sessions=services.sessions,
            sla_seconds=settings.order_sla_seconds,
            session_expiration_seconds=settings.session_expiration_seconds,
            interval_seconds=interval,
        ),
    ]


def _database_check(services: Services, interval: float) -> DatabaseCheck:
    # Twice as often as the rest: it is one pooled `SELECT 1`, every step needs the database, and
    # checks that depend on it are skipped while it fails, so it should be the first to know. Its
    # timeout outlasts the driver's 5 s connect timeout, so a dead server is named by the driver.
    return DatabaseCheck(
        engine=services.engine,
        head_revision=db.head_revision(),
        interval_seconds=interval / 2,
        timeout_seconds=8.0,
        critical=True,
    )


def _s3_check(settings: Settings, interval: float) -> Check:
    if settings.s3_bucket is None:
        return LocalStoreCheck(root=settings.local_store_dir, interval_seconds=interval, timeout_seconds=5.0)
    # Its own client: short timeouts and a single attempt, so a probe reports what S3 did and
    # finishes (read timeout 5 s) before the check's own timeout cuts it off.
    client = make_s3_client(
        access_key_id=settings.aws_access_key_id.value if settings.aws_access_key_id else None,
        secret_access_key=settings.aws_secret_access_key.value if settings.aws_secret_access_key else None,
        region=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
        connect_timeout=3,
        read_timeout=5,
        max_attempts=1,
    )
    # A cheap listing every interval; the six-request write/copy/delete round trip every 20
    # intervals (10 minutes at the default), which keeps the check's S3 bill negligible.
    return S3Check(
        client=client,
        bucket=settings.s3_bucket,
        round_trip_every_seconds=interval * 20,
        interval_seconds=interval,
        timeout_seconds=10.0,
        critical=True,
    )


# SendGrid and Stripe are probed every other interval (60 s at the default): each probe is an
# authenticated call to a third-party API whose rate limits the shop's own traffic shares, and what
# it checks (is the key valid) changes rarely. They are not critical: every replica shares the same
# account, so failing readiness on them would take the whole shop's API out of rotation, while the
# pipeline already holds the steps that need them (gated) and answers customers 202.
def _sendgrid_check(settings: Settings, interval: float) -> SendGridCheck:
    return SendGridCheck(
        api_key=settings.sendgrid_api_key.value if settings.sendgrid_api_key else None,
        from_email=settings.from_email,
        api_base=settings.sendgrid_api_base,
        outbox_dir=settings.outbox_dir,
        interval_seconds=interval * 2,
        timeout_seconds=10.0,
        critical=False,
    )


def _stripe_check(settings: Settings, interval: float) -> StripeCheck:
    return StripeCheck(
        api_key=settings.stripe_secret_key.value if settings.stripe_secret_key else None,
        webhook_secret=settings.stripe_webhook_secret.value if settings.stripe_webhook_secret else None,
        # Where Stripe must post, and what: the public listener's route, for the events it handles.
        webhook_url=f"{settings.public_base_url}/stripe/webhook",
        webhook_events=HANDLED_TYPES,
        api_base=settings.stripe_api_base,
        interval_seconds=interval * 2,
        timeout_seconds=10.0,
        critical=False,
    )


# -- self-healing ----------------------------------------------------------------------------------


def build_remediator(
    settings: Settings,
    services: Services,
    metrics: Metrics,
    policy: RemediationPolicy | None = None,
    *,
    resume_waiting: Callable[[str], int] | None = None,
    rerender: Callable[[uuid.UUID], str] | None = None,
    render_blocked: Callable[[], str | None] = lambda: None,
    worker: str | None = None,
    leadership: Leadership | None = None,
) -> Remediator:
    """Every action the settings allow. `resume_waiting` and `rerender` are the pipeline's,
    `render_blocked` names a failing check the render step waits on; `worker` names this daemon;
    `policy` defaults to the HEALER_AUTOHEAL_* settings; `leadership` elects the replica that
    restarts containers (None: this one)."""
    policy = policy or remediation_policy(settings)
    audit = Audit(services.sessions, metrics, settings.remediation, worker)
    containers = None
    if policy.docker and settings.docker_host is None:
        log.warning("HEALER_AUTOHEAL_DOCKER is on but DOCKER_HOST is unset: containers are not restarted")
    elif policy.docker and settings.docker_host is not None:
        labels = (settings.autoheal_label, compose_project_label(settings.compose_project))
        containers = ContainerHealer(settings.docker_host, labels, policy, audit)
        if leadership is not None:
            leadership.declare(CONTAINERS)
    remediator = Remediator(
        audit,
        containers=containers,
        scratch=ScratchSweeper(settings.scratch_dir, policy, audit),
        waveforms=WaveformRestorer(services.sessions, services.store, audit, RenderPool(
            settings.assets_dir, 1, settings.scratch_dir, timeout_seconds=settings.render_timeout_seconds,
            memory_mb=settings.render_memory_mb, max_photo_megapixels=settings.max_photo_megapixels)),
        orders=OrderResumer(services.sessions, resume_waiting, audit) if resume_waiting else None,
        pdfs=PdfRestorer(rerender, audit, render_blocked=render_blocked) if rerender else None,
        lead=leadership.lead if leadership is not None else None,
    )
    return remediator


# -- reconciliation with Stripe --------------------------------------------------------------------


def build_reconciler(settings: Settings, services: Services, pipeline: Pipeline, metrics: Metrics,
                     worker: str | None = None) -> Reconciler | None:
    """None when payments are not verified (no STRIPE_SECRET_KEY): nothing to reconcile against."""
    if not isinstance(services.payments, StripePayments):
        return None
    config = ReconcileConfig(sla_seconds=settings.order_sla_seconds)
    return Reconciler(services.sessions, services.payments.client, pipeline, metrics, config,
                      worker=worker)


def reconcile_job(services: Services, pipeline: Pipeline, metrics: Metrics, owner: str) -> ReconcileJob | None:
    """The daemon's `reconcile` job (None without Stripe): run where this replica leads it, one run at a time."""
    reconciler = build_reconciler(services.settings, services, pipeline, metrics, worker=owner)
    if reconciler is None:
        return None
    return ReconcileJob(reconciler, run_lock(services.engine, services.sessions, owner))


# -- the daemon's other parts -------------------------------------------------------------------------


def remediation_policy(settings: Settings) -> RemediationPolicy:
    return RemediationPolicy(
        docker=settings.autoheal_docker,
        unhealthy_seconds=settings.autoheal_unhealthy_seconds,
        max_restarts=settings.autoheal_max_restarts,
        window_seconds=settings.autoheal_window_seconds,
    )


def build_render_pool(settings: Settings) -> RenderPool:
    # The lease is renewed while a render runs (fulfilment.leases), so the time limit is about
    # resources alone: a render past it is stopped and its order is `bad_input`.
    return RenderPool(settings.assets_dir, settings.workers, settings.scratch_dir,
                      timeout_seconds=settings.render_timeout_seconds, memory_mb=settings.render_memory_mb,
                      max_photo_megapixels=settings.max_photo_megapixels)


@contextmanager
def rendering(settings: Settings) -> Iterator[RenderFn]:
    """The render function of a command that renders (`healer canary`): the daemon's pool, for
    the length of a block."""
    pool = build_render_pool(settings)
    try:
        yield pool
    finally:
        pool.shutdown()


def build_canary(settings: Settings, services: Services, render: RenderFn, owner: str = "canary") -> Canary:
    """The canary on the daemon's own clients; its email goes to the shop's own address."""
    payments = services.payments
    steps = Steps(services.sessions, services.store, payments, services.mailer, render,
                  settings.public_base_url.rstrip("/"), utcnow)
    return Canary(services.sessions, steps, settings.assets_dir, recipient=parseaddr(settings.from_email)[1],
                  stripe_read=payments.read_account if isinstance(payments, StripePayments) else None, owner=owner)


def canary_job(settings: Settings, services: Services, render: RenderFn, metrics: Metrics,
               owner: str) -> CanaryJob | None:
    """The daemon's `canary` job, its runs in the metrics; None when HEALER_CANARY_INTERVAL_SECONDS is 0."""
    interval = settings.canary_interval_seconds
    if interval is None:
        return None
    job = CanaryJob(build_canary(settings, services, render, owner=f"canary:{owner}"), interval)
    metrics.watch_canary(job.state, interval_seconds=interval)
    return job


def build_scheduler(settings: Settings, failing: Failing, leadership: Leadership | None = None) -> Scheduler:
    """The job scheduler; `failing` names the checks that fail now (the monitor's, read late: the
    monitor holds the scheduler's own check, so it is built after the scheduler); `leadership`
    says which singleton jobs this replica runs (None: all of them)."""
    return Scheduler(failing=failing, redact=Redactor(settings.secret_values()), leadership=leadership)


def scheduler_check(settings: Settings, scheduler: Scheduler) -> SchedulerCheck:
    """The dead-man's switch over the scheduler's own jobs."""
    return SchedulerCheck(jobs=scheduler.jobs, started_at=lambda: scheduler.started_at,
                          interval_seconds=settings.check_interval_seconds, timeout_seconds=2.0)


def build_stuck_sweep(settings: Settings, services: Services, pipeline: Pipeline, metrics: Metrics) -> StuckOrders:
    payments = services.payments
    return StuckOrders(
        services.sessions,
        pipeline,
        StuckPolicy(sla_seconds=settings.order_sla_seconds,
                    delay_email_after_seconds=settings.delay_email_after_seconds,
                    refund_on_failure=settings.refund_on_failure,
                    refund_grace_seconds=settings.refund_grace_seconds),
        mailer=services.mailer,
        stripe_client=payments.client if isinstance(payments, StripePayments) else None,
        metrics=metrics,
    )


@dataclass(frozen=True)
class Apps:
    public: FastAPI
    operator: FastAPI


def build_apps(settings: Settings, services: Services, pipeline: Pipeline, health: HealthMonitor,
               metrics: Metrics, liveness: Callable[[], tuple[bool, str]],
               restore_pdf: Callable[[uuid.UUID, str], bool],
               leadership: Leadership | None = None,
               canary: Callable[[], CanaryState] | None = None) -> Apps:
    """The two listeners' apps: the public one with Stripe's and SendGrid's webhooks, the operator
    one serving the public one's schema beside its own. Both count their requests in the one registry.
    `leadership`: which singleton roles this replica leads, for /health and the status page (one
    object for both, so they cannot disagree; None: no roles); `canary`: the canary job's state, for
    the status page (None: the canary is off)."""
    http_metrics = HttpMetrics(metrics.registry)
    public = create_public_app(PublicContext(
        sessions=services.sessions, pipeline=pipeline, store=services.store,
        public_base_url=settings.public_base_url,
        session_lifetime=timedelta(seconds=settings.session_expiration_seconds),
        rate_limit=ClientRateLimit(settings.public_rate_limit_per_minute), restore_pdf=restore_pdf,
        http_metrics=http_metrics,
    ))
    public.include_router(webhook_router(services.sessions, pipeline, settings.stripe_webhook_secret, metrics))
    public.include_router(events_router(services.sessions, pipeline, settings.sendgrid_webhook_public_key, metrics))
    operator = create_operator_app(OperatorContext(
        sessions=services.sessions, pipeline=pipeline, admin_token=settings.admin_token,
        redact=Redactor(settings.secret_values()), liveness=liveness, health=health,
        metrics=metrics.exposition, public_schema=public.openapi, notices=tuple(settings.embedded_defaults()),
        http_metrics=http_metrics, pages=page_config(settings, services, metrics, canary, leadership),
        leaders=leadership.roles if leadership is not None else None,
    ))
    return Apps(public, operator)


def page_config(settings: Settings, services: Services, metrics: Metrics,
                canary: Callable[[], CanaryState] | None = None, leadership: Leadership | None = None) -> PageConfig:
    """What the status page judges by: the SLA, whether and how often reconciliation runs (only
    with Stripe, as `reconcile_job` decides), this daemon's count of webhook deliveries, its
    canary's state (None: off) and its leadership of singleton work (None: no roles)."""
    reconciles = isinstance(services.payments, StripePayments)
    return PageConfig(
        order_sla_seconds=settings.order_sla_seconds,
        reconcile_interval_seconds=settings.reconcile_interval_seconds if reconciles else None,
        webhook_deliveries=lambda: webhook_deliveries(metrics.webhook_events),
        canary=canary,
        canary_interval_seconds=settings.canary_interval_seconds,
        leadership=leadership.view if leadership is not None else None,
    )
