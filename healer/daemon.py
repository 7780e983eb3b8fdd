"""The daemon: builds the components from Settings, runs the scheduler and the HTTP app, and
shuts down cleanly on SIGTERM (in-flight steps finish and commit; the rest wait for their lease)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import uvicorn
from fastapi import FastAPI

from checks.scheduler import SchedulerCheck
from fulfilment.models import Step
from fulfilment.payments import StripePayments
from fulfilment.pipeline import STEP_CHECKS, Pipeline
from fulfilment.recording import StepResult
from fulfilment.secrets import Redactor
from healer import __version__, db
from healer.config import Settings
from healer.health.metrics import Metrics
from healer.http.operator import OperatorContext, create_operator_app
from healer.http.public import PublicContext, create_public_app
from healer.http.ratelimit import ClientRateLimit
from healer.jobs.scheduler import Scheduler
from healer.jobs.stuck import StuckOrders, StuckPolicy
from healer.remediation.policy import RemediationPolicy
from healer.stripe.webhooks import webhook_router
from healer.wiring import Services, build_monitor, build_remediator, reconcile_job
from healer.worker import RenderPool, Worker

log = logging.getLogger(__name__)


class DatabaseNotMigrated(RuntimeError):
    pass


class UnsafeConfiguration(RuntimeError):
    """A configuration `healer run` refuses (payments unverified): one line per problem."""


class Daemon:
    def __init__(self, settings: Settings, *, demo: bool = False) -> None:
        """`demo`: the one mode that may run without Stripe (healer demo); it says so everywhere."""
        if not demo and (problems := settings.daemon_problems()):
            raise UnsafeConfiguration("; ".join(problems))
        self.settings = settings
        self.redact = Redactor(settings.secret_values())
        self.services = Services.build(settings)
        self.render_pool = RenderPool(
            settings.assets_dir,
            settings.workers,
            settings.scratch_dir,
            # The lease is renewed while a render runs (fulfilment.leases), so the limit is about
            # resources alone: a render past it is stopped and its order is `bad_input`.
            timeout_seconds=settings.render_timeout_seconds,
            memory_mb=settings.render_memory_mb,
            max_photo_megapixels=settings.max_photo_megapixels,
        )
        self.metrics = Metrics()
        self.scheduler = Scheduler()
        self.health = build_monitor(settings, self.services, extra_checks=[
            SchedulerCheck(jobs=self.scheduler.jobs, started_at=lambda: self.scheduler.started_at,
                           interval_seconds=settings.check_interval_seconds, timeout_seconds=2.0),
        ])
        self.pipeline: Pipeline = self.services.pipeline(
            self.render_pool, gate=self.health.gate, observe=self._observe_step
        )
        self.worker = Worker(self.pipeline, concurrency=settings.workers)
        self.remediator = build_remediator(
            settings,
            self.services,
            self.metrics,
            RemediationPolicy(
                docker=settings.autoheal_docker,
                unhealthy_seconds=settings.autoheal_unhealthy_seconds,
                max_restarts=settings.autoheal_max_restarts,
                window_seconds=settings.autoheal_window_seconds,
            ),
            resume_waiting=self.pipeline.resume_waiting,
            rerender=self.pipeline.rerender,
            render_blocked=lambda: self.pipeline.gate(STEP_CHECKS[Step.RENDER]),
            worker=self.worker.owner,
        )
        # Restarts containers, frees scratch, resumes orders waiting on a check that turned green.
        self.health.add_listener(self.remediator.on_check_result)
        self.health.schedule(self.scheduler)
        self.scheduler.add("worker", self.worker.tick, settings.worker_interval_seconds)
        self._schedule_reconciliation()
        self.metrics.watch_checks(self.health.reports)
        self.metrics.watch_jobs(self.scheduler.jobs)
        # Order counts are cached for a typical scrape interval: one query per scrape at most.
        self.metrics.watch_orders(self.services.sessions, settings.order_sla_seconds, ttl_seconds=15)
        self.public_app = create_public_app(PublicContext(
            sessions=self.services.sessions,
            pipeline=self.pipeline,
            store=self.services.store,
            public_base_url=settings.public_base_url,
            session_lifetime=timedelta(seconds=settings.session_expiration_seconds),
            rate_limit=ClientRateLimit(settings.public_rate_limit_per_minute),
            restore_pdf=self.remediator.on_missing_download,
        ))
        self.public_app.include_router(webhook_router(self.services.sessions, self.pipeline,
                                                      settings.stripe_webhook_secret, self.metrics))
        self.operator_app = create_operator_app(OperatorContext(
            sessions=self.services.sessions,
            pipeline=self.pipeline,
            admin_token=settings.admin_token,
            redact=self.redact,
            liveness=self.scheduler.liveness,
            health=self.health,
            metrics=self.metrics.exposition,
            public_schema=self.public_app.openapi,
            notices=tuple(settings.embedded_defaults()),
        ))
        self.servers: list[uvicorn.Server] = []

    def _schedule_reconciliation(self) -> None:
        """Stripe reconciliation (one daemon at a time, by lock) and the stuck-order sweep."""
        settings, payments = self.settings, self.services.payments
        job = reconcile_job(self.services, self.pipeline, self.metrics, self.worker.owner)
        if job is not None:
            self.scheduler.add("reconcile", job, settings.reconcile_interval_seconds)
        stuck = StuckOrders(
            self.services.sessions,
            self.pipeline,
            StuckPolicy(
                sla_seconds=settings.order_sla_seconds,
                delay_email_after_seconds=settings.delay_email_after_seconds,
                refund_on_failure=settings.refund_on_failure,
            ),
            mailer=self.services.mailer,
            stripe_client=payments.client if isinstance(payments, StripePayments) else None,
            metrics=self.metrics,
        )
        self.scheduler.add("stuck", stuck, min(60.0, settings.order_sla_seconds / 2))

    def _observe_step(self, result: StepResult) -> None:
        self.metrics.observe_step(result)
        self.remediator.observe_step(result)  # e.g. stores a waveform redrawn from the audio

    def prepare_database(self) -> None:
        """The embedded SQLite database upgrades itself; a shared one must be upgraded on purpose."""
        engine = self.services.engine
        if self.settings.uses_embedded_database:
            db.upgrade(engine)
            return
        current, head = db.current_revision(engine), db.head_revision()
        if current != head:
            raise DatabaseNotMigrated(
                f"database schema is at {current or 'nothing'}, code expects {head}: run `healer db upgrade`"
            )

    def announce(self) -> None:
        """One block at start-up: what runs, where it listens, what it defaults to, what it checks.
        A WARNING when a peer runs on an embedded default, so that it is not missed."""
        s = self.settings
        lines = [
            f"healer {__version__} starting as worker {self.worker.owner} with {s.workers} worker(s)",
            f"  public listener:   http://{s.http_host}:{s.http_port} (customers, Stripe)",
            f"  operator listener: http://{s.ops_host}:{s.ops_port} (probes, health, metrics, admin API)",
            *(f"  embedded default: {note}" for note in s.embedded_defaults()),
            f"  {self.remediator.describe()}",
            "  checks: " + ", ".join(f"{name} every {self.health.check(name).interval_seconds:g}s"
                                     for name in self.health.names),
        ]
        log.log(logging.WARNING if s.embedded_defaults() else logging.INFO, "%s", "\n".join(lines))

    def serve(self, on_started: Callable[[], None] | None = None) -> None:
        """Run both listeners until SIGTERM/SIGINT, then shut down in order."""
        self.prepare_database()
        self.announce()
        self.servers = [
            _Listener(self.public_app, self.settings.http_host, self.settings.http_port),
            _Listener(self.operator_app, self.settings.ops_host, self.settings.ops_port),
        ]
        previous = _install_signal_handlers(self._on_signal)
        self.scheduler.start()
        if on_started is not None:
            on_started()
        try:
            asyncio.run(self._serve_listeners())
        finally:
            self.shutdown()
            _install_signal_handlers(previous)

    async def _serve_listeners(self) -> None:
        serving = [asyncio.ensure_future(server.serve()) for server in self.servers]
        try:
            # Either listener ending (stopped, or it could not bind its port) ends the daemon.
            done, _ = await asyncio.wait(serving, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.stop()
            await asyncio.gather(*serving, return_exceptions=True)
        for finished in done:
            finished.result()  # a listener that failed to start stops the daemon with its error

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("Received %s: stopping", signal.Signals(signum).name)
        if any(server.should_exit for server in self.servers) and signum == signal.SIGINT:
            for server in self.servers:
                server.force_exit = True  # a second Ctrl-C: do not wait for open connections
        self.stop()

    def stop(self) -> None:
        for server in self.servers:
            server.should_exit = True

    def shutdown(self) -> None:
        log.info("healer shutting down: finishing in-flight steps (%d order(s))", self.worker.in_flight)
        self.scheduler.shutdown()
        self.worker.shutdown(wait=True)
        self.remediator.shutdown()  # a PDF being rendered again is finished and recorded
        self.render_pool.shutdown()
        self.services.close()
        log.info("healer stopped")


class _Listener(uvicorn.Server):
    """One uvicorn server of the two; the daemon, not uvicorn, handles SIGTERM and SIGINT, so
    that one signal stops both listeners (uvicorn's own handler would stop only the last one)."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        super().__init__(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                        timeout_graceful_shutdown=10))

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _install_signal_handlers(handler: Any) -> Any:
    """Set `handler` for SIGTERM and SIGINT (a dict: one per signal); returns the previous ones."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    handlers = handler if isinstance(handler, dict) else dict.fromkeys((signal.SIGTERM, signal.SIGINT), handler)
    return {sig: signal.signal(sig, h) for sig, h in handlers.items()}
