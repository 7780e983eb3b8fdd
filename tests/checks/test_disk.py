"""The disk check on a real, small tmpfs: filled up, it fails naming the path; emptied, it is ok."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from checks.base import Runbook, Status, run_check
from checks.disk import DiskCheck, Thresholds, Usage

KIB = 1024
# Sized for a 2 MiB tmpfs: under 10% or 256 KiB fails, under 50% or 512 KiB warns.
WARN = Thresholds(free_ratio=0.50, free_bytes=512 * KIB, free_inodes_ratio=0.50)
FAIL = Thresholds(free_ratio=0.10, free_bytes=256 * KIB, free_inodes_ratio=0.10)


def _mount_tmpfs(directory: Path, options: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
                          check=False, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs on {directory} (the disk tests need root and "
                    f"mount(8)): {done.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Mounts small tmpfs file systems under tmp_path; all unmounted at the end."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        directory = tmp_path / name
        _mount_tmpfs(directory, options)
        mounted.append(directory)
        return directory

    try:
        yield mount
    finally:
        for directory in reversed(mounted):
            subprocess.run(["umount", "-l", str(directory)], check=True)


@pytest.fixture
def scratch(tmpfs: Callable[[str, str], Path]) -> Path:
    """A 2 MiB tmpfs with 64 inodes, standing in for the daemon's scratch directory."""
    return tmpfs("scratch", "size=2m,nr_inodes=64")


@pytest.fixture
def data_dir(tmpfs: Callable[[str, str], Path]) -> Path:
    """A roomier one for the data directory, so only what a test fills is low."""
    return tmpfs("data", "size=8m")


def _check(scratch: Path, data_dir: Path) -> DiskCheck:
    return DiskCheck(paths=(("data", data_dir), ("scratch", scratch)), warn_below=WARN, fail_below=FAIL)


def _fill(path: Path, leave_bytes: int) -> None:
    st = os.statvfs(path)
    size = st.f_bavail * st.f_frsize - leave_bytes
    with (path / "ballast.bin").open("wb") as out:
        out.write(b"\0" * max(0, size))


def test_full_scratch_fails_naming_the_path_and_recovers_when_emptied(scratch: Path, data_dir: Path) -> None:
    check = _check(scratch, data_dir)
    assert run_check(check).status is Status.OK

    with pytest.raises(OSError):  # really full: the next write fails, as a render's would
        _fill(scratch, leave_bytes=-4096)
    full = run_check(check)
    assert full.status is Status.FAILING
    assert full.detail.startswith(f"scratch {scratch}: 0 B free of 2.0 MiB")
    assert full.runbook is Runbook.RESOURCES
    assert "Runbook 6" in full.remedy and str(scratch) in full.remedy
    assert full.data["scratch.free_bytes"] == 0
    assert full.data["scratch.total_bytes"] == 2 * 1024 * KIB
    assert full.data["data.free_bytes"] > 0

    (scratch / "ballast.bin").unlink()
    recovered = run_check(check)
    assert recovered.status is Status.OK
    assert recovered.data["scratch.free_bytes"] == 2 * 1024 * KIB


def test_space_below_the_warning_level_warns(scratch: Path, data_dir: Path) -> None:
    _fill(scratch, leave_bytes=400 * KIB)  # 20% free: under the warning's 50%, over the failure's 10% and 256 KiB

    result = run_check(_check(scratch, data_dir))

    assert result.status is Status.WARNING, result.detail
    assert result.detail == f"scratch {scratch}: 400.0 KiB free of 2.0 MiB (19.5%)"


def test_the_detail_names_the_worst_path_and_the_others_that_are_low(scratch: Path, data_dir: Path) -> None:
    _fill(data_dir, leave_bytes=1024 * KIB)  # 12.5% free: a warning
    _fill(scratch, leave_bytes=0)  # failing: the worst

    result = run_check(_check(scratch, data_dir))

    assert result.status is Status.FAILING
    assert result.detail.startswith(f"scratch {scratch}: 0 B free")
    assert result.detail.endswith("(also low: data)")


def test_exhausted_inodes_fail_although_space_is_free(scratch: Path, data_dir: Path) -> None:
    check = _check(scratch, data_dir)
    created = 0
    with pytest.raises(OSError):  # ENOSPC from the inode table, with bytes to spare
        while True:
            (scratch / f"f{created}").touch()
            created += 1

    result = run_check(check)
    assert result.status is Status.FAILING
    assert "inodes free" in result.detail and str(scratch) in result.detail
    assert result.data["scratch.free_inodes"] == 0
    assert result.data["scratch.free_bytes"] > 1024 * KIB

    for n in range(created):
        (scratch / f"f{n}").unlink()
    assert run_check(check).status is Status.OK


def test_a_path_not_created_yet_is_measured_on_the_file_system_it_will_be_created_on(scratch: Path) -> None:
    later = scratch / "renders" / "today"
    _fill(scratch, leave_bytes=0)

    result = run_check(DiskCheck(paths=(("renders", later),), warn_below=WARN, fail_below=FAIL))

    assert result.status is Status.FAILING
    assert result.detail.startswith(f"renders {later}: 0 B free")
    assert str(scratch) in result.remedy  # where `df` should be pointed


# -- the default levels on volumes smaller than their byte floors -------------------------------------

MIB = 1024 * KIB


def test_an_empty_volume_smaller_than_the_byte_floors_is_ok_with_the_default_levels(
    tmpfs: Callable[[str, str], Path],
) -> None:
    small = tmpfs("small", "size=1m")  # far below the 1 GiB and 256 MiB floors

    result = run_check(DiskCheck(paths=(("data", small), ("scratch", small / "scratch"))))

    assert result.status is Status.OK, result.detail
    assert result.detail.startswith("2 paths ok; least free: ")


@pytest.mark.parametrize(
    ("leave", "status"),
    [(600 * KIB, Status.OK), (400 * KIB, Status.WARNING), (200 * KIB, Status.FAILING)],
)
def test_a_small_volume_is_judged_by_share_warning_under_half_and_failing_under_a_quarter_free(
    tmpfs: Callable[[str, str], Path], leave: int, status: Status
) -> None:
    small = tmpfs("small", "size=1m")
    _fill(small, leave_bytes=leave)

    result = run_check(DiskCheck(paths=(("data", small),)))

    assert result.status is status, result.detail


def usage(total: int, free: int) -> Usage:
    return Usage("data", Path("/data"), Path("/data"), free, total, 1000, 1000)


def test_the_byte_floors_still_hold_in_full_on_volumes_large_enough_for_them() -> None:
    warn, fail = DiskCheck.warn_below, DiskCheck.fail_below

    # 900 MiB free of 5 GiB is 17.6%: above the 10% share, but under the 1 GiB floor.
    assert usage(5 * 1024 * MIB, 900 * MIB).below(warn) and not usage(5 * 1024 * MIB, 900 * MIB).below(fail)
    # 200 MiB free of 2 GiB is 9.8%: warns by share; under the full 256 MiB floor, so it fails too.
    assert usage(2 * 1024 * MIB, 200 * MIB).below(fail)
    # The floors shrink with the volume, never past the level below them: the failure floor stays under.
    for total in (1 * MIB, 300 * MIB, 1024 * MIB, 1536 * MIB, 2048 * MIB, 100 * 1024 * MIB):
        assert fail.floor_bytes(total) < warn.floor_bytes(total) <= total // 2
    assert (warn.floor_bytes(2048 * MIB), fail.floor_bytes(1024 * MIB)) == (1024 * MIB, 256 * MIB)
