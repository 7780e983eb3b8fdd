"""The scheduler check watching healer's real scheduler: a job that stops succeeding (failing or
hung) is named with its last error, and the check turns green when the job succeeds again."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import cast

import pytest

from checks.base import CheckResult, Status, run_check
from checks.scheduler import SchedulerCheck
from healer.jobs.scheduler import JobState, Scheduler
from tests.eventually import Unmet, eventually

INTERVAL = 0.2  # seconds: dead after 5 intervals without a success, late after 2


class Switch:
    """A job whose behaviour the test flips: succeed, raise, or block until released."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.release = threading.Event()
        self.release.set()

    def __call__(self) -> None:
        self.release.wait()
        if self.error is not None:
            raise RuntimeError(self.error)


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    scheduler = Scheduler()
    yield scheduler
    scheduler.shutdown()


def _check(scheduler: Scheduler) -> SchedulerCheck:
    return SchedulerCheck(jobs=scheduler.jobs, started_at=lambda: scheduler.started_at, min_interval_seconds=0.05)


def _wait_for(check: SchedulerCheck, status: Status) -> CheckResult:
    def reached() -> CheckResult | Unmet:
        result = run_check(check)
        return result if result.status is status else Unmet(result)

    return cast(CheckResult, eventually(reached, what=f"the scheduler check to be {status.value}"))


def _wait_for_successes(scheduler: Scheduler) -> None:
    eventually(lambda: all(job.last_success is not None for job in scheduler.jobs()) or Unmet(scheduler.jobs()),
               interval=0.02, what="every job's first success")


def test_a_job_that_starts_failing_is_named_with_its_error_and_clears_when_it_succeeds(
    scheduler: Scheduler,
) -> None:
    job = Switch()
    scheduler.add("reconcile", job, INTERVAL, depends_on=())
    scheduler.add("cleanup", Switch(), INTERVAL, depends_on=())
    scheduler.start()
    check = _check(scheduler)
    _wait_for_successes(scheduler)
    ok = _wait_for(check, Status.OK)
    assert ok.detail == "2 jobs succeeding: cleanup, reconcile"

    job.error = "stripe unreachable: connection refused"
    failing = _wait_for(check, Status.FAILING)

    assert failing.detail.startswith("job reconcile: no success for ")
    assert failing.detail.endswith("last error: RuntimeError: stripe unreachable: connection refused")
    assert "cleanup" not in failing.detail
    assert "reconcile" in failing.remedy
    assert failing.data["jobs_dead"] == 1 and failing.data["reconcile.seconds_since_success"] > 5 * INTERVAL

    job.error = None
    assert _wait_for(check, Status.OK).data["jobs_dead"] == 0


def test_a_hung_job_is_named_as_hung(scheduler: Scheduler) -> None:
    job = Switch()
    scheduler.add("worker", job, INTERVAL, depends_on=())
    scheduler.start()
    check = _check(scheduler)
    _wait_for_successes(scheduler)

    job.release.clear()  # the next run blocks, as on a call that never returns
    try:
        failing = _wait_for(check, Status.FAILING)
        assert failing.detail.endswith("no error recorded (hung or not run)")
        assert "hung call" in failing.remedy
    finally:
        job.release.set()
    _wait_for(check, Status.OK)


def test_a_job_that_never_succeeded_counts_from_the_schedulers_start(scheduler: Scheduler) -> None:
    job = Switch()
    job.error = "database is starting up"
    scheduler.add("metrics", job, INTERVAL, depends_on=())
    scheduler.start()

    failing = _wait_for(_check(scheduler), Status.FAILING)

    assert failing.detail.startswith("job metrics: never succeeded in ")
    assert failing.detail.endswith("last error: RuntimeError: database is starting up")


def test_a_scheduler_not_started_is_disabled(scheduler: Scheduler) -> None:
    scheduler.add("reconcile", Switch(), INTERVAL, depends_on=(), run_now=False)

    result = run_check(_check(scheduler))

    assert result.status is Status.DISABLED
    assert result.detail == "scheduler not started: no periodic jobs to watch"


