"""The memory check on this machine's real memory: thresholds set above what it has trip it."""

from __future__ import annotations

from pathlib import Path

import psutil

from checks.base import Runbook, Status, run_check
from checks.memory import MemoryCheck, available_memory, cgroup_memory

MIB = 2**20


def _more_than_the_machine_has() -> int:
    return int(psutil.virtual_memory().total) * 2


def test_available_memory_below_the_failing_level_fails_and_names_the_fix() -> None:
    result = run_check(MemoryCheck(fail_available_bytes=_more_than_the_machine_has()))

    assert result.status is Status.FAILING
    assert result.runbook is Runbook.RESOURCES
    assert "available of" in result.detail and "daemon RSS" in result.detail
    assert "HEALER_WORKERS" in result.remedy and result.remedy.startswith("Runbook 6")
    assert 0 < result.data["available_bytes"] <= result.data["total_bytes"]


def test_available_memory_below_the_warning_level_warns() -> None:
    result = run_check(MemoryCheck(warn_available_ratio=1.01))

    assert result.status is Status.WARNING
    assert result.data["available_ratio"] <= 1.0


def test_daemon_rss_over_its_limit_warns_with_the_size() -> None:
    rss = psutil.Process().memory_info().rss

    result = run_check(MemoryCheck(rss_warn_bytes=rss // 2))

    assert result.status is Status.WARNING
    assert result.detail.startswith("daemon RSS ")
    assert f"over the limit of {rss // 2 / MIB:.1f} MiB" in result.detail
    assert result.data["rss_bytes"] >= rss * 0.9


def test_default_thresholds_are_ok_on_a_machine_with_memory_to_spare() -> None:
    available = available_memory()
    assert available.available_bytes > 512 * MIB, "this machine is short of memory: the test cannot tell"

    result = run_check(MemoryCheck())

    assert result.status is Status.OK, result.detail
    assert result.data["rss_bytes"] > 0


def _cgroup_v2_tree(root: Path, limit: str, current: int, inactive_file: int) -> Path:
    group = root / "sys" / "fs" / "cgroup" / "system.slice" / "healer.service"
    group.mkdir(parents=True)
    (group / "memory.max").write_text(f"{limit}\n")
    (group / "memory.current").write_text(f"{current}\n")
    (group / "memory.stat").write_text(f"anon 1000\ninactive_file {inactive_file}\nactive_file 5\n")
    proc = root / "proc-self-cgroup"
    proc.write_text("0::/system.slice/healer.service\n")
    return proc


def test_a_container_memory_limit_counts_instead_of_the_hosts_memory(tmp_path: Path) -> None:
    # A cgroup v2 tree as the kernel lays it out: 256 MiB limit, 250 MiB charged, 10 MiB of it
    # reclaimable page cache.
    proc = _cgroup_v2_tree(tmp_path, str(256 * MIB), 250 * MIB, 10 * MIB)
    root = tmp_path / "sys" / "fs" / "cgroup"

    limited = cgroup_memory(root, proc)
    assert limited is not None
    assert (limited.available_bytes, limited.total_bytes) == (16 * MIB, 256 * MIB)

    result = run_check(MemoryCheck(cgroup_root=root, proc_cgroup=proc))
    assert result.status is Status.FAILING  # 6.25% of the limit, 16 MiB: under 128 MiB
    assert "16.0 MiB available of 256.0 MiB" in result.detail and "cgroup" in result.detail
    assert "container's memory limit" in result.remedy


def test_a_cgroup_without_a_limit_leaves_the_hosts_memory_in_charge(tmp_path: Path) -> None:
    proc = _cgroup_v2_tree(tmp_path, "max", 250 * MIB, 0)

    assert cgroup_memory(tmp_path / "sys" / "fs" / "cgroup", proc) is None
    assert available_memory(tmp_path / "sys" / "fs" / "cgroup", proc).source == "system"


def test_this_machines_own_cgroup_is_read_without_error() -> None:
    # Whatever this sandbox has (v1, v2, a limit or none), reading it must not raise.
    limited = cgroup_memory()
    assert limited is None or 0 <= limited.available_bytes <= limited.total_bytes
