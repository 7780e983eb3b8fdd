"""restart_container: a labelled container of the compose project, unhealthy past its grace, is
restarted through the Engine API (a socket proxy that allows only that); a flap guard limits
restarts per window and escalates the rest; crashed and OOM-killed containers are escalated, never
started by healer."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import docker
from docker.errors import DockerException
from requests.exceptions import RequestException
from sqlalchemy.exc import SQLAlchemyError

from checks.base import CheckResult
from fulfilment.errors import one_line
from healer.remediation.audit import Action, Audit, Result
from healer.remediation.policy import RemediationPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContainerState:
    """What the guards need of one container's inspect data."""

    id: str
    name: str
    status: str  # running, exited, restarting, dead, created, paused
    health: str | None  # healthy, unhealthy, starting; None without a health check
    started_at: float  # epoch seconds
    start_period_seconds: float
    exit_code: int
    oom_killed: bool
    failing_streak: int
    last_probe_exit: object

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> ContainerState:
        state = attrs.get("State") or {}
        health = state.get("Health") or {}
        probes = health.get("Log") or [{}]
        check = (attrs.get("Config") or {}).get("Healthcheck") or {}
        return cls(
            id=str(attrs.get("Id", "")),
            name=str(attrs.get("Name") or attrs.get("Id", "?")[:12]).lstrip("/"),
            status=str(state.get("Status", "unknown")),
            health=health.get("Status"),
            started_at=_epoch(state.get("StartedAt")),
            start_period_seconds=int(check.get("StartPeriod") or 0) / 1e9,
            exit_code=int(state.get("ExitCode") or 0),
            oom_killed=bool(state.get("OOMKilled")),
            failing_streak=int(health.get("FailingStreak") or 0),
            # The probe's output is the container's to print and may hold anything: only its code.
            last_probe_exit=probes[-1].get("ExitCode", "?"),
        )

    @property
    def broken(self) -> tuple[str, str] | None:
        """(kind, words) when it is down in a way a restart by us must not paper over."""
        if self.oom_killed:
            return "oom_killed", f"OOM-killed (exit {self.exit_code})"
        if self.status == "restarting":
            return "restarting", f"restarting in a loop (last exit {self.exit_code})"
        if self.status == "dead" or (self.status == "exited" and self.exit_code != 0):
            return "exited", f"{self.status} with code {self.exit_code}"
        return None

    @property
    def unhealthy(self) -> bool:
        return self.status == "running" and self.health == "unhealthy"


_BROKEN_DETAIL = (
    "not restarted by healer: the engine's restart policy owns exited containers, and a container "
    "killed for memory would be killed again; see `docker logs --tail 100` and its memory limit"
)