def _states(*jobs: JobState) -> Callable[[], list[JobState]]:
    return lambda: list(jobs)


def test_a_job_late_by_two_intervals_warns_and_by_five_fails() -> None:
    now = 10_000.0
    check = SchedulerCheck(
        jobs=_states(
            JobState("reconcile", 300, last_success=now - 700, last_error="stripe: 503", runs=9, failures=2),
            JobState("worker", 2, last_success=now - 1, last_error=None, runs=500, failures=0),
        ),
        started_at=now - 86400,
        clock=lambda: now,
    )

    late = run_check(check)
    assert late.status is Status.WARNING
    assert late.detail == "job reconcile: no success for 700s, last error: stripe: 503"
    assert late.data["jobs_late"] == 1

    dead = run_check(SchedulerCheck(jobs=check.jobs, started_at=now - 86400, clock=lambda: now + 900))
    assert dead.status is Status.FAILING  # 1600 s > 5 x 300 s


def test_a_fast_job_gets_the_minimum_interval_as_grace() -> None:
    now = 10_000.0
    # A 2 s worker silent for 20 s: ten of its intervals, but within 5 x the 6 s minimum.
    job = JobState("worker", 2, last_success=now - 20, last_error=None, runs=50, failures=0)

    result = run_check(SchedulerCheck(jobs=_states(job), started_at=now - 600, clock=lambda: now))

    assert result.status is Status.WARNING  # past 2 x 6 s
    assert run_check(SchedulerCheck(jobs=_states(job), started_at=now - 600, clock=lambda: now + 11)).status \
        is Status.FAILING  # 31 s > 30 s


def test_a_job_waiting_on_a_failing_dependency_is_skipped_not_late() -> None:
    now = 10_000.0
    check = SchedulerCheck(
        jobs=_states(
            # Silent for 20 of its intervals, because the database check fails: not its alarm.
            JobState("stuck", 60, last_success=now - 1200, last_error="database unreachable: x", runs=30,
                     failures=0, depends_on=("database",), waiting_on=("database",)),
            JobState("reconcile", 300, last_success=now - 900, last_error=None, runs=3, failures=0,
                     depends_on=("database", "stripe"), waiting_on=("database",)),
            JobState("check:s3", 30, last_success=now - 1, last_error=None, runs=99, failures=0),
        ),
        started_at=now - 86400,
        clock=lambda: now,
    )

    result = run_check(check)

    assert result.status is Status.SKIPPED
    assert result.detail == "skipped: database failing (jobs reconcile, stuck wait for it)"
    assert result.remedy == "fix database first"
    assert result.data["jobs_waiting"] == 2 and result.data["jobs_dead"] == 0


def test_a_job_dead_of_its_own_fails_the_check_while_others_wait() -> None:
    now = 10_000.0
    waiting = JobState("stuck", 60, last_success=now - 1200, last_error=None, runs=30, failures=0,
                       depends_on=("database",), waiting_on=("database",))
    dead = JobState("cleanup", 60, last_success=now - 1200, last_error="RuntimeError: bug", runs=30, failures=20)

    result = run_check(SchedulerCheck(jobs=_states(waiting, dead), started_at=now - 86400, clock=lambda: now))

    assert result.status is Status.FAILING
    assert result.detail == "job cleanup: no success for 1200s, last error: RuntimeError: bug"


def test_a_job_that_just_stopped_waiting_gets_its_intervals_again() -> None:
    # The database came back a second ago; the job has not had its turn yet, and is not late.
    now = 10_000.0
    job = JobState("reconcile", 300, last_success=now - 7200, last_error=None, runs=30, failures=0,
                   depends_on=("database", "stripe"), last_waited=now - 1)

    fresh = run_check(SchedulerCheck(jobs=_states(job), started_at=now - 86400, clock=lambda: now))
    later = run_check(SchedulerCheck(jobs=_states(job), started_at=now - 86400, clock=lambda: now + 1600))

    assert fresh.status is Status.OK and fresh.data["reconcile.seconds_since_success"] == 7200
    assert later.status is Status.FAILING and later.detail.startswith("job reconcile: no success for 8800s")
