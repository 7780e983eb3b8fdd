"""Periodic jobs on an APScheduler background scheduler. Each job declares the health checks it
depends on, is not run while one of them is failing (as a gated order step waits), and keeps a
record of its runs.

Two questions are asked of that record, and kept apart:
- liveness (`/livez`): can the process still do its work? A job is alive while its runs keep
  finishing, whatever their outcome: a run skipped, or failed because a dependency is down, is
  alive, because restarting the daemon would not bring the database back. Only a run that never
  returns (hung), or a job whose runs stop coming (a wedged scheduler), fails liveness.
- success (the `scheduler` check, `healer_job_last_success_timestamp_seconds`): does each job get
  its work done? A dead-man's switch on its last success (checks/scheduler.py) that excuses a job
  waiting on a failing dependency: that dependency's own check raises the one alarm.

Singleton jobs (`singleton=True`: reconciliation, the stuck sweep, the canary) run only on the
replica that leads them (healer.jobs.leadership). Each period a replica asks to lead before it runs
one: the leader keeps it, a follower takes it if the leader is gone, so leadership moves within one
period of the leader's death. A run not made because another replica leads the job is neither a
failure nor late: the job is alive (its runs finish) and the dead-man's switch leaves it to the
leader's.

A run that fails because a dependency is unreachable (the database, before its check has flipped)
is one WARNING line per outage, never a traceback; a job's own failure is an ERROR with its
traceback, since it is a bug or a fault no check watches.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from checks.base import CheckResult, Status
from fulfilment.errors import one_line
from fulfilment.models import database_unreachable
from fulfilment.secrets import Redactor
from healer.jobs.leadership import Leadership, SoleLock

log = logging.getLogger(__name__)

PROBES = "probes"
# A job is not alive once its runs have not finished for this many of its intervals (and at least
# LIVENESS_MIN_GRACE_SECONDS, so a busy machine does not restart a daemon polling every 2 s).
LIVENESS_INTERVALS = 5.0
LIVENESS_MIN_GRACE_SECONDS = 30.0

# The checks, of `names`, that are failing now (healer.health.monitor.HealthMonitor.failing).
Failing = Callable[[tuple[str, ...]], tuple[str, ...]]

# Which exceptions mean that a dependency is down, by the name of the check that watches it; any
# other exception a job raises is its own failure.
OUTAGES: dict[str, Callable[[BaseException], bool]] = {"database": database_unreachable}


class RunOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"  # not run: a check it depends on is failing
    DEPENDENCY_DOWN = "dependency_down"  # ran, and a dependency it declares failed it
    FAILED = "failed"  # ran, and failed of its own
    FOLLOWING = "following"  # not run: a singleton job that another replica leads


@dataclass(frozen=True)
class JobState:
    name: str
    interval_seconds: float
    last_success: float | None  # time.time()
    last_error: str | None
    runs: int  # finished, whatever the outcome (skipped ones included)
    failures: int  # runs that failed of their own
    depends_on: tuple[str, ...] = ()
    last_outcome: RunOutcome | None = None
    last_finished: float | None = None  # time.time() of the last run's end, whatever its outcome
    # time.time() of its last run not made for a cause outside it: a failing dependency, or (a
    # singleton job) another replica leading it; lateness counts from then at the earliest.
    last_waited: float | None = None
    running_since: float | None = None  # time.time(), while a run is in progress
    waiting_on: tuple[str, ...] = ()  # of `depends_on`, those failing now: not run meanwhile
    singleton: bool = False  # runs only on the replica that leads it
    following: bool = False  # a singleton job that another replica led at its last run

    def stalled(self, now: float, since: float, min_grace: float = LIVENESS_MIN_GRACE_SECONDS) -> str | None:
        """Why this job is not alive, or None: a run that has not returned, or no run finishing
        (counted from `since` if none ever did), for several intervals."""
        allowed = max(self.interval_seconds * LIVENESS_INTERVALS, min_grace)
        if self.running_since is not None:
            busy = now - self.running_since
            return f"{self.name}: a run has not returned for {busy:.0f}s" if busy > allowed else None
        idle = now - (self.last_finished or since)
        return f"{self.name}: no run finished for {idle:.0f}s" if idle > allowed else None


@dataclass(frozen=True)
class _Job:
    func: Callable[[], object]
    depends_on: tuple[str, ...]
    singleton: bool


class Scheduler:
    """`failing` says which checks are failing now (the monitor's cache); `redact` scrubs the
    error lines the scheduler logs and keeps; `min_grace_seconds` is liveness's floor;
    `leadership` says whether this replica runs the singleton jobs (default: it runs them all)."""

    def __init__(self, *, failing: Failing = lambda _names: (), redact: Redactor = Redactor(),
                 min_grace_seconds: float = LIVENESS_MIN_GRACE_SECONDS,
                 leadership: Leadership | None = None) -> None:
        # Probes block a thread for up to their timeout; on their own pool, a wide outage that
        # hangs every probe cannot delay the worker or reconciliation.
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(8), PROBES: ThreadPoolExecutor(16)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
            timezone="UTC",
        )
        self._failing = failing
        self._redact = redact
        self._min_grace = min_grace_seconds
        self._leadership = leadership if leadership is not None else Leadership(lambda _role: SoleLock())
        self._jobs: dict[str, _Job] = {}
        self._states: dict[str, JobState] = {}
        self._lock = threading.Lock()
        self.started_at: float | None = None

    def add(self, name: str, func: Callable[[], object], interval_seconds: float, *,
            depends_on: tuple[str, ...], run_now: bool = True, singleton: bool = False) -> None:
        """Run `func` every `interval_seconds`, except while a check named in `depends_on` fails.
        Every job says what it depends on, `()` included: the declaration is the point.
        `singleton`: work for one replica at a time, run here only while this replica leads the
        role named `name` (so every replica must give the job the same name)."""
        with self._lock:
            self._jobs[name] = _Job(func, depends_on, singleton)
            self._states[name] = JobState(name, interval_seconds, None, None, 0, 0, depends_on, singleton=singleton)
        if singleton:
            self._leadership.declare(name)
        kwargs: dict[str, Any] = {"next_run_time": datetime.now(UTC)} if run_now else {}
        executor = PROBES if name.startswith("check:") else "default"
        self._scheduler.add_job(self._run, "interval", args=(name,), seconds=interval_seconds, id=name,
                                name=name, executor=executor, **kwargs)

    # -- one run ---------------------------------------------------------------------------------

    def _run(self, name: str) -> None:
        """The one boundary around a job's run: nothing it raises reaches APScheduler."""
        job = self._jobs[name]
        waiting = self._failing(job.depends_on) if job.depends_on else ()
        if waiting:
            self._skipped(name, waiting)
            return
        if job.singleton and not self._leadership.lead(name):
            self._following(name)
            return
        self._update(name, running_since=time.time(), following=False)
        try:
            job.func()
        except Exception as error:
            self._failed(name, job, error)
        else:
            previous = self._finish(name, RunOutcome.SUCCEEDED, last_success=time.time(), last_error=None)
            if previous in (RunOutcome.SKIPPED, RunOutcome.DEPENDENCY_DOWN):
                log.info("Job %s runs again: its dependencies are back", name)

    def _skipped(self, name: str, waiting: tuple[str, ...]) -> None:
        previous = self._finish(name, RunOutcome.SKIPPED, last_waited=time.time())
        if previous is not RunOutcome.SKIPPED:
            log.info("Job %s waits while %s failing: not run until it is back", name, ", ".join(waiting))

    def _following(self, name: str) -> None:
        previous = self._finish(name, RunOutcome.FOLLOWING, last_waited=time.time(), following=True)
        if previous is not RunOutcome.FOLLOWING:
            log.info("Job %s follows: another replica leads it; this one takes over if that one stops", name)

    def _failed(self, name: str, job: _Job, error: Exception) -> None:
        said = self._redact(one_line(error, 500))
        down = next((d for d in job.depends_on if OUTAGES.get(d, _never)(error)), None)
        if down is None:
            self._finish(name, RunOutcome.FAILED, last_error=said, failed=True)
            log.error("Job %s failed: %s", name, said, exc_info=error)
            return
        previous = self._finish(name, RunOutcome.DEPENDENCY_DOWN, last_error=f"{down} unreachable: {said}")
        # One line per outage: the dependency's check says the rest, and the job waits on it.
        waited = previous in (RunOutcome.DEPENDENCY_DOWN, RunOutcome.SKIPPED)
        level = logging.DEBUG if waited else logging.WARNING
        log.log(level, "Job %s could not run: %s unreachable (%s); it runs again when %s is back",
                name, down, said, down)

    def _finish(self, name: str, outcome: RunOutcome, *, failed: bool = False,
                **changes: Any) -> RunOutcome | None:
        """Record a finished run; returns the outcome of the run before it."""
        with self._lock:
            state = self._states[name]
            self._states[name] = replace(state, last_outcome=outcome, last_finished=time.time(),
                                         running_since=None, runs=state.runs + 1,
                                         failures=state.failures + int(failed), **changes)
            return state.last_outcome

    def _update(self, name: str, **changes: Any) -> None:
        with self._lock:
            self._states[name] = replace(self._states[name], **changes)

    def resume_waiting(self, result: CheckResult, previous: CheckResult | None) -> None:
        """A health monitor listener: when a check stops failing, the jobs that waited on it run
        now rather than at their next interval (minutes away, for reconciliation), as waiting
        orders are resumed, so that no job looks late, or is, once its dependency is back."""
        if previous is None or previous.status is not Status.FAILING or result.status is Status.FAILING:
            return
        with self._lock:
            waited = [name for name, state in self._states.items()
                      if result.name in state.depends_on and state.last_outcome is RunOutcome.SKIPPED]
        for name in waited:
            self._scheduler.modify_job(name, next_run_time=datetime.now(UTC))

    # -- what the check, the metrics and /livez read ----------------------------------------------

    def jobs(self) -> list[JobState]:
        """Every job's record, with the dependencies it waits on now."""
        with self._lock:
            states = list(self._states.values())
        return [replace(s, waiting_on=self._failing(s.depends_on)) if s.depends_on else s for s in states]

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def liveness(self) -> tuple[bool, str]:
        """Alive while the scheduler runs and every job's runs keep finishing (see the module)."""
        if not self.running:
            return False, "scheduler not running"
        now = time.time()
        with self._lock:
            states = list(self._states.values())
        stalled = [why for job in states if (why := job.stalled(now, self.started_at or now, self._min_grace))]
        if stalled:
            return False, f"jobs hung or not running: {'; '.join(stalled)}"
        return True, "ok"

    def start(self) -> None:
        self.started_at = time.time()
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)


def _never(_error: BaseException) -> bool:
    return False
