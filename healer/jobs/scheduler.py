"""Periodic jobs on an APScheduler background scheduler, each with a dead-man's switch.

Every job records when it last succeeded; liveness (`/livez`) and the `scheduler` check read that,
so a wedged scheduler is noticed even though the process still answers HTTP.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)

PROBES = "probes"


@dataclass(frozen=True)
class JobState:
    name: str
    interval_seconds: float
    last_success: float | None  # time.time()
    last_error: str | None
    runs: int
    failures: int

    def overdue(self, now: float, since: float, grace_intervals: float = 5.0, minimum_grace: float = 30.0) -> bool:
        """No success for several intervals (counting from `since` if it never succeeded)."""
        allowed = max(self.interval_seconds * grace_intervals, minimum_grace)
        return now - (self.last_success or since) > allowed


class Scheduler:
    def __init__(self) -> None:
        # Probes block a thread for up to their timeout; on their own pool, a wide outage that
        # hangs every probe cannot delay the worker or reconciliation.
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(8), PROBES: ThreadPoolExecutor(16)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
            timezone="UTC",
        )
        self._scheduler.add_listener(self._on_event, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        self._jobs: dict[str, JobState] = {}
        self._lock = threading.Lock()
        self.started_at: float | None = None

    def add(self, name: str, func: Callable[[], object], interval_seconds: float, *, run_now: bool = True) -> None:
        with self._lock:
            self._jobs[name] = JobState(name, interval_seconds, None, None, 0, 0)
        kwargs = {"next_run_time": datetime.now(UTC)} if run_now else {}
        executor = PROBES if name.startswith("check:") else "default"
        self._scheduler.add_job(func, "interval", seconds=interval_seconds, id=name, name=name,
                                executor=executor, **kwargs)

    def _on_event(self, event: JobExecutionEvent) -> None:
        with self._lock:
            state = self._jobs.get(event.job_id)
            if state is None:
                return
            if event.code == EVENT_JOB_EXECUTED:
                self._jobs[event.job_id] = JobState(state.name, state.interval_seconds, time.time(), None,
                                                    state.runs + 1, state.failures)
            elif event.code == EVENT_JOB_ERROR:
                message = f"{type(event.exception).__name__}: {event.exception}"
                log.error("Job %s failed: %s", event.job_id, message)
                self._jobs[event.job_id] = JobState(state.name, state.interval_seconds, state.last_success,
                                                    message[:500], state.runs + 1, state.failures + 1)
            else:
                log.warning("Job %s missed its run time", event.job_id)

    def jobs(self) -> list[JobState]:
        with self._lock:
            return list(self._jobs.values())

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def liveness(self) -> tuple[bool, str]:
        if not self.running:
            return False, "scheduler not running"
        now = time.time()
        late = [j.name for j in self.jobs() if j.overdue(now, since=self.started_at or now)]
        if late:
            return False, f"jobs not succeeding: {', '.join(late)}"
        return True, "ok"

    def start(self) -> None:
        self.started_at = time.time()
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
