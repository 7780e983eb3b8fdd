"""Pytest fixtures for the renderer; imported by tests/conftest.py.

`assets_dir` is a private copy of the repository's fonts, templates and backgrounds, so a test may
delete or damage a file and see exactly what an operator would see. `sample_inputs` is one small
order's uploads (a 480x640 photo, a few seconds of voice-like audio and its waveform image), made
once per session from fixed seeds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fulfilment.render import PosterInputs
from healer.demo.samples import sample_audio, sample_photo, sample_waveform_png
from poster_assets import bundled_assets_dir

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
