"""CPU time by process over a stretch of a benchmark, so that a run bound by CPU says whose.

On a machine whose S3 (moto), database and mail server share the cores with healer, a slow
end-to-end run may be healer's own work, the render's, or its peers'. `CpuMeter` reads every
process's CPU time (user + system) when the stretch starts and when it ends, and sums the
difference by group:

- `healer`: this process (the pipeline and worker under test; the SendGrid and Stripe fakes,
  whose share is a few kilobytes of HTTP per order; the bench's own timing);
- `render processes`: this process's other descendants (the render pool), including any that
  ended and were reaped during the stretch;
- `moto (S3)`: the S3 server, a child process whose command line names `moto.server`;
- `PostgreSQL`: every process named postgres on the machine (a quiet machine: the benchmark's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from time import perf_counter

import psutil

HEALER, RENDER, S3, POSTGRES = "healer", "render processes", "moto (S3)", "PostgreSQL"
GROUPS = (HEALER, RENDER, S3, POSTGRES)


@dataclass(frozen=True)
class CpuUse:
    wall_s: float
    seconds: dict[str, float]  # group -> CPU seconds over the stretch

    @property
    def cores_busy(self) -> float:
        """The cores kept busy on average over the stretch, every group together."""
        return sum(self.seconds.values()) / self.wall_s if self.wall_s > 0 else 0.0

    def per_item_ms(self, items: int) -> dict[str, float]:
        return {group: 1000 * seconds / items for group, seconds in self.seconds.items()}


class CpuMeter:
    """`start()`, the work, then `stop()`: the CPU each group used in between."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._started: tuple[float, dict[int, tuple[str, float]], float] | None = None

    def start(self) -> None:
        self._started = (perf_counter(), self._processes(), _reaped_children())

    def stop(self) -> CpuUse:
        if self._started is None:
            raise RuntimeError("CpuMeter.stop() before start()")
        began, before, reaped_before = self._started
        after = self._processes()
        seconds = dict.fromkeys(GROUPS, 0.0)
        for pid, (group, cpu) in after.items():
            seconds[group] += cpu - (before[pid][1] if pid in before else 0.0)
        # Descendants that ended meanwhile and were reaped: their whole life is in the reaped
        # total, of which the part before the stretch was read at the start.
        ended = [cpu for pid, (group, cpu) in before.items() if pid not in after and group in (RENDER, S3)]
        seconds[RENDER] += max(0.0, _reaped_children() - reaped_before - sum(ended))
        return CpuUse(perf_counter() - began, seconds)

    def _processes(self) -> dict[int, tuple[str, float]]:
        found: dict[int, tuple[str, float]] = {}
        descendants = {child.pid for child in self._me.children(recursive=True)}
        for process in psutil.process_iter(["name", "cmdline"]):
            try:
                group = self._group(process, descendants)
                if group is not None:
                    times = process.cpu_times()
                    found[process.pid] = (group, times.user + times.system)
            except psutil.Error:
                continue  # ended between the listing and the read: counted if reaped
        return found

    def _group(self, process: psutil.Process, descendants: set[int]) -> str | None:
        if process.pid == self._me.pid:
            return HEALER
        if process.pid in descendants:
            return S3 if "moto.server" in " ".join(process.info["cmdline"] or ()) else RENDER
        if (process.info["name"] or "").startswith("postgres"):
            return POSTGRES
        return None


def _reaped_children() -> float:
    times = os.times()
    return times.children_user + times.children_system
