"""Self-healing: the runbook's safe fixes, taken by the daemon itself, guarded, audited and counted.

Each action is driven by what the daemon already sees (`Remediator.on_check_result` listens to
the health monitor, `Remediator.observe_step` watches order steps) and refuses what is not safe:

- restart_container: a running container that carries HEALER_AUTOHEAL_LABEL *and* the compose
  project's label (so another stack on the same engine is never touched), unhealthy for
  `unhealthy_seconds` past its health start period, is restarted through the Engine API. Flap
  guard: at most `max_restarts` attempts per `window_seconds` per container; past that it is
  escalated (a row, the metric, an ERROR line) and left alone while the docker check keeps failing
  on it. OOM-killed, crashed and restart-looping containers are escalated with their exit code and
  never started by us: the engine's restart policy owns exited containers, and an OOM kill would
  only repeat. It needs its own opt-in (HEALER_AUTOHEAL_DOCKER=on): it needs the Docker socket.
- regenerate_waveform: a render that ran without the shop's waveform image (lost, expired) drew
  the wave from the audio; the PNG is then regenerated from the audio (in a render process, under
  the render limits) and written to the order's permanent waveform key, so the order's files are
  whole again.
- resume_orders: a check turned green again; orders waiting on it go now, not at their next poll.
- free_scratch: the disk check warns or fails and the scratch file system is below the disk
  check's warning level: old regular files under the scratch directory, and nothing else
  (symlinks are never followed, file systems mounted inside never entered), are deleted oldest
  first until it is above that level again.

Every action is a `remediations` row (healer.remediation.audit) and a count in
healer_remediations_total{action,result}. HEALER_REMEDIATION=off does nothing at all; dry-run logs
and records what it would do (result `dry_run`) and changes nothing.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import docker
from docker.errors import DockerException
from requests.exceptions import RequestException
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from checks.base import CheckResult, Status
from checks.disk import DiskCheck, Thresholds, Usage, format_bytes, measure
from fulfilment.errors import StepError, one_line
from fulfilment.models import Order, Outcome, Step, transaction, utcnow
from fulfilment.pipeline import (
    MAX_AUDIO_BYTES,
    NEXT_STEP,
    STEP_CHECKS,
    WAITING_PREFIX,
    StepResult,
    permanent_key,
)
from fulfilment.storage import ObjectStore
from healer.remediation.audit import Action, Remediation, Result
from healer.config import RemediationMode
from healer.health.metrics import Metrics
from healer.worker import RenderPool

log = logging.getLogger(__name__)

_GATING_CHECKS = frozenset(check for checks in STEP_CHECKS.values() for check in checks)
_LOG_LEVELS = {
    Result.SUCCESS: logging.INFO,
    Result.DRY_RUN: logging.INFO,
    Result.FAILURE: logging.WARNING,
    Result.ESCALATED: logging.ERROR,  # healer would not fix it: a human must
}


@dataclass(frozen=True)
class RemediationPolicy:
    """The guards of the actions; the environment variables the settings read them from."""

    docker: bool = False  # HEALER_AUTOHEAL_DOCKER=on: restarts need the Docker socket
    unhealthy_seconds: float = 60.0  # HEALER_AUTOHEAL_UNHEALTHY_SECONDS: a blip is not an outage
    max_restarts: int = 3  # HEALER_AUTOHEAL_MAX_RESTARTS: per container per window
    window_seconds: float = 3600.0  # HEALER_AUTOHEAL_WINDOW_SECONDS
    stop_timeout_seconds: int = 10  # `docker restart -t`: SIGTERM, then SIGKILL after this
    # Younger files may belong to a render in flight (renders time out after 300 s).
    scratch_min_age_seconds: float = 900.0
    # Freed until the scratch file system is above the disk check's warning level, so it turns green.
    scratch_target: Thresholds = DiskCheck.warn_below


# -- the audit ------------------------------------------------------------------------------------


class Audit:
    """Writes the row, counts the metric and logs the line of every remediation."""

    def __init__(
        self, sessions: sessionmaker[Session], metrics: Metrics, mode: RemediationMode, worker: str | None = None
    ) -> None:
        self.sessions = sessions
        self.metrics = metrics
        self.mode = mode
        self.worker = worker
        # Known label sets exist from start-up, so rate() and absence alerts see them at 0.
        for action in Action:
            for result in Result:
                metrics.remediations.labels(action.value, result.value)

    @property
    def dry_run(self) -> bool:
        return self.mode is RemediationMode.DRY_RUN

    def record(self, action: Action, target: str, reason: str, result: Result, detail: str = "") -> None:
        self.metrics.remediations.labels(action.value, result.value).inc()
        log.log(_LOG_LEVELS[result], "Remediation %s on %s: %s (%s): %s%s", action.value, target, result.value,
                self.mode.value, reason, f"; {detail}" if detail else "")
        try:
            with transaction(self.sessions) as session:
                session.add(Remediation(
                    at=utcnow(), action=action.value, target=target[:255], reason=reason[:2000],
                    result=result.value, mode=self.mode.value, detail=detail[:2000], worker=self.worker,
                ))
        except SQLAlchemyError as error:
            # The action stands (and is counted and logged above); only its row is lost.
            log.error("Remediation %s on %s not recorded: database unavailable: %s", action.value, target,
                      one_line(error))

    def attempts_since(self, action: Action, target: str, results: Sequence[Result], since: datetime) -> list[float]:
        """When `action` was taken on `target` since `since` (epoch seconds), by any daemon."""
        with self.sessions() as session:
            rows = session.scalars(
                select(Remediation.at).where(
                    Remediation.action == action.value, Remediation.target == target,
                    Remediation.result.in_([r.value for r in results]), Remediation.at >= since,
                )
            ).all()
        return sorted(at.timestamp() for at in rows)


# -- restart_container ----------------------------------------------------------------------------


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
        since = datetime.fromtimestamp(now - self.policy.window_seconds, timezone.utc)
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


# -- free_scratch ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScratchFile:
    parts: tuple[str, ...]  # its path below the scratch directory
    mtime: float
    size: int  # bytes on disk: what deleting it frees
    device: int
    inode: int

    @property
    def relative(self) -> str:
        return "/".join(self.parts)


class ScratchSweeper:
    """Frees the daemon's own scratch space: old files under one directory, oldest first."""

    def __init__(
        self, root: Path, policy: RemediationPolicy, audit: Audit, clock: Callable[[], float] = time.time
    ) -> None:
        self.root = root
        self.policy = policy
        self.audit = audit
        self.clock = clock
        self._lock = threading.Lock()
        self._reported = False  # this low-space episode already has its dry-run or escalation row

    def on_disk_result(self, result: CheckResult) -> None:
        if result.status not in (Status.WARNING, Status.FAILING):
            self._reported = False
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            self.sweep(f"disk check {result.status.value}")
        finally:
            self._lock.release()

    def sweep(self, why: str) -> None:
        usage = measure("scratch", self.root)
        short = usage.below(self.policy.scratch_target)
        if not short:
            self._reported = False  # low elsewhere: nothing of ours would help
            return
        reason = f"{why}; scratch file system {'; '.join(short)}"
        if self.root.is_symlink():
            self._once(reason, Result.ESCALATED, f"{self.root} is a symlink: healer only deletes inside a real "
                                                 f"directory of its own, never where a link points")
            return
        try:
            freed, usage = self._free(usage)
        except OSError as error:
            self._once(reason, Result.FAILURE, f"{type(error).__name__}: {error}")
            return
        if freed and not self.audit.dry_run:
            self.audit.record(Action.FREE_SCRATCH, str(self.root), reason, Result.SUCCESS,
                              _freed(freed, usage, dry_run=False))
        elif freed:  # dry-run: the same files would be listed again every interval
            self._once(reason, Result.DRY_RUN, _freed(freed, usage, dry_run=True))
        else:
            self._once(reason, Result.ESCALATED,
                       f"nothing of healer's own to delete (no file older than "
                       f"{self.policy.scratch_min_age_seconds:g}s under {self.root}): free space elsewhere on "
                       f"the file system")

    def _once(self, reason: str, result: Result, detail: str) -> None:
        """One row per low-space episode for what would repeat on every probe."""
        if not self._reported:
            self._reported = True
            self.audit.record(Action.FREE_SCRATCH, str(self.root), reason, result, detail)

    def _free(self, usage: Usage) -> tuple[list[ScratchFile], Usage]:
        """Delete (or, in dry-run, pick) old files, oldest first, until the target is met."""
        try:
            # O_NOFOLLOW: a scratch directory that is itself a symlink is not ours to empty.
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return [], usage
        older_than = self.clock() - self.policy.scratch_min_age_seconds
        chosen: list[ScratchFile] = []
        try:
            for old in sorted(_old_files(root_fd, older_than), key=lambda f: f.mtime):
                if not usage.below(self.policy.scratch_target):
                    break
                if self.audit.dry_run:
                    usage = replace(usage, free_bytes=usage.free_bytes + old.size, free_inodes=usage.free_inodes + 1)
                elif _unlink_beneath(root_fd, old, older_than):
                    usage = measure("scratch", self.root)
                else:
                    continue
                chosen.append(old)
        finally:
            os.close(root_fd)
        return chosen, usage


