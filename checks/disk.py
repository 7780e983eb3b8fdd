"""Free space and free inodes of the file systems the daemon writes to and reads from.

A full scratch directory fails renders, a full data directory fails the SQLite database and the
local store, and a full asset volume cannot be updated. Each path is measured with `statvfs`; the
detail names the worst one, and every measurement goes to `data` as `{label}.{measure}` for metrics.

A level trips when EITHER its share OR its absolute amount is below the threshold: a share alone
misses a small volume running dry, an amount alone misses a large one about to. The amount is capped
at a share of the volume's size, though: 1 GiB free can never be had on a 1 GiB volume (nor on a
small container's or a test's tmpfs), and a level that trips on an empty disk gates renders and
sets off remediation for ever. Volumes that small are judged by share.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from checks.base import Check, CheckFailed, CheckWarning, Healthy, Runbook, Status

MIB = 2**20
GIB = 2**30


@dataclass(frozen=True)
class Thresholds:
    """Below `free_ratio` (0..1) or `free_bytes`, the level is reached; inodes by ratio only.

    `free_bytes` counts only up to `max_bytes_share` (0..1) of the volume's size: on a volume
    smaller than `free_bytes / max_bytes_share` the floor shrinks with it, continuously, so a
    volume the size of the floor is not "low" while empty.
    """

    free_ratio: float
    free_bytes: int
    free_inodes_ratio: float
    max_bytes_share: float = 0.5

    def floor_bytes(self, total_bytes: int) -> int:
        """The free-bytes floor for a volume of `total_bytes`."""
        return min(self.free_bytes, int(total_bytes * self.max_bytes_share))


@dataclass(frozen=True)
class Usage:
    label: str
    path: Path  # as configured
    measured: Path  # the nearest existing directory, where the path will be created
    free_bytes: int  # available to an unprivileged writer, like df's "Avail"
    total_bytes: int
    free_inodes: int
    total_inodes: int  # 0 on file systems without a fixed inode table (btrfs, some FUSE)

    @property
    def free_ratio(self) -> float:
        return self.free_bytes / self.total_bytes if self.total_bytes else 1.0

    @property
    def free_inodes_ratio(self) -> float:
        return self.free_inodes / self.total_inodes if self.total_inodes else 1.0

    def below(self, level: Thresholds) -> list[str]:
        """What is short at this level, in words; [] when nothing is."""
        short = []
        if self.free_ratio < level.free_ratio or self.free_bytes < level.floor_bytes(self.total_bytes):
            short.append(f"{format_bytes(self.free_bytes)} free of {format_bytes(self.total_bytes)} "
                         f"({self.free_ratio:.1%})")
        if self.free_inodes_ratio < level.free_inodes_ratio:
            short.append(f"{self.free_inodes} inodes free of {self.total_inodes} "
                         f"({self.free_inodes_ratio:.1%})")
        return short

    def data(self) -> dict[str, float]:
        return {
            f"{self.label}.free_bytes": float(self.free_bytes),
            f"{self.label}.total_bytes": float(self.total_bytes),
            f"{self.label}.free_ratio": round(self.free_ratio, 6),
            f"{self.label}.free_inodes": float(self.free_inodes),
            f"{self.label}.free_inodes_ratio": round(self.free_inodes_ratio, 6),
        }


@dataclass(frozen=True, kw_only=True)
class DiskCheck(Check):
    name: ClassVar[str] = "disk"
    runbook: ClassVar[Runbook] = Runbook.RESOURCES

    # (label, path) pairs, e.g. (("data", data_dir), ("scratch", scratch_dir), ("assets", assets_dir)).
    paths: tuple[tuple[str, Path], ...]
    # The byte floors hold in full from 2 GiB (warning) and 1 GiB (failure) volumes up; below,
    # they are half and a quarter of the volume, so the failure level stays under the warning one.
    warn_below: Thresholds = Thresholds(free_ratio=0.10, free_bytes=1 * GIB, free_inodes_ratio=0.10,
                                        max_bytes_share=0.5)
    fail_below: Thresholds = Thresholds(free_ratio=0.05, free_bytes=256 * MIB, free_inodes_ratio=0.05,
                                        max_bytes_share=0.25)

    def probe(self) -> str | Healthy:
        usages = [measure(label, Path(path)) for label, path in self.paths]
        data: dict[str, float] = {}
        for usage in usages:
            data.update(usage.data())
        worst = _worst(usages, self.fail_below, Status.FAILING) or _worst(usages, self.warn_below, Status.WARNING)
        if worst is None:
            tightest = min(usages, key=lambda u: u.free_ratio, default=None)
            if tightest is None:
                return Healthy("no paths configured", data)
            return Healthy(f"{len(usages)} paths ok; least free: {_describe(tightest)}", data)
        status, usage, short = worst
        detail = f"{usage.label} {usage.path}: {'; '.join(short)}"
        others = [u.label for u in usages if u is not usage and u.below(self.warn_below)]
        if others:
            detail += f" (also low: {', '.join(others)})"
        remedy = _remedy(usage)
        if status is Status.FAILING:
            raise CheckFailed(detail, remedy, data)
        raise CheckWarning(detail, remedy, data)


def measure(label: str, path: Path) -> Usage:
    measured = _existing(path)
    st = os.statvfs(measured)
    return Usage(
        label=label,
        path=path,
        measured=measured,
        free_bytes=st.f_bavail * st.f_frsize,
        total_bytes=st.f_blocks * st.f_frsize,
        free_inodes=st.f_favail,
        total_inodes=st.f_files,
    )


def _existing(path: Path) -> Path:
    # The scratch directory is made on first use: until then, its parent's file system is the one
    # it will fill.
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _worst(usages: Iterable[Usage], level: Thresholds, status: Status) -> tuple[Status, Usage, list[str]] | None:
    short = [(u, u.below(level)) for u in usages]
    short = [(u, s) for u, s in short if s]
    if not short:
        return None
    usage, reasons = min(short, key=lambda item: (item[0].free_ratio, item[0].free_inodes_ratio))
    return status, usage, reasons


def _describe(usage: Usage) -> str:
    return f"{usage.label} {format_bytes(usage.free_bytes)} free ({usage.free_ratio:.0%})"


def _remedy(usage: Usage) -> str:
    return (
        f"Runbook 6: free space on the file system holding {usage.measured} (`df -h {usage.measured}`, "
        f"`df -i` for inodes). The daemon's own scratch files (HEALER_DATA_DIR/scratch) are safe to "
        f"delete; otherwise remove old logs or images, or grow the volume. Renders wait while this "
        f"check fails and resume when it is green."
    )


def format_bytes(n: float) -> str:
    """1.5 GiB, 320.0 KiB, 12 B: binary units, as `df -h` and `free -h` print them."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
