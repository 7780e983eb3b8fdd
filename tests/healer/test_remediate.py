"""Self-healing actions against real peers: a real Docker engine (Debian's dockerd on a private
socket, a busybox image), PostgreSQL, moto S3, the SendGrid and Stripe servers, a real tmpfs for
the scratch directory. Every action must leave a row and a count, and dry-run must change nothing."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from PIL import Image
from rich.console import Console
from sqlalchemy import Engine, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from checks.base import CheckResult, Runbook, Status
from checks.disk import DiskCheck, Thresholds, measure
from checks.docker import COMPOSE_PROJECT_LABEL, DockerCheck
from fulfilment.models import Base, OrderStatus, Outcome, Step
from fulfilment.pipeline import Pipeline
from fulfilment.recording import StepResult
from fulfilment.steps import permanent_key
from fulfilment.waveform import waveform_png
from healer import db
from healer.cli.remediations import remediations_command
from healer.cli.services import NoDatabase, database
from healer.config import RemediationMode, Settings
from healer.health.metrics import Metrics
from healer.health.monitor import HealthMonitor
from healer.jobs.leadership import Leadership, leadership_for
from healer.remediation.audit import Action, Audit, Remediation, Result
from healer.remediation.containers import ContainerHealer
from healer.remediation.policy import RemediationPolicy
from healer.remediation.remediator import Remediator
from healer.remediation.resume import OrderResumer
from healer.remediation.scratch import ScratchSweeper
from healer.remediation.waveforms import WaveformRestorer
from healer.wiring import Services, build_remediator
from tests.eventually import eventually
from tests.fakes.docker_fixtures import HEALTH_FILE, Containers, DockerEngine
from tests.fakes.shop_fixtures import Shop

OWNER = "test-worker"
AUTOHEAL = {"healer.autoheal": "true"}
ON, DRY_RUN, OFF = RemediationMode.ON, RemediationMode.DRY_RUN, RemediationMode.OFF


def rows(sessions: sessionmaker[Session], action: Action | None = None) -> list[Remediation]:
    query = select(Remediation).order_by(Remediation.id)
    if action is not None:
        query = query.where(Remediation.action == action.value)
    with sessions() as session:
        return list(session.scalars(query))


def counted(metrics: Metrics, action: Action, result: Result) -> float:
    value = metrics.registry.get_sample_value(
        "healer_remediations_total", {"action": action.value, "result": result.value})
    assert value is not None, "every action and result is exported from start-up"
    return value



# -- restart_container, against the real engine -------------------------------------------------


class DockerRig:
    """The daemon's wiring in small: the docker check in a health monitor, the remediator listening."""

    def __init__(self, engine: DockerEngine, containers: Containers, sessions: sessionmaker[Session],
                 mode: RemediationMode = ON, *, worker: str = "test", leadership: Leadership | None = None,
                 **policy: object) -> None:
        """`leadership`: this rig is one replica of several (None: the only one)."""
        self.engine = engine
        self.containers = containers
        self.sessions = sessions
        self.metrics = Metrics()
        self.audit = Audit(sessions, self.metrics, mode, worker=worker)
        options: dict[str, object] = {"docker": True, "unhealthy_seconds": 0.5, "max_restarts": 2, "window_seconds": 600,
                                          "stop_timeout_seconds": 1}
        options.update(policy)
        self.healer = ContainerHealer(engine.base_url, ("healer.autoheal=true", containers.label),
                                      RemediationPolicy(**options), self.audit)  # type: ignore[arg-type]
        self.monitor = HealthMonitor([DockerCheck(base_url=engine.base_url, label=containers.label)])
        lead = leadership.lead if leadership is not None else None
        self.monitor.add_listener(Remediator(self.audit, containers=self.healer, lead=lead).on_check_result)
        self.started = time.time()

    def probe(self) -> CheckResult:
        return self.monitor.run("docker")

    def probe_for(self, seconds: float) -> None:
        """Probe for `seconds`, as the scheduler would: deliberately lets time pass, to show that
        nothing happens in it."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.probe()
            time.sleep(0.2)  # deliberate: the probes' pace

    def restarts(self, container_id: str) -> int:
        """`restart` events of the container since the rig was made, from the engine itself."""
        events = self.engine.client.events(since=int(self.started) - 1, until=int(time.time()) + 1, decode=True,
                                           filters={"container": container_id, "event": "restart"})
        return sum(1 for _ in events)


def test_a_labelled_unhealthy_container_is_restarted_and_becomes_healthy(
    docker_engine: DockerEngine, docker_containers: Containers, sessions: sessionmaker[Session]
) -> None:
    rig = DockerRig(docker_engine, docker_containers, sessions)
    web = docker_containers.run("web", labels=AUTOHEAL)
    docker_containers.wait_for_health(web, "healthy")
    docker_containers.make_unhealthy(web)
    docker_containers.wait_for_health(web, "unhealthy")

    rig.probe()
    assert rows(sessions) == [], "unhealthy for less than HEALER_AUTOHEAL_UNHEALTHY_SECONDS: not yet"
    eventually(lambda: rig.restarts(web.id) == 1, timeout=30, what="the restart", step=rig.probe, interval=0.2)
    docker_containers.wait_for_health(web, "healthy")

    [row] = rows(sessions)
    assert (row.action, row.target, row.result, row.mode, row.worker) == (
        "restart_container", web.name, "success", "on", "test")
    assert row.reason.startswith("unhealthy for ") and "last exit 1" in row.reason
    assert "restart 1 of at most 2 per 600s" in row.detail
    assert counted(rig.metrics, Action.RESTART_CONTAINER, Result.SUCCESS) == 1
    eventually(lambda: rig.probe().status is Status.OK, timeout=20, what="the docker check to be green again",
               interval=0.2)


def test_of_several_replicas_only_the_one_leading_containers_restarts_them(
    docker_engine: DockerEngine, docker_containers: Containers, sessions: sessionmaker[Session], pg_url: str,
) -> None:
    engines = [db.make_engine(pg_url, pool_size=2) for _ in range(2)]
    leaderships = [leadership_for(engine, name) for engine, name in zip(engines, ("a", "b"), strict=True)]
    try:
        rigs = [DockerRig(docker_engine, docker_containers, sessions, worker=f"replica-{name}", leadership=leadership)
                for name, leadership in zip("ab", leaderships, strict=True)]
        web = docker_containers.run("web", labels=AUTOHEAL)
        docker_containers.wait_for_health(web, "healthy")
        rigs[1].probe()  # b's docker result comes first: b leads container restarts
        rigs[0].probe()
        docker_containers.make_unhealthy(web)
        docker_containers.wait_for_health(web, "unhealthy")

        eventually(lambda: rigs[0].restarts(web.id) == 1, timeout=30, what="the restart", interval=0.2,
                   step=lambda: [rig.probe() for rig in rigs])
        docker_containers.wait_for_health(web, "healthy")

        assert [(r.worker, r.result) for r in rows(sessions)] == [("replica-b", "success")]
        assert (leaderships[0].roles(), leaderships[1].roles()) == ({"containers": False}, {"containers": True})
    finally:
        for leadership in leaderships:
            leadership.release()
        for engine in engines:
            engine.dispose()


def test_unlabelled_containers_and_other_projects_are_left_alone(
    docker_engine: DockerEngine, docker_containers: Containers, busybox_image: str,
    sessions: sessionmaker[Session],
) -> None:
    rig = DockerRig(docker_engine, docker_containers, sessions)
    unlabelled = docker_containers.run("db", healthy=False)
    other_stack = Containers(docker_engine, busybox_image)  # labelled, but not our compose project
    try:
        foreign = other_stack.run("web", labels=AUTOHEAL, healthy=False)
        for container in (unlabelled, foreign):
            docker_containers.wait_for_health(container, "unhealthy")

        rig.probe_for(2.5)

        assert rig.probe().status is Status.FAILING  # the check still reports it; healer does not touch it
        assert rig.restarts(unlabelled.id) == 0 and rig.restarts(foreign.id) == 0
        assert rows(sessions) == []
    finally:
        other_stack.remove_all()


def test_a_container_that_stays_unhealthy_is_restarted_at_most_n_times_then_reported(
    docker_engine: DockerEngine, docker_containers: Containers, sessions: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = DockerRig(docker_engine, docker_containers, sessions, max_restarts=2)
    web = docker_containers.run("web", labels=AUTOHEAL, healthy=False)  # never healthy, restart or not
    docker_containers.wait_for_health(web, "unhealthy")

    with caplog.at_level(logging.INFO, logger="healer.remediation"):
        eventually(lambda: any(r.result == "escalated" for r in rows(sessions)), timeout=60, what="the flap guard",
                   step=rig.probe, interval=0.2)
        rig.probe_for(2.0)  # and then it is left alone

    assert [r.result for r in rows(sessions)] == ["success", "success", "escalated"]
    assert rig.restarts(web.id) == 2
    escalated = rows(sessions)[-1]
    assert escalated.target == web.name and escalated.reason == "still unhealthy after 2 restart(s) in 600s"
    assert "HEALER_AUTOHEAL_MAX_RESTARTS=2" in escalated.detail
    assert any(r.levelno == logging.ERROR and web.name in r.getMessage() and "escalated" in r.getMessage()
               for r in caplog.records)
    assert counted(rig.metrics, Action.RESTART_CONTAINER, Result.ESCALATED) == 1
    result = rig.probe()
    assert result.status is Status.FAILING and f"{web.name} unhealthy" in result.detail


def test_the_flap_guard_counts_restarts_recorded_by_an_earlier_daemon(
    docker_engine: DockerEngine, docker_containers: Containers, sessions: sessionmaker[Session]
) -> None:
    web = docker_containers.run("web", labels=AUTOHEAL, healthy=False)
    docker_containers.wait_for_health(web, "unhealthy")
    earlier = Audit(sessions, Metrics(), ON, worker="earlier-daemon")
    for _ in range(2):
        earlier.record(Action.RESTART_CONTAINER, web.name, "unhealthy for 60s", Result.SUCCESS)

    rig = DockerRig(docker_engine, docker_containers, sessions, max_restarts=2)
    eventually(lambda: len(rows(sessions)) == 3, timeout=20, what="the escalation", step=rig.probe, interval=0.2)

    assert rows(sessions)[-1].result == "escalated" and rig.restarts(web.id) == 0


def test_dry_run_restarts_nothing_and_records_what_it_would_do(
    docker_engine: DockerEngine, docker_containers: Containers, sessions: sessionmaker[Session]
) -> None:
    rig = DockerRig(docker_engine, docker_containers, sessions, mode=DRY_RUN)
    web = docker_containers.run("web", labels=AUTOHEAL)
    docker_containers.wait_for_health(web, "healthy")
    docker_containers.make_unhealthy(web)
    docker_containers.wait_for_health(web, "unhealthy")
    started_at = docker_containers.state(web)["StartedAt"]

    eventually(lambda: len(rows(sessions)) >= 3, timeout=30, what="dry-run rows", step=rig.probe, interval=0.2)

    assert docker_containers.state(web)["StartedAt"] == started_at and rig.restarts(web.id) == 0
    assert docker_containers.health(web) == "unhealthy"
    assert [(r.result, r.mode) for r in rows(sessions)] == [
        ("dry_run", "dry-run"), ("dry_run", "dry-run"), ("escalated", "dry-run")]
    assert rows(sessions)[0].detail == "would restart it (restart 1 of at most 2 per 600s)"
    assert counted(rig.metrics, Action.RESTART_CONTAINER, Result.DRY_RUN) == 2
    assert counted(rig.metrics, Action.RESTART_CONTAINER, Result.SUCCESS) == 0


def test_an_unhealthy_container_in_its_health_start_period_is_not_restarted(
    docker_engine: DockerEngine, docker_containers: Containers, sessions: sessionmaker[Session]
) -> None:
    rig = DockerRig(docker_engine, docker_containers, sessions)
    # Containers.run's health check has no start period; this one has two minutes of it.
    slow = docker_engine.client.containers.run(
        docker_containers.image, ["sh", "-c", f"touch {HEALTH_FILE}; exec sleep 3600"],
        name=f"{docker_containers.project}-slow-1", detach=True, network_mode="none",
        labels={COMPOSE_PROJECT_LABEL: docker_containers.project, **AUTOHEAL},
        healthcheck={"test": ["CMD", "test", "-f", HEALTH_FILE], "interval": 200_000_000,
                     "timeout": 2_000_000_000, "retries": 1, "start_period": 120_000_000_000},
    )
    try:
        docker_containers.wait_for_health(slow, "healthy")
        docker_containers.make_unhealthy(slow)  # once healthy, failures count even in the start period
        docker_containers.wait_for_health(slow, "unhealthy")

        rig.probe_for(2.0)

        assert rig.restarts(slow.id) == 0 and rows(sessions) == []
    finally:
        slow.remove(force=True)


def test_oom_killed_and_crashed_containers_are_reported_with_their_exit_code_not_restarted(
    docker_engine: DockerEngine, docker_containers: Containers, sessions: sessionmaker[Session]
) -> None:
    rig = DockerRig(docker_engine, docker_containers, sessions)
    hog = docker_containers.run("renderer", command=["tail", "/dev/zero"], healthcheck=False,
                                mem_limit="16m", memswap_limit="16m", labels=AUTOHEAL)
    crashed = docker_containers.run("mailer", command=["sh", "-c", "exit 3"], healthcheck=False, labels=AUTOHEAL)
    docker_containers.wait_for(crashed, lambda a: a["State"]["Status"] == "exited", what="exited")
    # The engine may record the exit before the kernel's OOM event reaches it: wait for both.
    docker_containers.wait_for(hog, lambda a: a["State"]["Status"] == "exited" and a["State"]["OOMKilled"],
                               what="exited, OOM-killed")

    rig.probe_for(1.5)  # reported once, not on every probe

    reported = {(r.target, r.reason, r.result) for r in rows(sessions)}
    assert reported == {(hog.name, "OOM-killed (exit 137)", "escalated"),
                        (crashed.name, "exited with code 3", "escalated")}
    assert len(rows(sessions)) == 2
    assert "not restarted by healer" in rows(sessions)[0].detail
    for container in (hog, crashed):
        assert docker_containers.state(container)["Status"] == "exited"


# -- regenerate_waveform ----------------------------------------------------------------------------


def run_order(pipeline: Pipeline, order_id: uuid.UUID) -> list[StepResult]:
    assert pipeline.claim_order(order_id, OWNER)
    return pipeline.run(order_id, OWNER)


def waveform_rig(shop: Shop, mode: RemediationMode = ON) -> tuple[Pipeline, Metrics]:
    metrics = Metrics()
    audit = Audit(shop.sessions, metrics, mode)
    remediator = Remediator(audit, waveforms=WaveformRestorer(shop.sessions, shop.store, audit))
    def observe(result: StepResult) -> None:  # what the daemon passes as `observe=`
        shop.results.append(result)
        remediator.observe_step(result)

    pipeline = shop.pipeline()
    pipeline.observe = observe
    return pipeline, metrics


def test_a_lost_waveform_is_regenerated_from_the_audio_and_the_order_completes(shop: Shop) -> None:
    order_id = shop.paid_order(with_waveform=False)  # the shop's waveform upload expired
    pipeline, metrics = waveform_rig(shop)

    run_order(pipeline, order_id)

    order = shop.order(order_id)
    assert order.status == OrderStatus.COMPLETED.value and len(shop.emails_to("ada@example.com")) == 1
    key = permanent_key(order_id, "waveform", order.waveform_key or "")
    png = shop.store.get(key)
    audio = shop.store.get(permanent_key(order_id, "audio", order.audio_key or ""))
    assert png == waveform_png(audio, audio_name=permanent_key(order_id, "audio", order.audio_key or ""))
    assert Image.open(io.BytesIO(png)).size == (1600, 400)
    [row] = rows(shop.sessions)
    assert (row.action, row.target, row.result) == ("regenerate_waveform", str(order_id), "success")
    assert row.detail.startswith(f"wrote {key} (") and "lost or expired" in row.reason
    assert counted(metrics, Action.REGENERATE_WAVEFORM, Result.SUCCESS) == 1
    render = next(e for e in shop.events(order_id) if e.step == Step.RENDER.value)
    assert "waveform drawn from the audio" in render.message


def test_an_order_with_its_waveform_needs_no_remediation(shop: Shop) -> None:
    order_id = shop.paid_order()
    pipeline, metrics = waveform_rig(shop)

    run_order(pipeline, order_id)

    assert shop.order(order_id).status == OrderStatus.COMPLETED.value
    assert rows(shop.sessions) == [] and counted(metrics, Action.REGENERATE_WAVEFORM, Result.SUCCESS) == 0


def test_dry_run_records_the_waveform_it_would_write_and_writes_none(shop: Shop) -> None:
    order_id = shop.paid_order(with_waveform=False)
    pipeline, _metrics = waveform_rig(shop, DRY_RUN)

    run_order(pipeline, order_id)

    order = shop.order(order_id)
    assert order.status == OrderStatus.COMPLETED.value  # the render draws from the audio either way
    key = permanent_key(order_id, "waveform", order.waveform_key or "")
    assert not shop.store.exists(key)
    [row] = rows(shop.sessions)
    assert (row.result, row.mode) == ("dry_run", "dry-run") and row.detail.startswith(f"would write {key} from ")


def test_off_takes_no_action_at_all(shop: Shop, tmp_path: Path) -> None:
    order_id = shop.paid_order(with_waveform=False)
    pipeline, _metrics = waveform_rig(shop, OFF)
    scratch = tmp_path / "scratch"
    old = write_file(scratch / "old.bin", 1000, age_seconds=7200)
    audit = Audit(shop.sessions, Metrics(), OFF)
    remediator = Remediator(audit, scratch=ScratchSweeper(scratch, RemediationPolicy(scratch_target=UNREACHABLE), audit))

    run_order(pipeline, order_id)
    remediator.on_check_result(disk_result(Status.FAILING), None)

    assert not shop.store.exists(permanent_key(order_id, "waveform", shop.order(order_id).waveform_key or ""))
    assert old.exists() and rows(shop.sessions) == []


# -- free_scratch -------------------------------------------------------------------------------------

UNREACHABLE = Thresholds(free_ratio=1.01, free_bytes=0, free_inodes_ratio=0.0)  # always "low": frees all it may
KIB = 1024


def write_file(path: Path, size: int, age_seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    stamp = time.time() - age_seconds
    os.utime(path, (stamp, stamp))
    return path


def disk_result(status: Status) -> CheckResult:
    return CheckResult("disk", status, 0.01, "scratch: low", "", Runbook.RESOURCES)


@pytest.fixture
def scratch_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs as the daemon's scratch directory (we are root in the test environment)."""
    mount_point = tmp_path / "data" / "scratch"
    mount_point.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {mount_point} (run the tests as root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(directory: Path, outside: Path) -> tuple[list[Path], Path]:
    """Old files (oldest first), a symlink to a file outside and one to a directory outside, and a
    young file that fills the file system to the last byte."""
    old = [write_file(directory / ("renders" if i % 2 else "") / f"old-{i:02}.pdf", 160 * KIB, 7200 - i * 60)
           for i in range(11)]
    write_file(outside / "precious.txt", 10, 7200)
    write_file(outside / "dir" / "also-precious.txt", 10, 7200)
    (directory / "link-to-file").symlink_to(outside / "precious.txt")
    (directory / "link-to-dir").symlink_to(outside / "dir")
    os.utime(directory / "link-to-file", (0, 0), follow_symlinks=False)
    young = directory / "render-in-flight.part"
    with young.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass  # ENOSPC: the scratch file system is full
    return old, young


def test_a_full_scratch_tmpfs_is_cleaned_and_rendering_resumes(
    shop: Shop, scratch_tmpfs: Path, tmp_path: Path
) -> None:
    old, young = fill(scratch_tmpfs, tmp_path / "outside")
    assert measure("scratch", scratch_tmpfs).free_bytes < 16 * KIB
    level = Thresholds(free_ratio=0.5, free_bytes=0, free_inodes_ratio=0.0)
    monitor = HealthMonitor([DiskCheck(paths=(("scratch", scratch_tmpfs),), warn_below=level,
                                       fail_below=Thresholds(0.25, 0, 0.0), failure_threshold=1)])
    pipeline = shop.pipeline(gate=monitor.gate)
    metrics = Metrics()
    audit = Audit(shop.sessions, metrics, ON)
    policy = RemediationPolicy(scratch_target=level, scratch_min_age_seconds=600)
    monitor.add_listener(Remediator(
        audit, scratch=ScratchSweeper(scratch_tmpfs, policy, audit),
        orders=OrderResumer(shop.sessions, pipeline.resume_waiting, audit),
    ).on_check_result)
    order_id = shop.paid_order()

    assert monitor.run("disk").status is Status.FAILING  # and the sweep ran on this very result
    waited = run_order(pipeline, order_id)
    assert waited[-1].step is Step.RENDER and waited[-1].outcome is Outcome.WAITING
    assert pipeline.claim(OWNER, 1) == [], "waiting out the gate, not due yet"
    assert monitor.run("disk").status is Status.OK
    assert pipeline.claim(OWNER, 1) == [order_id], "resumed the moment the disk check turned green"
    pipeline.run(order_id, OWNER)

    assert shop.order(order_id).status == OrderStatus.COMPLETED.value
    deleted = [p for p in old if not p.exists()]
    assert deleted == old[: len(deleted)] and 0 < len(deleted) < len(old), "the oldest first, only as many as needed"
    assert young.exists(), "a file younger than the minimum age may belong to a render in flight"
    assert (tmp_path / "outside" / "precious.txt").exists() and (tmp_path / "outside" / "dir" / "also-precious.txt").exists()
    assert (scratch_tmpfs / "link-to-file").is_symlink() and (scratch_tmpfs / "link-to-dir").is_symlink()
    assert measure("scratch", scratch_tmpfs).free_ratio >= 0.5
    free, resume = rows(shop.sessions)
    assert (free.action, free.target, free.result) == ("free_scratch", str(scratch_tmpfs), "success")
    assert free.reason.startswith("disk check failing; scratch file system ")
    assert free.detail.startswith(f"deleted {len(deleted)} file(s) of ") and "old-00.pdf" in free.detail
    assert (resume.action, resume.target, resume.result) == ("resume_orders", "disk", "success")
    assert resume.detail.startswith("1 waiting order(s) resumed now")
    assert counted(metrics, Action.FREE_SCRATCH, Result.SUCCESS) == 1


def test_only_old_regular_files_inside_scratch_are_ever_deleted(pg_engine: Engine, tmp_path: Path) -> None:
    sessions = db.make_session_factory(pg_engine)
    scratch, outside = tmp_path / "scratch", tmp_path / "outside"
    old = [write_file(scratch / "a" / "b" / "deep.pdf", 100, 7200), write_file(scratch / "top.tmp", 100, 3600)]
    young = write_file(scratch / "fresh.pdf", 100, 10)
    precious = write_file(outside / "precious.txt", 100, 7200)
    write_file(outside / "dir" / "inner.txt", 100, 7200)
    (scratch / "link").symlink_to(precious)
    (scratch / "dirlink").symlink_to(outside / "dir")
    audit = Audit(sessions, Metrics(), ON)
    sweeper = ScratchSweeper(scratch, RemediationPolicy(scratch_target=UNREACHABLE, scratch_min_age_seconds=600), audit)

    for _ in range(3):
        sweeper.on_disk_result(disk_result(Status.WARNING))

    assert not any(p.exists() for p in old) and young.exists()
    assert precious.exists() and (outside / "dir" / "inner.txt").exists() and (scratch / "link").is_symlink()
    assert [r.result for r in rows(sessions)] == ["success", "escalated"], "then nothing left: escalated once"
    assert "nothing of healer's own to delete" in rows(sessions)[1].detail


def test_a_scratch_directory_that_is_a_symlink_is_not_emptied(pg_engine: Engine, tmp_path: Path) -> None:
    sessions = db.make_session_factory(pg_engine)
    elsewhere = write_file(tmp_path / "elsewhere" / "important.db", 100, 7200)
    (tmp_path / "scratch").symlink_to(tmp_path / "elsewhere")
    audit = Audit(sessions, Metrics(), ON)
    sweeper = ScratchSweeper(tmp_path / "scratch", RemediationPolicy(scratch_target=UNREACHABLE), audit)

    sweeper.on_disk_result(disk_result(Status.FAILING))

    assert elsewhere.exists()
    [row] = rows(sessions)
    assert row.result == "escalated" and "is a symlink" in row.detail


def test_dry_run_scratch_sweep_deletes_nothing_and_records_once_per_episode(pg_engine: Engine, tmp_path: Path) -> None:
    sessions = db.make_session_factory(pg_engine)
    files = [write_file(tmp_path / "scratch" / f"{i}.pdf", 100, 7200 - i) for i in range(3)]
    audit = Audit(sessions, Metrics(), DRY_RUN)
    sweeper = ScratchSweeper(tmp_path / "scratch", RemediationPolicy(scratch_target=UNREACHABLE), audit)

    sweeper.on_disk_result(disk_result(Status.FAILING))
    sweeper.on_disk_result(disk_result(Status.FAILING))
    sweeper.on_disk_result(disk_result(Status.OK))  # the episode ends
    sweeper.on_disk_result(disk_result(Status.WARNING))

    assert all(p.exists() for p in files)
    assert [(r.result, r.mode) for r in rows(sessions)] == [("dry_run", "dry-run")] * 2
    assert rows(sessions)[0].detail.startswith("would delete 3 file(s) of ") and "0.pdf, 1.pdf, 2.pdf" in rows(sessions)[0].detail


def test_low_space_elsewhere_is_not_freed_from_scratch(pg_engine: Engine, tmp_path: Path) -> None:
    sessions = db.make_session_factory(pg_engine)
    old = write_file(tmp_path / "scratch" / "old.pdf", 100, 7200)
    audit = Audit(sessions, Metrics(), ON)
    never_low = Thresholds(free_ratio=0.0, free_bytes=0, free_inodes_ratio=0.0)
    sweeper = ScratchSweeper(tmp_path / "scratch", RemediationPolicy(scratch_target=never_low), audit)

    sweeper.on_disk_result(disk_result(Status.FAILING))  # e.g. the assets volume is full

    assert old.exists() and rows(sessions) == []


def test_a_small_scratch_volume_is_left_alone_while_empty_and_escalated_once_per_low_episode(
    pg_engine: Engine, scratch_tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The daemon's own levels and policy, on a 2 MiB volume: far smaller than the 1 GiB byte floor.
    sessions = db.make_session_factory(pg_engine)
    metrics = Metrics()
    audit = Audit(sessions, metrics, ON)
    monitor = HealthMonitor([DiskCheck(paths=(("scratch", scratch_tmpfs),), failure_threshold=1)])
    monitor.add_listener(Remediator(audit, scratch=ScratchSweeper(scratch_tmpfs, RemediationPolicy(), audit))
                         .on_check_result)
    caplog.set_level(logging.INFO)

    def probes(count: int) -> list[Status]:
        return [monitor.run("disk").status for _ in range(count)]

    assert probes(3) == [Status.OK] * 3, "an empty small volume is not low"
    assert rows(sessions) == []
    # A render in flight fills it (12% free): too young to delete, so nothing healer may free.
    in_flight = write_file(scratch_tmpfs / "render-in-flight.pdf", 1800 * KIB, age_seconds=10)
    first = probes(4)
    in_flight.unlink()
    recovered = probes(1)  # the episode ends
    write_file(scratch_tmpfs / "render-in-flight.pdf", 1800 * KIB, age_seconds=10)
    second = probes(3)

    assert (first, recovered, second) == ([Status.FAILING] * 4, [Status.OK], [Status.FAILING] * 3)
    escalations = rows(sessions, Action.FREE_SCRATCH)
    assert [(r.result, r.target) for r in escalations] == [("escalated", str(scratch_tmpfs))] * 2
    assert all("nothing of healer's own to delete" in r.detail for r in escalations)
    errors = [r.getMessage() for r in caplog.records if r.name.startswith("healer.remediation") and r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all(e.startswith("Remediation free_scratch on ") for e in errors), errors
    assert counted(metrics, Action.FREE_SCRATCH, Result.ESCALATED) == 2  # row, line and count agree


# -- resume_orders ------------------------------------------------------------------------------------


def test_dry_run_counts_the_orders_it_would_resume_and_leaves_them_waiting(shop: Shop) -> None:
    failing = CheckResult("s3", Status.FAILING, 0.1, "access denied", "", Runbook.S3_PERMISSION)
    pipeline = shop.pipeline(gate=lambda checks: "s3 failing: access denied" if "s3" in checks else None)
    order_id = shop.paid_order()
    run_order(pipeline, order_id)
    waiting_until = shop.order(order_id).next_attempt_at
    audit = Audit(shop.sessions, Metrics(), DRY_RUN)
    remediator = Remediator(audit, orders=OrderResumer(shop.sessions, pipeline.resume_waiting, audit))

    remediator.on_check_result(CheckResult("s3", Status.OK, 0.1, "bucket ok"), failing)
    remediator.on_check_result(CheckResult("docker", Status.OK, 0.1, "ok"),
                               CheckResult("docker", Status.FAILING, 0.1, "x"))  # nothing waits on docker

    assert shop.order(order_id).next_attempt_at == waiting_until
    [row] = rows(shop.sessions)
    assert (row.action, row.target, row.result) == ("resume_orders", "s3", "dry_run")
    assert row.detail == "would resume 1 waiting order(s) now"
    assert row.reason == "check s3 is ok again after failing: access denied"


# -- the audit, the command, the wiring ---------------------------------------------------------------


def test_every_action_and_result_is_exported_and_counted(pg_engine: Engine) -> None:
    metrics = Metrics()
    audit = Audit(db.make_session_factory(pg_engine), metrics, ON)

    audit.record(Action.FREE_SCRATCH, "/var/lib/healer/scratch", "disk check failing", Result.SUCCESS)

    exposition = metrics.exposition()[0].decode()
    assert 'healer_remediations_total{action="free_scratch",result="success"} 1.0' in exposition
    assert 'healer_remediations_total{action="restart_container",result="escalated"} 0.0' in exposition


def test_an_action_is_counted_and_logged_even_when_its_row_cannot_be_written(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    unmigrated = db.make_engine(f"sqlite:///{tmp_path / 'empty.sqlite3'}")  # no tables at all
    metrics = Metrics()
    audit = Audit(db.make_session_factory(unmigrated), metrics, ON)

    with caplog.at_level(logging.INFO, logger="healer.remediation"):
        audit.record(Action.RESUME_ORDERS, "s3", "check s3 is ok again", Result.SUCCESS, "2 resumed")

    assert counted(metrics, Action.RESUME_ORDERS, Result.SUCCESS) == 1
    assert "Remediation resume_orders on s3: success (on): check s3 is ok again; 2 resumed" in caplog.text
    assert "not recorded: database unavailable" in caplog.text
    unmigrated.dispose()


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"HEALER_DATA_DIR": str(tmp_path / "data"), **env})


def test_healer_remediations_lists_the_newest_first_as_a_table_or_json(pg_url: str, pg_engine: Engine, tmp_path: Path) -> None:
    audit = Audit(db.make_session_factory(pg_engine), Metrics(), ON, worker="host:1:abc")
    audit.record(Action.RESTART_CONTAINER, "healer-minio-1", "unhealthy for 61s", Result.SUCCESS, "restarted in 1.2s")
    audit.record(Action.REGENERATE_WAVEFORM, "0b5c…", "waveform lost", Result.FAILURE, "s3_auth: access denied")
    audit.record(Action.FREE_SCRATCH, "/var/lib/healer/scratch", "disk check failing", Result.ESCALATED, "nothing to delete")
    settings = _settings(tmp_path, DATABASE_URL=pg_url)

    console = Console(file=io.StringIO(), width=250)
    with database(settings, read_only=True) as services:
        assert remediations_command(services.sessions, argparse.Namespace(limit=2, json=True, action=None),
                                    console) == 0
    listed = json.loads(console.file.getvalue())  # type: ignore[attr-defined]
    assert [(r["action"], r["result"]) for r in listed] == [("free_scratch", "escalated"), ("regenerate_waveform", "failure")]
    assert listed[0]["mode"] == "on" and listed[0]["worker"] == "host:1:abc"
    assert datetime.fromisoformat(listed[0]["at"]) <= datetime.now(UTC)

    console = Console(file=io.StringIO(), width=250)
    with database(settings, read_only=True) as services:
        assert remediations_command(services.sessions,
                                    argparse.Namespace(limit=50, json=False, action="restart_container"), console) == 0
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "healer-minio-1" in text and "unhealthy for 61s" in text and "restarted in 1.2s" in text
    assert "scratch" not in text and "1 remediation(s), newest first" in text


def test_healer_remediations_on_the_embedded_database(tmp_path: Path) -> None:
    settings, console = _settings(tmp_path), Console(file=io.StringIO(), width=200)
    with pytest.raises(NoDatabase, match="no healer database at .*healer.sqlite3"):  # never a new, empty one
        database(settings, read_only=True).__enter__()
    assert not settings.data_dir.exists()

    db.upgrade(db.make_engine(settings.effective_database_url))  # as `healer run` does at start
    with database(settings, read_only=True) as services:
        assert remediations_command(services.sessions, argparse.Namespace(limit=10, json=False), console) == 0
    assert "0 remediation(s)" in console.file.getvalue()  # type: ignore[attr-defined]


def test_build_remediator_wires_what_the_settings_allow(pg_url: str, tmp_path: Path, docker_engine: DockerEngine) -> None:
    settings = _settings(tmp_path, DATABASE_URL=pg_url, DOCKER_HOST=docker_engine.base_url, HEALER_REMEDIATION="dry-run")
    services = Services.build(settings)
    try:
        with_docker = build_remediator(settings, services, Metrics(), RemediationPolicy(docker=True),
                                       resume_waiting=lambda _check: 0, worker="w")
        without = build_remediator(settings, services, Metrics())
        no_socket = build_remediator(_settings(tmp_path, DATABASE_URL=pg_url), services, Metrics(),
                                     RemediationPolicy(docker=True))
    finally:
        services.close()

    assert with_docker.mode is DRY_RUN and with_docker.containers is not None
    assert with_docker.containers.labels == ["healer.autoheal=true", "com.docker.compose.project=healer"]
    assert with_docker.scratch is not None and with_docker.scratch.root == settings.scratch_dir
    assert with_docker.describe().startswith(
        "remediation dry-run: restart_container, regenerate_waveform, resume_orders, free_scratch (containers labelled")
    assert without.containers is None and without.orders is None, "the Docker action is opt-in"
    assert no_socket.containers is None


def test_the_audit_table_matches_its_migration_both_ways(pg_engine: Engine, tmp_path: Path) -> None:
    with pg_engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert [d for d in diffs if "remediations" in repr(d)] == []
    lite = db.make_engine(f"sqlite:///{tmp_path / 'healer.sqlite3'}")
    db.upgrade(lite)
    assert "remediations" in inspect(lite).get_table_names()
    command.downgrade(db.alembic_config(lite), "0002")
    assert "remediations" not in inspect(lite).get_table_names()
    db.upgrade(lite)
    assert db.current_revision(lite) == db.head_revision()
    lite.dispose()