class ContainerHealer:
    """Restarts unhealthy opted-in containers, at most `max_restarts` per window each."""

    def __init__(
        self, base_url: str, labels: Sequence[str], policy: RemediationPolicy, audit: Audit,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url
        self.labels = list(labels)  # all of them must match
        self.policy = policy
        self.audit = audit
        self.clock = clock
        self._lock = threading.Lock()  # one scan at a time: a restart can take stop_timeout seconds
        self._unhealthy_since: dict[str, tuple[float, float]] = {}  # name -> (started_at, first seen)
        self._attempts: dict[str, list[float]] = {}  # name -> restart attempts (epoch), within the window
        self._escalated: dict[tuple[str, str], float] = {}  # (name, why) -> when reported

    def on_docker_result(self, result: CheckResult) -> None:
        # The docker check's data counts failing containers, even while its threshold holds the
        # reported status: nothing failing means nothing to do, and no Engine API call.
        if not result.data.get("failing") and not self._unhealthy_since:
            return
        if not self._lock.acquire(blocking=False):
            return  # the previous scan is still restarting something
        try:
            self._scan()
        finally:
            self._lock.release()

    def forget(self) -> None:
        """Drop what this replica remembers of unhealthy stretches and restarts, while another
        replica restarts containers: if this one takes over, it counts from the audit again."""
        if not self._lock.acquire(blocking=False):
            return  # a scan is finishing; the next call forgets
        try:
            self._unhealthy_since.clear()
            self._attempts.clear()
        finally:
            self._lock.release()

    def _scan(self) -> None:
        try:
            client = docker.DockerClient(base_url=self.base_url, version="auto",
                                         timeout=self.policy.stop_timeout_seconds + 20)
        except DockerException as error:
            log.warning("Container remediation skipped: Docker engine unreachable: %s", one_line(error))
            return
        try:
            found = client.containers.list(all=True, filters={"label": self.labels}, ignore_removed=True)
            containers = [ContainerState.from_attrs(c.attrs) for c in found]
            now = self.clock()
            for container in containers:
                self._consider(client, container, now)
            unhealthy = {c.name for c in containers if c.unhealthy}
            self._unhealthy_since = {n: v for n, v in self._unhealthy_since.items() if n in unhealthy}
        except (DockerException, RequestException) as error:
            log.warning("Container remediation skipped: Docker engine error: %s", one_line(error))
        finally:
            client.close()

    def _consider(self, client: docker.DockerClient, container: ContainerState, now: float) -> None:
        broken = container.broken
        if broken is not None:
            self._escalate(container.name, *broken, _BROKEN_DETAIL, now)
            return
        if not container.unhealthy:
            return
        if now - container.started_at < container.start_period_seconds:
            return  # failures in the start period are the service starting, not an outage
        started_at, first_seen = self._unhealthy_since.get(container.name, (None, now))
        if started_at != container.started_at:  # first sighting, or restarted since
            first_seen = now
        self._unhealthy_since[container.name] = (container.started_at, first_seen)
        if now - first_seen < self.policy.unhealthy_seconds:
            return
        attempts = self._recent_attempts(container.name, now)
        if len(attempts) >= self.policy.max_restarts:
            self._escalate(
                container.name,
                "flapping",
                f"still unhealthy after {len(attempts)} restart(s) in {self.policy.window_seconds:g}s",
                f"flap guard (HEALER_AUTOHEAL_MAX_RESTARTS={self.policy.max_restarts} per "
                f"{self.policy.window_seconds:g}s): not restarted again; see `docker logs --tail 100 "
                f"{container.name}`",
                now,
            )
            return
        self._restart(client, container, now - first_seen, now)

    def _restart(
        self, client: docker.DockerClient, container: ContainerState, unhealthy_for: float, now: float
    ) -> None:
        attempts = self._attempts.setdefault(container.name, [])
        attempts.append(now)
        self._unhealthy_since.pop(container.name, None)  # the next restart needs a new stretch of unhealthy
        reason = (f"unhealthy for {unhealthy_for:.0f}s ({container.failing_streak} failed probes, "
                  f"last exit {container.last_probe_exit})")
        count = (f"restart {len(attempts)} of at most {self.policy.max_restarts} per "
                 f"{self.policy.window_seconds:g}s")
        if self.audit.dry_run:
            self.audit.record(Action.RESTART_CONTAINER, container.name, reason, Result.DRY_RUN,
                              f"would restart it ({count})")
            return
        started = time.monotonic()
        try:
            client.api.restart(container.id, timeout=self.policy.stop_timeout_seconds)
        except (DockerException, RequestException) as error:
            self.audit.record(Action.RESTART_CONTAINER, container.name, reason, Result.FAILURE, one_line(error))
            return
        self.audit.record(Action.RESTART_CONTAINER, container.name, reason, Result.SUCCESS,
                          f"restarted in {time.monotonic() - started:.1f}s ({count})")

    def _recent_attempts(self, name: str, now: float) -> list[float]:
        if name not in self._attempts:
            self._attempts[name] = self._attempts_on_record(name, now)
        window_start = now - self.policy.window_seconds
        self._attempts[name] = [t for t in self._attempts[name] if t >= window_start]
        return self._attempts[name]

    def _attempts_on_record(self, name: str, now: float) -> list[float]:
        """Attempts of the window from the audit, so a restarted daemon (or another) keeps the guard."""
        acted = (Result.DRY_RUN,) if self.audit.dry_run else (Result.SUCCESS, Result.FAILURE)
        since = datetime.fromtimestamp(now - self.policy.window_seconds, UTC)
        try:
            return self.audit.attempts_since(Action.RESTART_CONTAINER, name, acted, since)
        except SQLAlchemyError as error:
            log.warning("Restart history of %s unavailable (counting from now): %s", name, one_line(error))
            return []

    def _escalate(self, name: str, kind: str, why: str, detail: str, now: float) -> None:
        """Report once per container and kind per window: the check and the alert carry it on."""
        reported = self._escalated.get((name, kind))
        if reported is not None and now - reported < self.policy.window_seconds:
            return
        self._escalated[(name, kind)] = now
        self.audit.record(Action.RESTART_CONTAINER, name, why, Result.ESCALATED, detail)


def _epoch(value: str | None) -> float:
    if not value or value.startswith("0001-"):  # the engine's "never"
        return 0.0
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0
