"""Pytest fixtures for the renderer; imported by tests/conftest.py.

`assets_dir` is a private copy of the repository's fonts, templates and backgrounds, so a test may
delete or damage a file and see exactly what an operator would see. `sample_inputs` is one small
order's uploads (a 480x640 photo, a few seconds of voice-like audio and its waveform image), made
once per session from fixed seeds. `render_processes` and `busy_rendering` watch the render
processes of a pool (or a daemon) from outside.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import psutil
import pytest

from fulfilment.render import PosterInputs
from healer.demo.samples import sample_audio, sample_photo, sample_waveform_png
from poster_assets import bundled_assets_dir
from tests.eventually import eventually

BUNDLED_ASSETS = bundled_assets_dir()
SAMPLE_TITLE = "Zoë & Ömer"
SAMPLE_SUBTITLE = "14 February 2025 · Our first dance"


@pytest.fixture
def assets_dir(tmp_path: Path) -> Path:
    return copy_assets(tmp_path / "assets")


def copy_assets(root: Path) -> Path:
    """A private copy of the bundled assets, for a test that damages or edits them."""
    # The package's own module is source, not an asset: the copy holds what HEALER_ASSETS_DIR would.
    shutil.copytree(BUNDLED_ASSETS, root, ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
    return root


@pytest.fixture(scope="session")
def sample_inputs() -> PosterInputs:
    audio = sample_audio(seed=1, seconds=4.0)
    return PosterInputs(
        template="a4-portrait",
        title=SAMPLE_TITLE,
        subtitle=SAMPLE_SUBTITLE,
        photo=sample_photo(seed=1, size=(480, 640)),
        waveform_image=sample_waveform_png(audio),
        audio=audio,
        audio_name="voice-note.wav",
    )


def render_processes(owner: int) -> list[psutil.Process]:
    """The render processes `owner` has spawned (multiprocessing's spawn: `spawn_main` in their
    command line), leaving out its other children (the resource tracker)."""
    children = psutil.Process(owner).children()
    return [child for child in children if "spawn_main" in " ".join(_cmdline(child))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return [str(part) for part in process.cmdline()]
    except psutil.NoSuchProcess:  # ended between the listing and the look
        return []


def busy_rendering(process: psutil.Process) -> None:
    """Returns once the process is working on a render (its CPU time grows), not just taking it in."""
    before = _cpu_seconds(process)
    eventually(lambda: _cpu_seconds(process) > before + 0.05, timeout=30, what="the render to be under way")


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)
