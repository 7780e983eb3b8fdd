"""The render pool built for failure: a render process killed while idle, killed mid-render or hung
costs at most that one render, classified by what happened to it, and the pool renders on; render
processes start on demand, are retired when idle, end with their owner however it ends, and a
SIGTERM with a render in flight never hangs the owner.

Real spawned render processes throughout, signalled from outside as the kernel, an operator or a
container runtime would. The time limit and the memory cap themselves: tests/security/test_render_limits.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from fulfilment.errors import ErrorClass, StepError
from fulfilment.render import PosterInputs
from healer.render.pool import STOP_SECONDS, RenderPool, classify_death
from tests.e2e.daemon import REPO
from tests.eventually import eventually
from tests.fakes.render_fixtures import busy_rendering, render_processes
from tests.fakes.render_inputs import endless_title, tiny_wav

pytestmark = pytest.mark.timeout(120)

AUDIO = tiny_wav()
# What the harness may take to exit after its SIGTERM: stopping its pool is bounded by STOP_SECONDS.
GRACE_SECONDS = STOP_SECONDS + 10


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    return tmp_path / "scratch"


def the_render_process(pool: RenderPool) -> psutil.Process:
    """The one render process of a one-slot pool of this test's, after a first render started it
    (not one of another pool's: this process may have more)."""
    others = set(render_processes(os.getpid()))
    assert pool.waveform_png(AUDIO, "voice.wav").startswith(b"\x89PNG")
    (process,) = set(render_processes(os.getpid())) - others
    return process


def render_in_background(pool: RenderPool, inputs: PosterInputs) -> tuple[threading.Thread, list[BaseException]]:
    failures: list[BaseException] = []

    def render() -> None:
        try:
            pool(inputs)
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=render)
    thread.start()
    return thread, failures


# ------------------------------------------------------------------------ killed, hung, retired


def test_a_render_process_killed_while_idle_costs_no_render(sample_inputs: PosterInputs, assets_dir: Path,
                                                            scratch: Path) -> None:
    pool = RenderPool(assets_dir, 1, scratch)
    try:
        idle = the_render_process(pool)
        idle.kill()  # not waited for here: reaping it is the pool's business

        assert pool(sample_inputs).startswith(b"%PDF")  # the render it would have taken
        assert idle not in render_processes(os.getpid())  # a fresh process took it
    finally:
        pool.shutdown()


def test_a_render_process_killed_mid_render_costs_that_render_alone_as_resources(
    sample_inputs: PosterInputs, assets_dir: Path, scratch: Path
) -> None:
    # What the kernel's OOM killer (the machine out of memory, not this render over its cap), an
    # operator or a container runtime does: SIGKILL from outside, mid-render.
    pool = RenderPool(assets_dir, 1, scratch)
    try:
        process = the_render_process(pool)
        thread, failures = render_in_background(pool, replace(sample_inputs, title=endless_title()))
        busy_rendering(process)
        process.kill()
        thread.join(timeout=30)

        (failure,) = failures
        assert isinstance(failure, StepError) and failure.error_class is ErrorClass.RESOURCES, failure
        assert failure.message.startswith("render process was killed from outside (SIGKILL"), failure.message
        assert pool(sample_inputs).startswith(b"%PDF")  # the next order, on a fresh process
    finally:
        pool.shutdown()


def test_a_hung_render_process_is_stopped_at_the_time_limit_and_costs_that_render_alone(
    sample_inputs: PosterInputs, assets_dir: Path, scratch: Path
) -> None:
    pool = RenderPool(assets_dir, 1, scratch, timeout_seconds=1)
    try:
        process = the_render_process(pool)
        thread, failures = render_in_background(pool, replace(sample_inputs, title=endless_title()))
        busy_rendering(process)
        process.suspend()  # SIGSTOP: it neither renders on nor answers SIGTERM, only SIGKILL
        thread.join(timeout=30)

        (failure,) = failures
        assert isinstance(failure, StepError) and failure.error_class is ErrorClass.BAD_INPUT, failure
        assert failure.message == "render took longer than 1 s; stopped"
        assert not process.is_running()
        assert pool(sample_inputs).startswith(b"%PDF")
    finally:
        pool.shutdown()