def _old_files(root_fd: int, older_than: float) -> Iterator[ScratchFile]:
    """Regular files below `root_fd` last modified before `older_than`, on the root's file system.

    os.fwalk works on directory descriptors and, without follow_symlinks, never enters a symlinked
    directory, even one swapped in while it walks; symlinks to files are not regular files.
    """
    device = os.fstat(root_fd).st_dev
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=root_fd, follow_symlinks=False):
        # Another file system mounted inside is not scratch space, even if it is in the tree.
        dirnames[:] = [d for d in dirnames if (info := _lstat(d, dir_fd)) is not None
                       and stat.S_ISDIR(info.st_mode) and info.st_dev == device]
        base = tuple(p for p in Path(dirpath).parts if p != ".")
        for name in filenames:
            info = _lstat(name, dir_fd)
            if info is None or not stat.S_ISREG(info.st_mode) or info.st_dev != device:
                continue
            if info.st_mtime < older_than:
                yield ScratchFile(base + (name,), info.st_mtime, info.st_blocks * 512, info.st_dev, info.st_ino)


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _unlink_beneath(root_fd: int, file: ScratchFile, older_than: float) -> bool:
    """Delete `file` if it is still the old regular file that was listed, walking down from the
    root by descriptor with O_NOFOLLOW, so a directory replaced by a symlink cannot lead outside."""
    opened: list[int] = []
    try:
        fd = root_fd
        for part in file.parts[:-1]:
            fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            opened.append(fd)
        info = os.stat(file.parts[-1], dir_fd=fd, follow_symlinks=False)
        if (info.st_dev, info.st_ino) != (file.device, file.inode) or not stat.S_ISREG(info.st_mode):
            return False  # replaced since it was listed
        if info.st_mtime >= older_than:
            return False  # written again since: in use
        os.unlink(file.parts[-1], dir_fd=fd)
        return True
    except FileNotFoundError:
        return False
    except OSError as error:  # ELOOP/ENOTDIR: a directory became a symlink; not followed
        log.warning("Scratch file %s not deleted: %s", file.relative, error)
        return False
    finally:
        for fd in opened:
            os.close(fd)


