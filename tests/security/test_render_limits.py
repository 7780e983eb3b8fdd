"""A render runs in its own process under a memory cap and a time limit: going over either is the
order's fault (`bad_input`, never retried), only that render's process pays for it, and the pool
renders the next order as if nothing happened. A 200 MP phone photo renders under the defaults.

Every render here goes through healer.render.pool.RenderPool, the daemon's own pool, into real
spawned processes; the inputs are what a customer could upload. A render process killed or hung
from outside, not by its input: tests/healer/test_render_pool.py.
"""

from __future__ import annotations

import io
import multiprocessing
import struct
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import soundfile
from PIL import Image
from pypdf import PdfReader
from pypdf.generic import DictionaryObject

from fulfilment.errors import ErrorClass, StepError
from fulfilment.render import PosterInputs
from fulfilment.waveform import waveform_png
from healer.config import Settings
from healer.demo.samples import sample_audio, sample_photo
from healer.render.pool import RenderPool
from tests.eventually import eventually
from tests.fakes.render_inputs import endless_title

pytestmark = pytest.mark.timeout(300)


def png_rising_rows(width: int, height: int) -> bytes:
    """A valid RGB PNG of a few hundred KB whose rows never repeat: one row of noise, then each
    row the one above plus one (PNG's Up filter stores that as a row of 1s). Decoded it is
    width*height*3 bytes that ReportLab must compress again, byte by byte."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rng = np.random.default_rng(7)
    packer = zlib.compressobj(9)
    rows = [packer.compress(b"\0" + rng.integers(0, 256, 3 * width, dtype=np.uint8).tobytes())]
    up = b"\2" + b"\1" * (3 * width)
    rows.extend(packer.compress(up) for _ in range(height - 1))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"".join(rows) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def bad_input(pool: RenderPool, inputs: PosterInputs) -> StepError:
    with pytest.raises(StepError) as caught:
        pool(inputs)
    assert caught.value.error_class is ErrorClass.BAD_INPUT, caught.value
    return caught.value


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    return tmp_path / "scratch"


# ------------------------------------------------------------------------- a 200 MP phone photo


@pytest.fixture(scope="module")
def photo_200mp() -> bytes:
    """16320x12240 (199.8 MP, a 200 MP phone's full size) as a baseline JPEG, about 10 MB.

    Upscaled from a small sample photo rather than drawn at full size: drawing it costs a minute
    and several GB; the renderer's cost depends on the pixel count and the file, not the scenery.
    """
    small = Image.open(io.BytesIO(sample_photo(seed=3, size=(2040, 1530))))
    out = io.BytesIO()
    small.resize((16_320, 12_240), Image.Resampling.BILINEAR).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_a_200_megapixel_jpeg_renders_under_the_default_limits(
    photo_200mp: bytes, sample_inputs: PosterInputs, assets_dir: Path, scratch: Path
) -> None:
    assert Image.MAX_IMAGE_PIXELS is not None
    assert 16_320 * 12_240 > 2 * Image.MAX_IMAGE_PIXELS  # Pillow, left as it is, refuses it
    defaults = Settings.from_env({})  # what `healer run` uses when nothing is set
    pool = RenderPool(
        assets_dir, 1, scratch, timeout_seconds=defaults.render_timeout_seconds,
        memory_mb=defaults.render_memory_mb, max_photo_megapixels=defaults.max_photo_megapixels,
    )
    try:
        pdf = pool(replace(sample_inputs, photo=photo_200mp))
    finally:
        pool.shutdown()
    resources = cast(DictionaryObject, PdfReader(io.BytesIO(pdf)).pages[0]["/Resources"])
    xobjects = cast(DictionaryObject, resources["/XObject"])
    images: list[Any] = [xobjects[name].get_object() for name in xobjects]
    photo = next(x for x in images if int(x["/Width"]) == 16_320)
    assert int(photo["/Height"]) == 12_240 and photo.get_data() == photo_200mp  # embedded as sent


# ----------------------------------------------------------------------------- the memory cap


def test_a_render_over_the_memory_cap_is_bad_input_and_the_pool_renders_on(
    sample_inputs: PosterInputs, assets_dir: Path, scratch: Path
) -> None:
    pool = RenderPool(assets_dir, 1, scratch, memory_mb=384)
    try:
        hungry = replace(sample_inputs, photo=png_rising_rows(8_000, 6_000))  # 48 MP: ~900 MB to render
        error = bad_input(pool, hungry)
        assert "over the render memory limit of 384 MB" in error.message
        assert pool(sample_inputs).startswith(b"%PDF")  # same pool, next order
    finally:
        pool.shutdown()


# ----------------------------------------------------------------------------- the time limit


def test_a_render_over_the_time_limit_is_bad_input_and_the_pool_renders_on(
    sample_inputs: PosterInputs, assets_dir: Path, scratch: Path
) -> None:
    pool = RenderPool(assets_dir, 1, scratch, timeout_seconds=5)
    others = set(multiprocessing.active_children())
    try:
        error = bad_input(pool, replace(sample_inputs, title=endless_title()))
        assert error.message == "render took longer than 5 s; stopped"
        eventually(lambda: set(multiprocessing.active_children()) <= others, timeout=60,
                   what="the render process to stop")  # stopped, not left running
        assert pool(sample_inputs).startswith(b"%PDF")  # a fresh process takes the next order
    finally:
        pool.shutdown()


# ------------------------------------------------------------------------ waveform regeneration


def test_a_waveform_is_redrawn_in_a_render_process_under_the_memory_cap(assets_dir: Path, scratch: Path) -> None:
    audio = sample_audio(seed=2, seconds=3.0)
    pool = RenderPool(assets_dir, 1, scratch, memory_mb=256)
    try:
        assert pool.waveform_png(audio, "voice.wav") == waveform_png(audio, audio_name="voice.wav")
        long_wav = io.BytesIO()  # 20 minutes at 44.1 kHz: 100 MB sent, and as much again to read it
        soundfile.write(long_wav, np.zeros(44_100 * 1_190, dtype=np.int16), 44_100, format="WAV")
        error = pytest.raises(StepError, pool.waveform_png, long_wav.getvalue(), "long.wav").value
        assert error.error_class is ErrorClass.BAD_INPUT and "memory limit of 256 MB" in error.message
        assert pool.waveform_png(audio, "voice.wav").startswith(b"\x89PNG")
    finally:
        pool.shutdown()
