"""The daemon: puts together the parts healer.wiring builds, runs the scheduler and both HTTP
listeners, and shuts down cleanly on SIGTERM (in-flight steps finish and commit; the rest wait for
their lease).

Start-up says what is wrong before it says anything else: an unusable HEALER_DATA_DIR or a port in
use stops it with one line (exit 78) before the banner. A database that does not answer does not:
the daemon starts, says so once, and its `database` check keeps trying (with the schema revision),
while everything that needs the database waits on that check.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from fulfilment.errors import one_line
from fulfilment.models import Step, database_unreachable
from fulfilment.pipeline import STEP_CHECKS, Pipeline
from fulfilment.recording import StepResult
from fulfilment.secrets import Redactor
from healer import __version__, db, tracing
from healer.config import Settings
from healer.errors import ConfigurationError, OperatorError
from healer.health.metrics import Metrics
from healer.jobs.canary import CanaryJob
from healer.jobs.leadership import leadership_for
from healer.wiring import (
    Services,
    build_apps,
    build_monitor,
    build_remediator,
    build_render_pool,
    build_scheduler,
    build_stuck_sweep,
    canary_job,
    reconcile_job,
    scheduler_check,
)
from healer.worker import Worker, worker_identity

log = logging.getLogger(__name__)


UNPROVEN_DELIVERY = ("SENDGRID_WEBHOOK_PUBLIC_KEY unset: email delivery is unproven (a bounced download email "
                     "goes unnoticed; POST /sendgrid/events takes no events)")


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
        check_data_dir(settings)  # before anything writes there: SQLite, the store, the outbox, scratch
        # Before the clients are made, so that their calls are spans; None (and nothing of the SDK
        # set up) unless an OTEL_TRACES_EXPORTER is named. A bad OTEL_* value stops here, one line.
        self.tracing = tracing.start()
        self.services = Services.build(settings)
        self.render_pool = build_render_pool(settings)
        self.metrics = Metrics(runbook_base_url=settings.runbook_base_url)
        owner = worker_identity()  # this replica's name: on its leases, and on its leadership locks
        # Which singleton work (reconciliation, the stuck sweep, container restarts) runs here.
        self.leadership = leadership_for(self.services.engine, owner)
        self.scheduler = build_scheduler(settings, lambda names: self.health.failing(names), self.leadership)
        self.health = build_monitor(settings, self.services, [scheduler_check(settings, self.scheduler)],
                                    render=self.render_pool)
        # A step's failure on a dependency runs that dependency's checks at once (confirm).
        self.pipeline: Pipeline = self.services.pipeline(self.render_pool, gate=self.health.gate,
                                                         confirm=self.health.confirm,
                                                         observe=self._observe_step)
        self.worker = Worker(self.pipeline, concurrency=settings.orders_in_flight, owner=owner)
        self.remediator = build_remediator(
            settings, self.services, self.metrics,
            resume_waiting=self.pipeline.resume_waiting,
            rerender=self.pipeline.rerender,
            render_blocked=lambda: self.pipeline.gate(STEP_CHECKS[Step.RENDER]),
            worker=self.worker.owner,
            leadership=self.leadership,
        )
        # While the database check fails, this replica claims no singleton role; asks again once it passes.
        self.health.add_listener(self.leadership.on_check_result)
        # Restarts containers, frees scratch, resumes orders waiting on a check that turned green.
        self.health.add_listener(self.remediator.on_check_result)
        self.health.add_listener(self.scheduler.resume_waiting)  # and jobs waiting on it
        self._schedule_jobs()
        self.metrics.watch_checks(self.health.reports)
        self.metrics.watch_jobs(self.scheduler.jobs)
        self.metrics.watch_leadership(self.leadership.roles)
        # Order counts are cached for a typical scrape interval: one query per scrape at most.
        self.metrics.watch_orders(self.services.sessions, settings.order_sla_seconds, ttl_seconds=15)
        apps = build_apps(settings, self.services, self.pipeline, self.health, self.metrics,
                          self.scheduler.liveness, self.remediator.on_missing_download, self.leadership,
                          canary=self.canary.state if self.canary is not None else None)
        self.public_app, self.operator_app = apps.public, apps.operator
        self.servers: list[uvicorn.Server] = []
        self._stop_requested = False  # a signal came before the listeners existed to be told
        self._sockets: list[list[socket.socket]] = []  # per listener: public, operator
        self._prepared = False

    def _schedule_jobs(self) -> None:
        """Every check on its interval, the worker, Stripe reconciliation and the stuck-order sweep
        (both on the replica leading them), each waiting while a check it depends on fails."""
        settings = self.settings
        self.health.schedule(self.scheduler)
        self.scheduler.add("worker", self.worker.tick, settings.worker_interval_seconds,
                           depends_on=Worker.depends_on)
        job = reconcile_job(self.services, self.pipeline, self.metrics, self.worker.owner)
        if job is not None:
            self.scheduler.add("reconcile", job, settings.reconcile_interval_seconds, depends_on=job.depends_on,
                               singleton=True)
        stuck = build_stuck_sweep(settings, self.services, self.pipeline, self.metrics)
        self.scheduler.add("stuck", stuck, min(60.0, settings.order_sla_seconds / 2), depends_on=stuck.depends_on,
                           singleton=True)
        # The synthetic order, first one interval after start: a restart is no reason to run it
        # (`healer canary` runs one on demand), and by then the checks it waits on have answered.
        self.canary: CanaryJob | None = canary_job(settings, self.services, self.render_pool, self.metrics,
                                                   self.worker.owner)
        if self.canary is not None:
            self.scheduler.add("canary", self.canary, self.canary.interval_seconds, depends_on=self.canary.depends_on,
                               run_now=False, singleton=True)

    def _observe_step(self, result: StepResult) -> None:
        self.metrics.observe_step(result)
        self.remediator.observe_step(result)  # e.g. stores a waveform redrawn from the audio

    def prepare(self) -> None:
        """What start-up must know before it announces anything: both listeners bound (a port in
        use stops it here, with one line) and the database schema ready, or the database known to
        be unreachable. Once only: `healer demo` calls it before it creates its sample orders."""
        if self._prepared:
            return
        s = self.settings
        try:
            self._sockets = [bind_listener("HEALER_HTTP_HOST", s.http_host, "HEALER_HTTP_PORT", s.http_port)]
            self._sockets.append(bind_listener("HEALER_OPS_HOST", s.ops_host, "HEALER_OPS_PORT", s.ops_port))
            self.prepare_database()
        except BaseException:
            self.close()
            raise
        self._prepared = True

    def prepare_database(self) -> None:
        """The embedded SQLite database upgrades itself; a shared one must be upgraded on purpose,
        and one that does not answer yet is waited for rather than fatal."""
        engine = self.services.engine
        if self.settings.uses_embedded_database:
            db.upgrade(engine)
            return
        try:
            current = db.current_revision(engine)
        except SQLAlchemyError as error:
            if not database_unreachable(error):
                raise
            self._start_without_database(error)
            return
        head = db.head_revision()
        if current != head:
            raise DatabaseNotMigrated(
                f"database schema is at {current or 'nothing'}, code expects {head}: run `healer db upgrade`"
            )

    def _start_without_database(self, error: SQLAlchemyError) -> None:
        """A database outage at start is one the daemon outlives, as it outlives one later: the
        `database` check (which also compares the schema revision) is what every dependent waits on."""
        said = Redactor(self.settings.secret_values())(one_line(getattr(error, "orig", None) or error))
        log.warning("Database %s is unreachable (%s): starting anyway; the database check keeps trying, "
                    "and orders wait until it answers with its schema at %s",
                    self.settings.describe()["database_url"], said, db.head_revision())
        # Its answer in the cache before the scheduler starts: jobs that need the database wait from
        # their first run, instead of each failing on it and saying so.
        self.health.run("database")

    def announce(self) -> None:
        """One block at start-up: what runs, where it listens, what it defaults to, what it checks.
        A WARNING when a peer runs on an embedded default, so that it is not missed."""
        s = self.settings
        public, operator = (self.listening_on(i) for i in range(2))
        lines = [
            f"healer {__version__} starting as worker {self.worker.owner} with {s.workers} render process(es), "
            f"{s.orders_in_flight} order(s) at once",
            f"  public listener:   http://{public} (customers, Stripe)",
            f"  operator listener: http://{operator} (probes, health, metrics, admin API)",
            *(f"  embedded default: {note}" for note in s.embedded_defaults()),
            *([f"  {UNPROVEN_DELIVERY}"] if self.delivery_unproven else []),
            f"  {self.remediator.describe()}",
            *([f"  {self.tracing.describe()}"] if self.tracing is not None else []),
            "  checks: " + ", ".join(f"{name} every {self.health.check(name).interval_seconds:g}s"
                                     for name in self.health.names),
        ]
        warn = s.embedded_defaults() or self.delivery_unproven
        log.log(logging.WARNING if warn else logging.INFO, "%s", "\n".join(lines))

    @property
    def delivery_unproven(self) -> bool:
        """Emails go through SendGrid, but its Event Webhook cannot be verified: bounces go unseen."""
        s = self.settings
        return s.sendgrid_api_key is not None and s.sendgrid_webhook_public_key is None

    def listening_on(self, listener: int) -> str:
        """host:port of listener 0 (public) or 1 (operator): the bound port once bound (port 0
        asks the system for one), the configured one before."""
        s = self.settings
        host, port = ((s.http_host, s.http_port), (s.ops_host, s.ops_port))[listener]
        if self._sockets:
            port = self._sockets[listener][0].getsockname()[1]
        return _host_port(host, port)

    def serve(self, on_started: Callable[[], None] | None = None) -> None:
        """Run both listeners until SIGTERM/SIGINT, then shut down in order."""
        # First: a SIGTERM while the daemon starts (its first checks, its first render process) stops
        # it as cleanly as one later, instead of killing it with the signal's default action.
        previous = _install_signal_handlers(self._on_signal)
        try:
            self.prepare()
            self.announce()
            self.servers = [_Listener(self.public_app), _Listener(self.operator_app)]
            if self._stop_requested:
                self.stop()  # the listeners start, see they should exit, and the daemon shuts down
            self.scheduler.start()
            if on_started is not None:
                on_started()
            try:
                # The loop the listeners' configuration names (uvloop when installed), as uvicorn's
                # own `run` would make it: asyncio.run would make the stock loop instead.
                with asyncio.Runner(loop_factory=self.servers[0].config.get_loop_factory()) as runner:
                    runner.run(self._serve_listeners())
            finally:
                self.shutdown()
        finally:
            _install_signal_handlers(previous)

    async def _serve_listeners(self) -> None:
        serving = [asyncio.ensure_future(server.serve(sockets=sockets))
                   for server, sockets in zip(self.servers, self._sockets, strict=True)]
        try:
            # Either listener ending (stopped, or its app failed to start) ends the daemon.
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
        self._stop_requested = True
        for server in self.servers:
            server.should_exit = True

    def shutdown(self) -> None:
        log.info("healer shutting down: finishing in-flight steps (%d order(s))", self.worker.in_flight)
        self.scheduler.shutdown()
        # Now, not after the in-flight steps: another replica takes the singleton work over at its
        # next period while this one finishes its orders.
        self.leadership.release()
        self.worker.shutdown(wait=True)
        self.close()
        log.info("healer stopped")

    def close(self) -> None:
        """Release what construction and `prepare` took: after `shutdown`, or instead of it when
        the daemon never started (silently then: the error that stopped it is the one line)."""
        for sockets in self._sockets:
            for sock in sockets:
                sock.close()
        self.remediator.shutdown()  # a PDF being rendered again is finished and recorded
        self.render_pool.shutdown()
        self.leadership.release()
        self.services.close()
        if self.tracing is not None:
            self.tracing.shutdown()  # last: the spans of the steps that just finished go out too


class _Listener(uvicorn.Server):
    """One uvicorn server of the two; the daemon, not uvicorn, handles SIGTERM and SIGINT, so
    that one signal stops both listeners (uvicorn's own handler would stop only the last one)."""

    def __init__(self, app: FastAPI) -> None:
        # No host or port: it serves the sockets the daemon bound (bind_listener). uvloop's loop and
        # httptools' parser when installed (the dependencies name both: an answer costs less CPU on
        # them), asyncio's and h11 where they are not.
        super().__init__(uvicorn.Config(app, loop="auto", http="auto", log_config=None, access_log=False,
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


def check_data_dir(settings: Settings) -> None:
    """Make the directories under HEALER_DATA_DIR this daemon writes to, and write in each: one
    that cannot be is a configuration error named at start, not a traceback from SQLite, or an
    order failing its render step hours later (scratch)."""
    wanted = [settings.data_dir, settings.scratch_dir]
    if settings.s3_bucket is None:
        wanted.append(settings.local_store_dir)
    if settings.sendgrid_api_key is None:
        wanted.append(settings.outbox_dir)
    for directory in wanted:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as error:
            raise ConfigurationError(
                f"HEALER_DATA_DIR={settings.data_dir}: cannot write to {directory}: "
                f"{error.strerror or error}; choose a directory healer may write to"
            ) from None


# How many connections may wait to be accepted (uvicorn's default).
_BACKLOG = 2048


def bind_listener(host_variable: str, host: str, port_variable: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address `host` names (as asyncio's create_server would bind
    them), made before the daemon announces itself: a port in use stops start-up with one line."""
    try:
        addresses = dict.fromkeys((family, address) for family, _, _, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE))
    except socket.gaierror as error:
        raise ConfigurationError(f"{host_variable}={host!r} is not an address to listen on: {error.strerror}") from None
    bound: list[socket.socket] = []
    try:
        for family, address in addresses:
            bound.append(_listening_socket(family, address))
    except OSError as error:
        for sock in bound:
            sock.close()
        raise ConfigurationError(_bind_problem(error, host_variable, host, port_variable, port)) from None
    return bound


def _listening_socket(family: socket.AddressFamily, address: Any) -> socket.socket:
    # IPPROTO_TCP named, not 0: accepted connections inherit it, and asyncio sets TCP_NODELAY only
    # on a socket whose proto says TCP. Without it a keep-alive client (Prometheus) waited out its
    # delayed ACK (40 ms) on every answer, sent as headers then body.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # A restarted daemon need not wait out the last one's connections in TIME_WAIT; a port
        # another process listens on stays refused (EADDRINUSE) on Linux all the same.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # "::" is IPv6, as in asyncio
        sock.bind(address)
        sock.listen(_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_problem(error: OSError, host_variable: str, host: str, port_variable: str, port: int) -> str:
    where = _host_port(host, port)
    if error.errno == errno.EADDRINUSE:
        return f"{port_variable}={port}: {where} is already in use (another healer?); choose another port"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{host_variable}={host}: cannot listen on {where}: not an address of this machine; choose another host"
    if error.errno == errno.EACCES:
        return f"{port_variable}={port}: not allowed to listen on {where} ({error.strerror}); choose another port"
    return f"{host_variable}={host}, {port_variable}={port}: cannot listen on {where}: {error.strerror or error}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
