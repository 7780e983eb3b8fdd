"""healer's scheduler against a real database outage (the session's PostgreSQL behind a cut proxy):
a job that depends on the database waits while the database check fails and stays alive however
long that lasts; a job that finds the database gone before its check has flipped says so in one
WARNING line; a job that hangs fails liveness; a job's own failure is an ERROR with its traceback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, text

from checks.base import Status, run_check
from checks.database import DatabaseCheck
from checks.scheduler import SchedulerCheck
from fulfilment.secrets import Redactor
from healer import db
from healer.health.monitor import HealthMonitor
from healer.jobs.scheduler import RunOutcome, Scheduler
from tests.eventually import eventually
from tests.fakes.tcp_proxy import TcpProxy
from tests.healer.test_health import Peer, stand_in

INTERVAL = 0.1
GRACE = 1.5  # liveness's floor, shortened (from 30 s) so that "far longer than the grace" is seconds
PASSWORD = "job-outage-pw-never-logged"  # trust auth ignores it; the logs must not show it


class Query:
    """A job that reads the database, as the stuck sweep does; counts the times it really ran."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))


@pytest.fixture
def engine(pg_proxy: TcpProxy, pg_url: str) -> Iterator[Engine]:
    """The session's database, reached through the proxy, with a password in its URL."""
    url = pg_proxy.replace_port(pg_url).replace("postgres@", f"postgres:{PASSWORD}@")
    engine = db.make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def started() -> Iterator[Callable[[Scheduler], Scheduler]]:
    schedulers: list[Scheduler] = []

    def start(scheduler: Scheduler) -> Scheduler:
        schedulers.append(scheduler)
        scheduler.start()
        return scheduler

    yield start
    for scheduler in schedulers:
        scheduler.shutdown()


def alive_throughout(scheduler: Scheduler, *, runs: int) -> None:
    """Poll liveness until well past the grace and `runs` runs of the first job: every poll alive."""
    since = time.monotonic()

    def long_enough() -> bool:
        alive, why = scheduler.liveness()
        assert alive, why
        return time.monotonic() - since > 3 * GRACE and scheduler.jobs()[0].runs >= runs

    eventually(long_enough, timeout=30, what=f"{3 * GRACE:g} s and {runs} runs")


def scheduler_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "healer.jobs.scheduler" and r.levelno == level]


def test_a_job_waits_while_the_database_check_fails_and_stays_alive_however_long(
    pg_proxy: TcpProxy, engine: Engine, started: Callable[[Scheduler], Scheduler], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    monitor = HealthMonitor([DatabaseCheck(engine=engine, failure_threshold=1)])
    job = Query(engine)
    scheduler = Scheduler(failing=monitor.failing, min_grace_seconds=GRACE)
    scheduler.add("stuck", job, INTERVAL, depends_on=("database",))
    pg_proxy.cut()
    assert monitor.run("database").status is Status.FAILING

    started(scheduler)
    alive_throughout(scheduler, runs=10)

    [state] = scheduler.jobs()
    assert job.calls == 0 and state.last_outcome is RunOutcome.SKIPPED and state.waiting_on == ("database",)
    check = SchedulerCheck(jobs=scheduler.jobs, started_at=scheduler.started_at, min_interval_seconds=0.05)
    assert run_check(check).detail == "skipped: database failing (jobs stuck wait for it)"

    pg_proxy.restore()
    monitor.run("database")
    eventually(lambda: scheduler.jobs()[0].last_success is not None, what="the job to run again")

    assert job.calls >= 1 and run_check(check).status is Status.OK
    assert scheduler_lines(caplog, logging.INFO) == [
        "Job stuck waits while database failing: not run until it is back",
        "Job stuck runs again: its dependencies are back",
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("healer.jobs")]


def test_a_job_that_finds_the_database_gone_says_so_once_and_stays_alive(
    pg_proxy: TcpProxy, engine: Engine, started: Callable[[Scheduler], Scheduler], caplog: pytest.LogCaptureFixture,
) -> None:
    # The database check has not flipped (here: it never runs), so the job is not held back.
    caplog.set_level(logging.DEBUG)
    scheduler = Scheduler(redact=Redactor([PASSWORD]), min_grace_seconds=GRACE)
    scheduler.add("stuck", Query(engine), INTERVAL, depends_on=("database",))
    pg_proxy.cut()

    started(scheduler)
    alive_throughout(scheduler, runs=10)

    [warning] = scheduler_lines(caplog, logging.WARNING)
    assert warning.startswith("Job stuck could not run: database unreachable (OperationalError: ")
    assert warning.endswith("; it runs again when database is back")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], "no traceback, no error"
    assert PASSWORD not in caplog.text
    [state] = scheduler.jobs()
    assert state.failures == 0 and state.last_outcome is RunOutcome.DEPENDENCY_DOWN
    assert state.last_error is not None and state.last_error.startswith("database unreachable: OperationalError: ")
    # Not excused: no check says the database is down, so not succeeding is this job's alarm.
    check = SchedulerCheck(jobs=scheduler.jobs, started_at=scheduler.started_at, min_interval_seconds=0.05)
    assert run_check(check).status is Status.FAILING


