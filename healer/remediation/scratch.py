"""free_scratch: when the disk check warns or fails and the scratch file system is below the
warning level, healer deletes its own old regular files under the scratch directory (never a
symlink, never another file system), oldest first, until it is above that level again."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from checks.base import CheckResult, Status
from checks.disk import Usage, format_bytes, measure
from healer.remediation.audit import Action, Audit, Result
from healer.remediation.policy import RemediationPolicy

log = logging.getLogger(__name__)


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
            self.sweep(f"disk check {result.status}")
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
    oldest = datetime.fromtimestamp(files[0].mtime, UTC).isoformat(timespec="seconds")
    names = ", ".join(f.relative for f in files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    verb, then = ("would delete", "then") if dry_run else ("deleted", "now")
    return (f"{verb} {len(files)} file(s) of {format_bytes(total)}, oldest from {oldest} ({names}); "
            f"{then} {format_bytes(usage.free_bytes)} free of {format_bytes(usage.total_bytes)} "
            f"({usage.free_ratio:.0%})")