def _freed(files: list[ScratchFile], usage: Usage, *, dry_run: bool) -> str:
    total = sum(f.size for f in files)
    oldest = datetime.fromtimestamp(files[0].mtime, timezone.utc).isoformat(timespec="seconds")
    names = ", ".join(f.relative for f in files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    verb, then = ("would delete", "then") if dry_run else ("deleted", "now")
    return (f"{verb} {len(files)} file(s) of {format_bytes(total)}, oldest from {oldest} ({names}); "
            f"{then} {format_bytes(usage.free_bytes)} free of {format_bytes(usage.total_bytes)} "
            f"({usage.free_ratio:.0%})")


# -- regenerate_waveform --------------------------------------------------------------------------


class WaveformRestorer:
    """After a render without the shop's waveform image, writes one regenerated from the audio.

    The audio is the customer's: it is decoded in a render process under the render limits, never
    in the daemon. Without a `renderer`, the restorer keeps a one-process RenderPool of its own on
    the default limits (waveforms need neither assets nor scratch space); its process starts on
    the first waveform to redraw.
    """

    def __init__(
        self, sessions: sessionmaker[Session], store: ObjectStore, audit: Audit, renderer: RenderPool | None = None
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.audit = audit
        self.renderer = renderer or RenderPool(Path(), 1, Path(tempfile.gettempdir()))

    def after_render(self, order_id: uuid.UUID) -> None:
        try:
            with self.sessions() as session:
                order = session.get(Order, order_id)
        except SQLAlchemyError as error:
            log.warning("Waveform of order %s not checked: %s", order_id, one_line(error))
            return
        if order is None or not order.waveform_key or not order.audio_key:
            return  # no waveform was ever uploaded: nothing was lost
        key = permanent_key(order.id, "waveform", order.waveform_key)
        audio_key = permanent_key(order.id, "audio", order.audio_key)
        reason = "the render ran without the order's waveform image (lost or expired): drew it from the audio"
        try:
            if self.store.exists(key):
                return
            if self.audit.dry_run:
                self.audit.record(Action.REGENERATE_WAVEFORM, str(order_id), reason, Result.DRY_RUN,
                                  f"would write {key} from {audio_key}")
                return
            png = self.renderer.waveform_png(self.store.get(audio_key, MAX_AUDIO_BYTES), audio_key)
            self.store.put(key, png, "image/png")
        except StepError as error:
            self.audit.record(Action.REGENERATE_WAVEFORM, str(order_id), reason, Result.FAILURE,
                              f"{error.error_class.value}: {error.message}")
        else:
            self.audit.record(Action.REGENERATE_WAVEFORM, str(order_id), reason, Result.SUCCESS,
                              f"wrote {key} ({len(png)} bytes) from {audio_key}")

    def shutdown(self) -> None:
        self.renderer.shutdown()


# -- rerender_pdf ---------------------------------------------------------------------------------


class PdfRestorer:
    """A download link finds its PDF gone (deleted, lost, a broken stored key): the poster is
    rendered again from the order's permanent files, in the background, and the customer is told
    to come back in a minute. While a check the render step needs is failing (S3, assets, disk,
    memory), nothing is tried and the customer is told the same. Per order and `window_seconds`,
    by any daemon: `max_attempts` successful renders (a PDF that keeps vanishing is a storage
    problem) or `max_attempts` failed ones (its files are gone too) and it is escalated, once.
    """

    def __init__(
        self, rerender: Callable[[uuid.UUID], str], audit: Audit, *, render_blocked: Callable[[], str | None] =
        lambda: None, max_attempts: int = 3, window_seconds: float = 86400.0,
    ) -> None:
        self.rerender = rerender  # fulfilment.pipeline.Pipeline.rerender
        self.render_blocked = render_blocked  # the failing check the render step waits on, if any
        self.audit = audit
        self.max_attempts = max_attempts
        self.window_seconds = window_seconds
        self._running: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerender")

    def on_missing(self, order_id: uuid.UUID, why: str) -> bool:
        """True: the link works again shortly (a render is under way, or waits on a check that
        is failing); False: a human must act."""
        target, reason = str(order_id), f"the download link's PDF is unavailable: {why}"[:500]
        with self._lock:
            if order_id in self._running:
                return True
        try:
            if self.audit.dry_run:
                self._once(target, reason, Result.DRY_RUN, "would render the poster again from the order's files")
                return False
            if (blocked := self.render_blocked()) is not None:
                log.info("PDF of order %s is rendered again once %s", order_id, blocked)
                return True  # no attempt spent: what fails is not this order
            if given_up := self._given_up(target):
                self._once(target, reason, Result.ESCALATED, given_up)
                return False
        except SQLAlchemyError as error:
            log.warning("PDF of order %s not rendered again: %s", order_id, one_line(error))
            return False
        with self._lock:
            if order_id in self._running:
                return True
            self._running.add(order_id)
        try:
            self._threads.submit(self._run, order_id, reason)
        except RuntimeError:  # shutting down
            with self._lock:
                self._running.discard(order_id)
            return False
        return True

    def _given_up(self, target: str) -> str | None:
        hours = f"{self.window_seconds / 3600:g} h"
        if len(lost := self._since(target, (Result.SUCCESS,))) >= self.max_attempts:
            return (f"rendered again {len(lost)} time(s) in {hours} and lost each time: check the bucket's "
                    "lifecycle rules and who deletes from pdfs/")
        if len(failed := self._since(target, (Result.FAILURE,))) >= self.max_attempts:
            return f"rendering it again failed {len(failed)} time(s) in {hours}: see the failures' detail"
        return None

    def _run(self, order_id: uuid.UUID, reason: str) -> None:
        try:
            key = self.rerender(order_id)
        except StepError as error:
            self.audit.record(Action.RERENDER_PDF, str(order_id), reason, Result.FAILURE,
                              f"{error.error_class.value}: {error.message}")
        except Exception as error:  # noqa: BLE001 - the database, or a bug: recorded, never raised
            log.exception("Rendering the PDF of order %s again failed", order_id)
            self.audit.record(Action.RERENDER_PDF, str(order_id), reason, Result.FAILURE, one_line(error))
        else:
            self.audit.record(Action.RERENDER_PDF, str(order_id), reason, Result.SUCCESS,
                              f"rendered again from the order's files and stored at {key}")
        finally:
            with self._lock:
                self._running.discard(order_id)

    def _since(self, target: str, results: Sequence[Result]) -> list[float]:
        since = datetime.fromtimestamp(time.time() - self.window_seconds, timezone.utc)
        return self.audit.attempts_since(Action.RERENDER_PDF, target, results, since)

    def _once(self, target: str, reason: str, result: Result, detail: str) -> None:
        """One row per order and window, however often the customer clicks."""
        if not self._since(target, (result,)):
            self.audit.record(Action.RERENDER_PDF, target, reason, result, detail)

    def shutdown(self) -> None:
        """Drop renders not started; finish (and record) the one under way."""
        self._threads.shutdown(wait=True, cancel_futures=True)


# -- resume_orders --------------------------------------------------------------------------------


class OrderResumer:
    """A check is green again: the orders waiting on it go now, not at their next poll."""

    def __init__(self, sessions: sessionmaker[Session], resume_waiting: Callable[[str], int], audit: Audit) -> None:
        self.sessions = sessions
        self.resume_waiting = resume_waiting  # fulfilment.pipeline.Pipeline.resume_waiting
        self.audit = audit

    def on_green(self, new: CheckResult, previous: CheckResult) -> None:
        if new.name not in _GATING_CHECKS:
            return  # no step waits on it
        reason = f"check {new.name} is {new.status.value} again after failing: {previous.detail}"[:500]
        try:
            if self.audit.dry_run:
                waiting = count_waiting(self.sessions, new.name)
                if waiting:
                    self.audit.record(Action.RESUME_ORDERS, new.name, reason, Result.DRY_RUN,
                                      f"would resume {waiting} waiting order(s) now")
                return
            resumed = self.resume_waiting(new.name)
        except SQLAlchemyError as error:
            log.warning("Could not resume orders waiting on %s: %s", new.name, one_line(error))
            return
        if resumed:
            self.audit.record(Action.RESUME_ORDERS, new.name, reason, Result.SUCCESS,
                              f"{resumed} waiting order(s) resumed now instead of at their next poll")


def count_waiting(sessions: sessionmaker[Session], check: str) -> int:
    """Orders that Pipeline.resume_waiting(check) would resume now."""
    statuses = [status.value for status, step in NEXT_STEP.items() if check in STEP_CHECKS[step]]
    with sessions() as session:
        return int(session.scalar(
            select(func.count()).select_from(Order).where(
                Order.status.in_(statuses),
                Order.last_error.startswith(WAITING_PREFIX, autoescape=True),
                Order.next_attempt_at > utcnow(),
            )
        ) or 0)


# -- the remediator -------------------------------------------------------------------------------


class Remediator:
    """The actions behind one listener and one step observer; does nothing when mode is off."""

    def __init__(
        self,
        audit: Audit,
        *,
        containers: ContainerHealer | None = None,
        scratch: ScratchSweeper | None = None,
        waveforms: WaveformRestorer | None = None,
        orders: OrderResumer | None = None,
        pdfs: PdfRestorer | None = None,
    ) -> None:
        self.audit = audit
        self.containers = containers
        self.scratch = scratch
        self.waveforms = waveforms
        self.orders = orders
        self.pdfs = pdfs

    @property
    def mode(self) -> RemediationMode:
        return self.audit.mode

    def on_check_result(self, new: CheckResult, previous: CheckResult | None) -> None:
        """healer.health.monitor.Listener: act on what the checks report."""
        if self.mode is RemediationMode.OFF:
            return
        if self.orders is not None and _turned_green(new, previous):
            assert previous is not None
            self.orders.on_green(new, previous)
        if new.name == "docker" and self.containers is not None:
            self.containers.on_docker_result(new)
        if new.name == "disk" and self.scratch is not None:
            self.scratch.on_disk_result(new)

    def observe_step(self, result: StepResult) -> None:
        """A Pipeline observer: runs in the worker's thread, after the step's commit."""
        if self.mode is RemediationMode.OFF or self.waveforms is None:
            return
        if result.step is not Step.RENDER or result.outcome is not Outcome.OK:
            return
        try:
            self.waveforms.after_render(result.order_id)
        except Exception:  # a remediation bug must never stop the order it follows
            log.exception("Waveform remediation failed for order %s", result.order_id)

    def on_missing_download(self, order_id: uuid.UUID, why: str) -> bool:
        """healer.http.public: a download link's PDF is gone. True when it is being rendered again."""
        if self.mode is RemediationMode.OFF or self.pdfs is None:
            return False
        try:
            return self.pdfs.on_missing(order_id, why)
        except Exception:  # a remediation bug must never turn a customer's download into a 500
            log.exception("PDF remediation failed for order %s", order_id)
            return False

    def shutdown(self) -> None:
        if self.pdfs is not None:
            self.pdfs.shutdown()
        if self.waveforms is not None:
            self.waveforms.shutdown()

    def describe(self) -> str:
        """One line for the start-up banner."""
        if self.mode is RemediationMode.OFF:
            return "remediation off (HEALER_REMEDIATION=off)"
        enabled = ((Action.RESTART_CONTAINER, self.containers), (Action.REGENERATE_WAVEFORM, self.waveforms),
                   (Action.RESUME_ORDERS, self.orders), (Action.FREE_SCRATCH, self.scratch),
                   (Action.RERENDER_PDF, self.pdfs))
        actions = [action.value for action, component in enabled if component is not None]
        line = f"remediation {self.mode.value}: {', '.join(actions) or 'no actions'}"
        if self.containers is not None:
            p = self.containers.policy
            line += (f" (containers labelled {' and '.join(self.containers.labels)}, unhealthy for "
                     f"{p.unhealthy_seconds:g}s, at most {p.max_restarts} restart(s) per {p.window_seconds:g}s)")
        return line


def _turned_green(new: CheckResult, previous: CheckResult | None) -> bool:
    return previous is not None and previous.status is Status.FAILING and new.status in (Status.OK, Status.WARNING)


# -- `healer remediations` ------------------------------------------------------------------------


@dataclass(frozen=True)
class RemediationView:
    at: str
    action: str
    target: str
    reason: str
    result: str
    mode: str
    detail: str
    worker: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "at": self.at, "action": self.action, "target": self.target, "reason": self.reason,
            "result": self.result, "mode": self.mode, "detail": self.detail, "worker": self.worker,
        }


def list_remediations(
    sessions: sessionmaker[Session], *, limit: int = 50, action: Action | None = None
) -> list[RemediationView]:
    """The newest remediations first."""
    query = select(Remediation).order_by(Remediation.at.desc(), Remediation.id.desc()).limit(limit)
    if action is not None:
        query = query.where(Remediation.action == action.value)
    with sessions() as session:
        rows = session.scalars(query).all()
    return [
        RemediationView(r.at.isoformat(timespec="seconds"), r.action, r.target, r.reason, r.result, r.mode,
                        r.detail, r.worker)
        for r in rows
    ]


def _epoch(value: str | None) -> float:
    if not value or value.startswith("0001-"):  # the engine's "never"
        return 0.0
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0