def test_a_job_that_hangs_fails_liveness_naming_it(started: Callable[[Scheduler], Scheduler]) -> None:
    release = threading.Event()
    scheduler = Scheduler(min_grace_seconds=GRACE)
    scheduler.add("reconcile", lambda: release.wait(30), INTERVAL, depends_on=())
    scheduler.add("worker", lambda: None, INTERVAL, depends_on=())
    started(scheduler)
    try:
        alive, why = eventually(lambda: None if (live := scheduler.liveness())[0] else live, timeout=10,
                                what="liveness to fail")
    finally:
        release.set()

    assert not alive and why.startswith("jobs hung or not running: reconcile: a run has not returned for ")
    assert "worker" not in why
    eventually(lambda: scheduler.liveness() == (True, "ok"), what="liveness back once the run returned")


def test_a_jobs_own_failure_is_an_error_with_its_traceback_and_not_a_liveness_fault(
    started: Callable[[Scheduler], Scheduler], caplog: pytest.LogCaptureFixture,
) -> None:
    def buggy() -> None:
        raise KeyError("order_id")

    scheduler = Scheduler(min_grace_seconds=GRACE)
    scheduler.add("stuck", buggy, INTERVAL, depends_on=("database",))
    started(scheduler)
    alive_throughout(scheduler, runs=5)

    errors = [r for r in caplog.records if r.name == "healer.jobs.scheduler" and r.levelno == logging.ERROR]
    assert errors and all(r.exc_info for r in errors)
    assert errors[0].getMessage() == "Job stuck failed: KeyError: 'order_id'"
    [state] = scheduler.jobs()
    assert state.failures >= 5 and state.last_outcome is RunOutcome.FAILED and state.last_success is None


def test_a_job_that_waited_runs_as_soon_as_its_dependency_is_back_not_at_its_next_interval(
    pg_proxy: TcpProxy, engine: Engine, started: Callable[[Scheduler], Scheduler],
) -> None:
    monitor = HealthMonitor([DatabaseCheck(engine=engine, failure_threshold=1)])
    scheduler = Scheduler(failing=monitor.failing)
    monitor.add_listener(scheduler.resume_waiting)
    job = Query(engine)
    scheduler.add("reconcile", job, 300, depends_on=("database",))  # next turn: in five minutes
    pg_proxy.cut()
    monitor.run("database")
    started(scheduler)
    eventually(lambda: scheduler.jobs()[0].last_outcome is RunOutcome.SKIPPED, what="the first run, skipped")

    pg_proxy.restore()
    monitor.run("database")

    eventually(lambda: job.calls == 1 and scheduler.jobs()[0].last_outcome is RunOutcome.SUCCEEDED,
               timeout=10, what="the job to run once the database check turned green")


def test_the_monitor_names_as_failing_only_the_checks_reported_failing() -> None:
    # What the scheduler asks before each run of a job (Scheduler(failing=monitor.failing)).
    database = Peer(Status.FAILING, "server down")
    monitor = HealthMonitor([stand_in("database", database), stand_in("s3", Peer(Status.FAILING, "access denied")),
                             stand_in("stripe", Peer(Status.WARNING, "rate limited"))])

    monitor.run_all()  # a docker check is unknown here, and so not failing

    assert monitor.failing(("database", "s3", "stripe", "docker")) == ("database", "s3")
    database.set(Status.OK)
    monitor.run("database")
    assert monitor.failing(("database", "stripe")) == ()
