"""Available memory, and the daemon's own resident size.

In a container the host's free memory says little: the kernel kills the container when its cgroup
reaches its limit, however much the host has left. So when this process sits in a memory cgroup
with a limit, the smaller of "host available" and "limit minus what the cgroup cannot give back"
is what counts. The daemon's RSS includes its children (the render pool), since they die with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import psutil

from checks.base import Check, CheckFailed, CheckWarning, Healthy, Runbook
from checks.disk import format_bytes

MIB = 2**20
GIB = 2**30
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class Available:
    available_bytes: int
    total_bytes: int
    source: str  # "system" or "cgroup"

    @property
    def ratio(self) -> float:
        return self.available_bytes / self.total_bytes if self.total_bytes else 1.0


@dataclass(frozen=True, kw_only=True)
class MemoryCheck(Check):
    name: ClassVar[str] = "memory"
    runbook: ClassVar[Runbook] = Runbook.RESOURCES

    # A level is reached when EITHER the available share OR the available amount is below it.
    warn_available_ratio: float = 0.10
    warn_available_bytes: int = 512 * MIB
    fail_available_ratio: float = 0.05
    fail_available_bytes: int = 128 * MIB
    rss_warn_bytes: int = 2 * GIB  # the daemon and its render workers together
    cgroup_root: Path = CGROUP_ROOT
    proc_cgroup: Path = PROC_CGROUP

    def probe(self) -> str | Healthy:
        available = available_memory(self.cgroup_root, self.proc_cgroup)
        rss, workers = daemon_rss()
        data = {
            "available_bytes": float(available.available_bytes),
            "total_bytes": float(available.total_bytes),
            "available_ratio": round(available.ratio, 6),
            "rss_bytes": float(rss),
        }
        summary = (f"{format_bytes(available.available_bytes)} available of {format_bytes(available.total_bytes)} "
                   f"({available.ratio:.1%}, {available.source})")
        own = f"daemon RSS {format_bytes(rss)}" + (f" incl. {workers} child processes" if workers else "")
        if self._below(available, self.fail_available_ratio, self.fail_available_bytes):
            raise CheckFailed(f"{summary}; {own}", _remedy_low(available), data)
        if self._below(available, self.warn_available_ratio, self.warn_available_bytes):
            raise CheckWarning(f"{summary}; {own}", _remedy_low(available), data)
        if rss > self.rss_warn_bytes:
            raise CheckWarning(f"{own}, over the limit of {format_bytes(self.rss_warn_bytes)}; {summary}",
                               _remedy_rss(), data)
        return Healthy(f"{summary}; {own}", data)

    @staticmethod
    def _below(available: Available, ratio: float, amount: int) -> bool:
        return available.ratio < ratio or available.available_bytes < amount


def available_memory(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> Available:
    system = psutil.virtual_memory()
    host = Available(int(system.available), int(system.total), "system")
    limited = cgroup_memory(cgroup_root, proc_cgroup)
    if limited is None or limited.total_bytes >= host.total_bytes:
        return host
    return Available(min(host.available_bytes, limited.available_bytes), limited.total_bytes, "cgroup")


def cgroup_memory(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> Available | None:
    """This process's cgroup memory limit and what is left under it, or None without a limit."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":
            found = _cgroup_limit(cgroup_root, path, limit="memory.max", usage="memory.current",
                                  inactive="inactive_file")
        elif "memory" in controllers.split(","):
            found = _cgroup_limit(cgroup_root / "memory", path, limit="memory.limit_in_bytes",
                                  usage="memory.usage_in_bytes", inactive="total_inactive_file")
        else:
            continue
        if found is not None:
            return found
    return None


def _cgroup_limit(root: Path, path: str, *, limit: str, usage: str, inactive: str) -> Available | None:
    """A v1 or v2 cgroup's memory: `limit` and `usage` name its files, `inactive` a memory.stat key."""
    directory = _cgroup_dir(root, path, limit)
    if directory is None:
        return None
    return _under_limit(_read_int(directory / limit), _read_int(directory / usage),
                        _stat(directory / "memory.stat", inactive))


def _cgroup_dir(root: Path, path: str, probe_file: str) -> Path | None:
    # Inside a container with a cgroup namespace the process's own cgroup is mounted as the root.
    for directory in (root / path.lstrip("/"), root):
        if (directory / probe_file).is_file():
            return directory
    return None


def _under_limit(limit: int | None, usage: int | None, inactive: int | None) -> Available | None:
    # v1 says "no limit" with a huge page-rounded number, v2 with "max" (read as None).
    if limit is None or usage is None or limit >= 2**60:
        return None
    # Inactive page cache is given back before the OOM killer runs; `docker stats` counts the same.
    used = max(0, usage - (inactive or 0))
    return Available(max(0, limit - used), limit, "cgroup")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _stat(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def daemon_rss() -> tuple[int, int]:
    """Resident bytes of this process and its children, and how many children there are."""
    me = psutil.Process()
    total = me.memory_info().rss
    children = 0
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
            children += 1
        except psutil.Error:  # exited between listing and reading: nothing to count
            continue
    return total, children


def _remedy_low(available: Available) -> str:
    where = "the container's memory limit" if available.source == "cgroup" else "the machine"
    return (
        f"Runbook 6: memory is short on {where}. Look for the biggest processes (`ps aux --sort=-rss`"
        f" or `docker stats`); lower HEALER_WORKERS to run fewer renders at once, or raise the "
        f"memory limit. Renders wait while this check fails and resume when it is green."
    )


def _remedy_rss() -> str:
    return (
        "Runbook 6: the daemon holds more memory than expected, possibly a leak. Lower HEALER_WORKERS"
        " (each render worker holds a decoded photo); if it keeps growing, restart the daemon: work"
        " in progress resumes from the database."
    )
