"""The shop's containers, through the Docker Engine API: `docker-compose ps`, continuously.

The containers watched are those carrying `label` (by default the compose project's label). Each
is judged on its state:
- failing: unhealthy, OOM-killed, exited with a non-zero code, dead, or restarting in a loop
  (`Restarting`, or `restart_loop_count` restarts with the last start under `restart_window_seconds`
  ago: restarts long ago are history, not a loop);
- warning: restarted recently but fewer times, created but never started, paused, or no container
  with the label at all (a wrong project name or a stack that is down);
- ok: running (healthy, or with no health check, or still in its start period), or exited 0 (a
  one-shot service such as a migration).
Without an engine configured (`base_url` None) the check is `disabled`; configured but unreachable
is failing, with the reason (no socket, refused, permission denied, no answer).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import docker
from docker.errors import DockerException
from requests.exceptions import RequestException

from checks.base import Check, CheckDisabled, CheckFailed, CheckWarning, Healthy, Runbook

COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"


def compose_project_label(project: str) -> str:
    """The label selecting every container of one compose project, for `DockerCheck.label`."""
    return f"{COMPOSE_PROJECT_LABEL}={project}"


class Severity(enum.IntEnum):
    OK = 0
    WARNING = 1
    FAILING = 2


@dataclass(frozen=True)
class Finding:
    container: str
    severity: Severity
    text: str  # "web-1 unhealthy (3 failed probes, last exit 1)"


@dataclass(frozen=True, kw_only=True)
class DockerCheck(Check):
    name: ClassVar[str] = "docker"
    runbook: ClassVar[Runbook] = Runbook.RESOURCES

    base_url: str | None  # DOCKER_HOST, e.g. unix:///var/run/docker.sock; None: no engine here
    label: str = compose_project_label("healer")  # "key=value" or "key"
    restart_loop_count: int = 3
    restart_window_seconds: float = 600.0
    critical: bool = False  # the daemon serves and heals without the engine; it only watches it

    def probe(self) -> str | Healthy:
        if self.base_url is None:
            raise CheckDisabled("no Docker engine configured (DOCKER_HOST unset)")
        containers = self._inspect_all()
        now = time.time()
        findings = [self._judge(c, now) for c in containers]
        data = _data(containers, findings)
        if not containers:
            raise CheckWarning(f"no containers with label {self.label}", _NO_CONTAINERS_REMEDY, data)
        bad = [f for f in findings if f.severity is Severity.FAILING]
        if bad:
            raise CheckFailed(_join(bad, findings), _remedy(bad), data)
        late = [f for f in findings if f.severity is Severity.WARNING]
        if late:
            raise CheckWarning(_join(late, findings), _remedy(late), data)
        return Healthy(f"{len(findings)} containers ok: " + ", ".join(f.text for f in findings), data)

    def _inspect_all(self) -> list[dict[str, Any]]:
        try:
            client = docker.DockerClient(base_url=self.base_url, version="auto", timeout=self.timeout_seconds)
        except DockerException as error:
            raise self._unreachable(error) from None
        try:
            found = client.containers.list(all=True, filters={"label": self.label}, ignore_removed=True)
            return sorted((c.attrs for c in found), key=_name)
        except (DockerException, RequestException) as error:
            raise self._unreachable(error) from None
        finally:
            client.close()

    def _unreachable(self, error: Exception) -> CheckFailed:
        reason = _reason(str(error))
        return CheckFailed(
            f"Docker engine at {self.base_url} unreachable: {reason}",
            "Check DOCKER_HOST and that the engine runs (`docker -H <DOCKER_HOST> info`); in a "
            "container, mount the socket (`/var/run/docker.sock:/var/run/docker.sock`) and run as a "
            "user allowed to use it. Unset DOCKER_HOST to turn this check off.",
        )

    def _judge(self, attrs: dict[str, Any], now: float) -> Finding:
        name = _name(attrs)
        state = attrs.get("State") or {}
        status = state.get("Status", "unknown")
        restarts = int(attrs.get("RestartCount") or 0)
        exit_code = state.get("ExitCode", 0)
        if state.get("OOMKilled"):
            return Finding(name, Severity.FAILING, f"{name} OOM-killed (exit {exit_code}, {restarts} restarts)")
        if status == "restarting":  # down right now, whatever the count: the engine is between runs
            what = "restarting in a loop" if restarts >= self.restart_loop_count else "restarting"
            return Finding(name, Severity.FAILING, f"{name} {what} (exit {exit_code}, {restarts} restarts)")
        if status in ("exited", "dead"):
            severity = Severity.OK if exit_code == 0 and status == "exited" else Severity.FAILING
            return Finding(name, severity, f"{name} {status} with code {exit_code}")
        if status in ("created", "paused"):
            return Finding(name, Severity.WARNING, f"{name} {status}")
        uptime = now - _timestamp(state.get("StartedAt"), default=0.0)
        if restarts and uptime < self.restart_window_seconds:
            loop = restarts >= self.restart_loop_count
            text = f"{name} restarted {restarts} times, up {uptime:.0f}s (last exit {exit_code})"
            return Finding(name, Severity.FAILING if loop else Severity.WARNING, text)
        return _health(name, state.get("Health"))


def _health(name: str, health: dict[str, Any] | None) -> Finding:
    if not health:
        return Finding(name, Severity.OK, f"{name} running")
    status = health.get("Status", "none")
    if status != "unhealthy":
        return Finding(name, Severity.OK, f"{name} {status}")
    log = health.get("Log") or [{}]
    # The probe's output is the container's to print and may hold anything: only its exit code.
    last_exit = log[-1].get("ExitCode", "?")
    streak = health.get("FailingStreak", 0)
    return Finding(name, Severity.FAILING, f"{name} unhealthy ({streak} failed probes, last exit {last_exit})")


def _name(attrs: dict[str, Any]) -> str:
    return str(attrs.get("Name") or attrs.get("Id", "?")[:12]).lstrip("/")


def _timestamp(value: str | None, default: float) -> float:
    if not value or value.startswith("0001-"):  # the engine's "never"
        return default
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return default


def _data(containers: list[dict[str, Any]], findings: list[Finding]) -> dict[str, float]:
    states = [c.get("State") or {} for c in containers]
    health = [(s.get("Health") or {}).get("Status") for s in states]
    return {
        "containers": float(len(containers)),
        "running": float(sum(1 for s in states if s.get("Running") and not s.get("Restarting"))),
        "unhealthy": float(health.count("unhealthy")),
        "oom_killed": float(sum(1 for s in states if s.get("OOMKilled"))),
        "restarts": float(sum(int(c.get("RestartCount") or 0) for c in containers)),
        "failing": float(sum(1 for f in findings if f.severity is Severity.FAILING)),
    }


def _join(worst: list[Finding], everything: list[Finding]) -> str:
    detail = "; ".join(f.text for f in worst)
    rest = len(everything) - len(worst)
    return detail + (f" ({rest} other containers ok or less severe)" if rest else "")


def _reason(message: str) -> str:
    known = (
        ("No such file or directory", "no socket at that path (is the engine running, is the socket mounted?)"),
        ("Connection refused", "connection refused (nothing listening: the engine is stopped)"),
        ("Permission denied", "permission denied on the socket"),
        ("timed out", "no answer in time"),
    )
    for needle, reason in known:
        if needle in message:
            return reason
    return message[:300]


def _remedy(findings: list[Finding]) -> str:
    names = ", ".join(dict.fromkeys(f.container for f in findings))
    return (
        f"Runbook 6: look at {names} with `docker inspect` and `docker logs --tail 100`. OOM-killed: "
        f"raise its memory limit or find the leak; restart loop or non-zero exit: its log names the "
        f"error; unhealthy: `docker restart` it (healer restarts containers labelled for autoheal)."
    )


_NO_CONTAINERS_REMEDY = (
    "The stack may be down (`docker compose up -d`), or the label does not match the compose project "
    "name (`docker ps --format '{{.Labels}}'` shows the labels)."
)
