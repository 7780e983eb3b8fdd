"""The daemon: puts together the parts healer.wiring builds, runs the scheduler and both HTTP
listeners, and shuts down cleanly on SIGTERM (in-flight steps finish and commit; the rest wait for
their lease)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from fulfilment.models import Step
from fulfilment.pipeline import STEP_CHECKS, Pipeline
from fulfilment.recording import StepResult
from healer import __version__, db
from healer.config import Settings
from healer.errors import ConfigurationError, OperatorError
from healer.health.metrics import Metrics
from healer.wiring import (
    Services,
    build_apps,
    build_monitor,
    build_remediator,
    build_render_pool,
    build_scheduler,
    build_stuck_sweep,
    reconcile_job,
    scheduler_check,
)
from healer.worker import Worker

log = logging.getLogger(__name__)


class DatabaseNotMigrated(OperatorError):
    pass


class UnsafeConfiguration(ConfigurationError):
    """A configuration `healer run` refuses (payments unverified): one line per problem."""


class Daemon:
    def __init__(self, settings: Settings, *, demo: bool = False) -> None:
        """`demo`: the one mode that may run without Stripe (healer demo); it says so everywhere."""
        if not demo and (problems := settings.daemon_problems()):
            raise UnsafeConfiguration("; ".join(problems))
        self.settings = settings
        self.services = Services.build(settings)
        self.render_pool = build_render_pool(settings)
        self.metrics = Metrics()
        self.scheduler = build_scheduler(settings, lambda names: self.health.failing(names))
        self.health = build_monitor(settings, self.services, [scheduler_check(settings, self.scheduler)])
        self.pipeline: Pipeline = self.services.pipeline(self.render_pool, gate=self.health.gate,
                                                         observe=self._observe_step)
        self.worker = Worker(self.pipeline, concurrency=settings.workers)
        self.remediator = build_remediator(
            settings, self.services, self.metrics,
            resume_waiting=self.pipeline.resume_waiting,
            rerender=self.pipeline.rerender,
            render_blocked=lambda: self.pipeline.gate(STEP_CHECKS[Step.RENDER]),
            worker=self.worker.owner,
        )
        # Restarts containers, frees scratch, resumes orders waiting on a check that turned green.
        self.health.add_listener(self.remediator.on_check_result)
        self.health.add_listener(self.scheduler.resume_waiting)  # and jobs waiting on it
        self._schedule_jobs()
        self.metrics.watch_checks(self.health.reports)
        self.metrics.watch_jobs(self.scheduler.jobs)
        # Order counts are cached for a typical scrape interval: one query per scrape at most.
        self.metrics.watch_orders(self.services.sessions, settings.order_sla_seconds, ttl_seconds=15)
        apps = build_apps(settings, self.services, self.pipeline, self.health, self.metrics,
                          self.scheduler.liveness, self.remediator.on_missing_download)
        self.public_app, self.operator_app = apps.public, apps.operator
        self.servers: list[uvicorn.Server] = []

    def _schedule_jobs(self) -> None:
        """Every check on its interval, the worker, Stripe reconciliation (one daemon at a time, by
        lock) and the stuck-order sweep, each waiting while a check it depends on fails."""
        settings = self.settings
        self.health.schedule(self.scheduler)
        self.scheduler.add("worker", self.worker.tick, settings.worker_interval_seconds,
                           depends_on=Worker.depends_on)
        job = reconcile_job(self.services, self.pipeline, self.metrics, self.worker.owner)
        if job is not None:
            self.scheduler.add("reconcile", job, settings.reconcile_interval_seconds, depends_on=job.depends_on)
        stuck = build_stuck_sweep(settings, self.services, self.pipeline, self.metrics)
        self.scheduler.add("stuck", stuck, min(60.0, settings.order_sla_seconds / 2), depends_on=stuck.depends_on)

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