def test_render_processes_start_on_demand_and_are_retired_when_idle(scratch: Path) -> None:
    others = set(render_processes(os.getpid()))
    pool = RenderPool(Path(), 1, scratch, idle_seconds=0.3)
    try:
        assert set(render_processes(os.getpid())) == others  # none before the first render
        the_render_process(pool)
        eventually(lambda: set(render_processes(os.getpid())) == others, timeout=30,
                   what="the idle process to be retired")

        assert pool.waveform_png(AUDIO, "voice.wav").startswith(b"\x89PNG")  # and starts again
    finally:
        pool.shutdown()


@pytest.mark.parametrize(
    ("exitcode", "memory_mb", "error_class", "message"),
    [
        (-signal.SIGKILL, 2048, ErrorClass.RESOURCES, "render process was killed from outside (SIGKILL: "),
        (signal.SIGTERM, 2048, ErrorClass.RESOURCES, "render process was killed from outside (SIGTERM: "),
        (-signal.SIGABRT, 384, ErrorClass.BAD_INPUT, "render process died (SIGABRT), most likely over its "
                                                     "memory limit of 384 MB"),
        (-signal.SIGSEGV, None, ErrorClass.BAD_INPUT, "render process crashed (SIGSEGV) on this order's input"),
        (1, 2048, ErrorClass.RESOURCES, "render process ended in the middle of the render (exit status 1)"),
    ],
)
def test_a_death_mid_render_is_classified_by_how_the_process_ended(
    exitcode: int, memory_mb: int | None, error_class: ErrorClass, message: str
) -> None:
    error = classify_death(exitcode, memory_mb)
    assert error.error_class is error_class and error.message.startswith(message), error
    assert "out of memory?" not in error.message


# ------------------------------------------------------------------------- the owner's end


def start_harness(mode: str, scratch: Path) -> subprocess.Popen[str]:
    """tests/healer/render_harness.py in `mode`, once it has said it is ready."""
    harness = subprocess.Popen([sys.executable, "-m", "tests.healer.render_harness", mode, str(scratch)],
                               cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert harness.stdout is not None
    said = harness.stdout.readline().strip()
    assert said in ("ready", "rendering"), f"the harness exited early (code {harness.wait()})"
    return harness


def test_render_processes_end_with_an_owner_that_is_sigkilled(scratch: Path) -> None:
    harness = start_harness("killed", scratch)
    children = psutil.Process(harness.pid).children(recursive=True)  # the resource tracker too
    try:
        # Still alive though the thread that spawned it has ended (PR_SET_PDEATHSIG killed it here).
        assert len(render_processes(harness.pid)) == 1
        harness.kill()
        harness.wait(timeout=10)

        _, orphans = psutil.wait_procs(children, timeout=10)
        assert orphans == [], f"outlived their owner: {[p.cmdline() for p in orphans]}"
    finally:
        stop(harness)


def sigterm_with_a_render_in_flight(scratch: Path) -> str:
    """One run: the harness renders, is SIGTERMed mid-render, must exit 0 in its grace and leave no
    render process behind; returns what it said became of the render."""
    harness = start_harness("sigterm", scratch)
    try:
        (process,) = render_processes(harness.pid)
        busy_rendering(process)
        harness.send_signal(signal.SIGTERM)
        assert harness.wait(timeout=GRACE_SECONDS) == 0

        # Stopped and reaped by the harness itself. (multiprocessing's resource tracker, its other
        # child, ends by itself once the harness has: waiting for it would double the run.)
        assert not process.is_running(), process
        assert harness.stdout is not None
        return harness.stdout.read().strip()
    finally:
        stop(harness)


def stop(harness: subprocess.Popen[str]) -> None:
    """Whatever happened in the test: no harness left running, no pipe left open."""
    harness.kill()
    harness.wait()
    if harness.stdout is not None:
        harness.stdout.close()


@pytest.mark.serial  # each SIGTERM must be met within its grace: alone, not beside another test
@pytest.mark.timeout(300)
def test_sigterm_with_a_render_in_flight_stops_the_owner_within_its_grace_50_times_in_a_row(tmp_path: Path) -> None:
    # Two at a time: each run is two interpreters starting (the owner and its render process).
    with ThreadPoolExecutor(max_workers=2) as runs:
        said = list(runs.map(lambda n: sigterm_with_a_render_in_flight(tmp_path / str(n)), range(50)))

    assert said == ["resources: render cancelled: the daemon is stopping"] * 50
