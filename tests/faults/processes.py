"""Server processes that the fault run starts, SIGKILLs and starts again: `healer run` daemons (and, in
bench/, the shop's synchronous server).

A `Slot` is one place a server runs, like one container under a restart policy: each start is a
new `Incarnation` (its own pid, and its own port, so a killed process's lingering children can never
answer for the new one). Every start and kill is kept, so a run can later say which process sent
an email and whether it was killed before it could record it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.eventually import TimedOut, Unmet, eventually
from tests.fakes.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
ORPHAN_GRACE_SECONDS = 3.0
HEALER_RUN = (sys.executable, "-m", "healer", "run")  # as the `healer` command runs


@dataclass
class Incarnation:
    slot: str
    pid: int
    port: int
    started_at: float  # time.time()
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    ended_at: float | None = None
    killed: bool = False  # ended by SIGKILL (else by SIGTERM at the end of the run)
    orphans_after_kill: int = 0  # processes of its group still alive just after the kill
    ops_port: int | None = None  # healer's operator listener; None: the server has one listener

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops_url(self) -> str:
        """Where probes, health and metrics are: healer's operator listener, else the only one."""
        return f"http://127.0.0.1:{self.ops_port}" if self.ops_port else self.base_url

    def alive_at(self, moment: float) -> bool:
        return self.started_at <= moment and (self.ended_at is None or moment < self.ended_at)


@dataclass(frozen=True)
class Kill:
    slot: str
    pid: int
    at: float
    reason: str  # "random" | "after-202"


class Slot:
    """One server under a restart policy; thread-safe."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.command = tuple(command)
        self.env = env
        self.log_dir = log_dir
        self.incarnations: list[Incarnation] = []
        self.kills: list[Kill] = []
        self._lock = threading.RLock()
        self._stopped = False  # after stop(), pending restarts do nothing
        self._reapers: list[threading.Thread] = []  # counting each killed incarnation's orphans

    @property
    def current(self) -> Incarnation | None:
        with self._lock:
            last = self.incarnations[-1] if self.incarnations else None
            return last if last is not None and last.ended_at is None else None

    def start(self) -> Incarnation:
        with self._lock:
            port, ops_port = free_port(), free_port()
            log_path = self.log_dir / f"{self.name}-{len(self.incarnations) + 1}.log"
            env = dict(self.env, HEALER_HTTP_PORT=str(port), HEALER_OPS_PORT=str(ops_port))
            with log_path.open("wb") as log:
                # Its own session, so the whole process group (render workers too) can be reaped.
                process = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           cwd=REPO_ROOT, start_new_session=True)
            incarnation = Incarnation(self.name, process.pid, port, time.time(), log_path, process,
                                      ops_port=ops_port if self.command[-1] == "run" else None)
            self.incarnations.append(incarnation)
            return incarnation

    def kill(self, reason: str) -> Kill | None:
        """SIGKILL the running process (only it, as the OOM killer would), then reap its group."""
        with self._lock:
            incarnation = self.current
            if incarnation is None:
                return None
            os.kill(incarnation.pid, signal.SIGKILL)
            incarnation.process.wait()
            incarnation.ended_at = time.time()
            incarnation.killed = True
            kill = Kill(self.name, incarnation.pid, incarnation.ended_at, reason)
            self.kills.append(kill)
        # Its render processes die with it (PR_SET_PDEATHSIG) and the resource tracker on EOF; what
        # is left of the group after a grace period is an orphan (counted, then killed).
        def reap() -> None:
            incarnation.orphans_after_kill = _reap_group(incarnation.pid, grace=ORPHAN_GRACE_SECONDS)

        reaper = threading.Thread(target=reap, name=f"reap-{incarnation.pid}", daemon=True)
        self._reapers.append(reaper)
        reaper.start()
        return kill

    def restart_later(self, delay: float) -> None:
        """Start again after `delay` seconds, as a restart policy would, without blocking."""
        def restart() -> None:
            time.sleep(delay)  # deliberate: the restart policy's delay
            with self._lock:
                if self.current is None and not self._stopped:
                    self.start()

        threading.Thread(target=restart, name=f"restart-{self.name}", daemon=True).start()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, as an operator's `docker stop`; returns the exit code (None: had to SIGKILL).

        A daemon restarted moments ago is given the time to answer first: SIGTERM while Python is
        still importing takes the signal's default action (exit -15) before any handler exists, and
        the shutdown judged here is a started daemon's."""
        current = self.current
        if current is not None and current.ops_url is not None:
            wait_until_answering(current)
        code = self._terminate(timeout)
        for reaper in self._reapers:  # every kill's orphans counted before the run is judged
            reaper.join(timeout=ORPHAN_GRACE_SECONDS + 10)
        return code

    def _terminate(self, timeout: float) -> int | None:
        with self._lock:
            self._stopped = True
            incarnation = self.current
            if incarnation is None:
                return None
            incarnation.process.send_signal(signal.SIGTERM)
            try:
                code: int | None = incarnation.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _abort_with_stacks(incarnation.process)
                code = None
            incarnation.ended_at = time.time()
        _reap_group(incarnation.pid)
        return code

    def incarnation_at(self, moment: float) -> Incarnation | None:
        with self._lock:
            return next((i for i in self.incarnations if i.alive_at(moment)), None)

    def by_pid(self, pid: int) -> Incarnation | None:
        with self._lock:
            return next((i for i in self.incarnations if i.pid == pid), None)


def _abort_with_stacks(process: subprocess.Popen[bytes]) -> None:
    """SIGABRT: with PYTHONFAULTHANDLER set, Python writes every thread's stack to its log first."""
    process.send_signal(signal.SIGABRT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _reap_group(pgid: int, grace: float = 0.0) -> int:
    """Kill what is left of a process group after `grace` seconds; returns how many processes
    were still in it then."""
    def gone() -> bool | Unmet:
        members = _group_members(pgid)
        return not members or Unmet(members)

    survivors: list[int] = []
    try:
        eventually(gone, timeout=grace, interval=0.1, what=f"process group {pgid} to end")
    except TimedOut as timed_out:
        survivors = timed_out.last.seen
    if survivors:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(survivors)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) == pgid and not _zombie(int(entry)):
                members.append(int(entry))
        except (ProcessLookupError, PermissionError):
            continue
    return members


def _zombie(pid: int) -> bool:
    """Dead, waiting for its parent to collect it: not a process that holds anything."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> tuple[int, bytes]:
    """One request; (status, body). Connection failures raise OSError."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until_answering(incarnation: Incarnation, timeout: float = 60.0) -> bool:
    """Whether the daemon answers /livez within `timeout`; False as soon as it exits."""
    def state() -> str | None:
        if incarnation.process.poll() is not None:
            return "exited"
        try:
            return "answering" if http("GET", incarnation.ops_url + "/livez", timeout=2)[0] == 200 else None
        except OSError:
            return None

    try:
        return eventually(state, timeout=timeout, interval=0.2, what=f"{incarnation.pid} to answer") == "answering"
    except TimedOut:
        return False
