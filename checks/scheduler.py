"""A dead-man's switch per periodic job: each must have succeeded recently.

The process can answer HTTP while its scheduler is wedged or a job fails on every run; nothing but
the absence of success shows that. A job is late after `warning_intervals` of its intervals without
a success and dead after `failing_intervals` (counted from the scheduler's start if it never
succeeded). Fast jobs get at least `min_interval_seconds` per interval, so a worker polling every
2 s is not declared dead by one slow run or a busy machine: 5 x 6 s matches the 30 s grace the
scheduler's own liveness uses.

A job waits, rather than fails, while a check it depends on is failing (the scheduler does not
run it then, as the pipeline does not run a gated step): such a job is not late, and when nothing
else is wrong the check reports `skipped: database failing`, leaving the alarm to that check.
Whether a waiting job still runs at all is liveness's question (`/livez`), not this check's.

A singleton job that another replica leads (`following`) is not run here at all: it is neither
late nor dead on this replica, whose switch leaves it to the leader's. When this replica takes
over, the job's intervals count from its last run as a follower.

The check takes callables rather than the scheduler, so this package does not depend on `healer`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from checks.base import Check, CheckDisabled, CheckFailed, CheckSkipped, CheckWarning, Healthy, Runbook


class JobLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def interval_seconds(self) -> float: ...

    @property
    def last_success(self) -> float | None: ...  # time.time() of the last success

    @property
    def last_error(self) -> str | None: ...

    @property
    def waiting_on(self) -> tuple[str, ...]: ...  # checks it depends on that are failing now

    @property
    def last_waited(self) -> float | None: ...  # when it last waited on a failing dependency or a leader

    @property
    def following(self) -> bool: ...  # another replica leads this singleton job: not run here


@dataclass(frozen=True)
class Lateness:
    name: str
    silent_seconds: float  # since the last success, or since the start if none yet
    late_seconds: float  # the same, but from its last wait on a dependency if that is later
    allowed_seconds: float  # before the job counts as dead
    succeeded: bool
    last_error: str | None
    waiting_on: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SchedulerCheck(Check):
    name: ClassVar[str] = "scheduler"
    runbook: ClassVar[Runbook] = Runbook.NONE

    jobs: Callable[[], Sequence[JobLike]] = field(repr=False, compare=False)
    # When the scheduler started (time.time()), or a callable returning it; None: not started.
    started_at: float | None | Callable[[], float | None] = field(repr=False, compare=False)
    warning_intervals: float = 2.0
    failing_intervals: float = 5.0
    min_interval_seconds: float = 6.0
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    critical: bool = False  # /livez reads the scheduler itself; a late job must not stop traffic

    def probe(self) -> str | Healthy:
        started = self.started_at() if callable(self.started_at) else self.started_at
        if started is None:
            raise CheckDisabled("scheduler not started: no periodic jobs to watch")
        now = self.clock()
        every = self.jobs()
        following = sorted(job.name for job in every if job.following)
        jobs = [self._lateness(job, now, started) for job in every if not job.following]
        data = {f"{j.name}.seconds_since_success": round(j.silent_seconds, 3) for j in jobs}
        waiting = [j for j in jobs if j.waiting_on]
        dead = [j for j in jobs if not j.waiting_on and j.late_seconds > j.allowed_seconds]
        late = [j for j in jobs if not j.waiting_on and j not in dead and j.late_seconds > self._warn_after(j)]
        data.update({"jobs": float(len(jobs)), "jobs_late": float(len(late)), "jobs_dead": float(len(dead)),
                     "jobs_waiting": float(len(waiting)), "jobs_following": float(len(following))})
        if dead:
            raise CheckFailed("; ".join(_describe(j) for j in dead), _remedy(dead), data)
        if late:
            raise CheckWarning("; ".join(_describe(j) for j in late), _remedy(late), data)
        if waiting:  # their dependency's check raises the alarm; a job that hangs fails /livez
            failing = list(dict.fromkeys(name for j in waiting for name in j.waiting_on))
            raise CheckSkipped(failing, f"jobs {', '.join(sorted(j.name for j in waiting))} wait for it", data)
        led_elsewhere = f"; another replica leads {', '.join(following)}" if following else ""
        if not jobs:
            return Healthy(f"no periodic jobs run here{led_elsewhere}" if following else "no periodic jobs registered",
                           data)
        return Healthy(f"{len(jobs)} jobs succeeding: {', '.join(sorted(j.name for j in jobs))}{led_elsewhere}", data)

    def _lateness(self, job: JobLike, now: float, started: float) -> Lateness:
        since = job.last_success if job.last_success is not None else started
        # A job that has just stopped waiting gets its intervals again, counted from then.
        excused = max(since, job.last_waited or since)
        interval = max(job.interval_seconds, self.min_interval_seconds)
        return Lateness(job.name, max(0.0, now - since), max(0.0, now - excused), interval * self.failing_intervals,
                        job.last_success is not None, job.last_error, tuple(job.waiting_on))

    def _warn_after(self, job: Lateness) -> float:
        return job.allowed_seconds * self.warning_intervals / self.failing_intervals


def _describe(job: Lateness) -> str:
    what = "no success for" if job.succeeded else "never succeeded in"
    error = f", last error: {job.last_error}" if job.last_error else ", no error recorded (hung or not run)"
    return f"job {job.name}: {what} {job.silent_seconds:.0f}s{error}"


def _remedy(jobs: list[Lateness]) -> str:
    erring = [j.name for j in jobs if j.last_error]
    if erring:
        return (f"Fix the error the job reports ({', '.join(erring)}): it usually names a failing "
                f"dependency whose own check says more. The job retries on its next run.")
    return ("The job is not running or never returns: look for a hung call in the daemon's log "
            "(and a thread dump with `py-spy dump`), then restart the daemon; work resumes from the "
            "database.")
