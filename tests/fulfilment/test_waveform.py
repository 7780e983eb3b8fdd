"""Waveform peaks from audio and from images, bounded inputs, and the regenerated waveform image."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import soundfile
from PIL import Image

from fulfilment.errors import ErrorClass, StepError
from fulfilment.waveform import peaks_from_audio, peaks_from_image, resample, waveform_png
from healer.demo.samples import sample_audio, sample_photo, sample_waveform_png

RATE = 8000


def encode(signal: np.ndarray, fmt: str, rate: int = RATE, subtype: str | None = None) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, signal, rate, format=fmt, subtype=subtype)
    return out.getvalue()


def loud_then_quiet(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * 330 * t) * np.where(t < seconds / 2, 0.8, 0.2)).astype(np.float32)


def bad_input(call, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(StepError) as caught:
        call(*args, **kwargs)
    assert caught.value.error_class is ErrorClass.BAD_INPUT, caught.value
    return caught.value.message


# ------------------------------------------------------------------------------------ from audio


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_peaks_follow_the_loudness_of_every_supported_format(fmt: str) -> None:
    peaks = peaks_from_audio(encode(loud_then_quiet(), fmt), f"memo.{fmt.lower()}", bins=8)
    assert len(peaks) == 8 and max(peaks) == 1.0
    assert min(peaks[:4]) > 0.9 and max(peaks[4:]) == pytest.approx(0.25, abs=0.05)


def test_stereo_takes_the_louder_channel() -> None:
    left = loud_then_quiet()
    stereo = np.stack([left, left[::-1] * 0.5], axis=1)
    peaks = peaks_from_audio(encode(stereo, "WAV"), bins=4)
    assert peaks[0] == pytest.approx(1.0) and peaks[-1] == pytest.approx(0.5, abs=0.05)


def test_silence_gives_a_flat_waveform_not_an_error() -> None:
    assert peaks_from_audio(encode(np.zeros(RATE, dtype=np.float32), "WAV"), bins=5) == (0.0,) * 5


def test_damaged_float_samples_do_not_poison_the_peaks() -> None:
    signal = loud_then_quiet()
    signal[100] = np.nan
    signal[200] = np.inf
    peaks = peaks_from_audio(encode(signal, "WAV", subtype="FLOAT"), bins=4)
    assert all(np.isfinite(peaks)) and max(peaks) == 1.0


def test_a_long_recording_is_refused_from_its_header_without_decoding() -> None:
    two_hours = encode(np.zeros(7200 * 1000, dtype=np.int16), "FLAC", rate=1000)
    started = time.perf_counter()
    message = bad_input(peaks_from_audio, two_hours, "wedding.flac")
    assert time.perf_counter() - started < 0.5
    assert message == "audio 'wedding.flac' is 2:00:00 long, over the limit of 20:00"


def test_the_duration_limit_is_the_callers() -> None:
    audio = encode(loud_then_quiet(3.0), "WAV")
    assert "over the limit of 0:02" in bad_input(peaks_from_audio, audio, max_seconds=2)
    assert len(peaks_from_audio(audio, max_seconds=3)) == 1000


def test_an_oversized_audio_file_is_refused_before_reading() -> None:
    message = bad_input(peaks_from_audio, b"\0" * 2048, "big.wav", max_bytes=1024)
    assert "over the limit" in message and "big.wav" in message


@pytest.mark.parametrize(
    ("data", "name", "expected"),
    [
        (b"", "", "could not be decoded"),
        (b"garbage" * 100, "memo.wav", "audio 'memo.wav' could not be decoded"),
        (b"garbage" * 100, "memo.m4a", "M4A is not supported"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "cut.wav", "could not be decoded"),
    ],
    ids=["empty", "garbage", "unsupported-format", "truncated-header"],
)
def test_unreadable_audio_says_why(data: bytes, name: str, expected: str) -> None:
    assert expected in bad_input(peaks_from_audio, data, name)


# ------------------------------------------------------------------------------------ from image


def test_peaks_survive_a_round_trip_through_the_waveform_image() -> None:
    peaks = peaks_from_audio(sample_audio(seed=3, seconds=6.0), bins=160)
    recovered = peaks_from_image(waveform_png(peaks, bars=160), bins=160)
    assert np.abs(np.array(recovered) - np.array(peaks)).max() < 0.05


def test_an_opaque_waveform_image_in_any_colours_is_read() -> None:
    peaks = resample(peaks_from_audio(sample_audio(seed=4, seconds=4.0)), 80)
    transparent = Image.open(io.BytesIO(waveform_png(peaks, bars=80, color="#C0392B")))
    opaque = Image.new("RGB", transparent.size, "#2E4053")
    opaque.paste(transparent, mask=transparent)
    out = io.BytesIO()
    opaque.save(out, "JPEG", quality=90)
    recovered = peaks_from_image(out.getvalue(), bins=80)
    assert np.abs(np.array(recovered) - np.array(peaks)).max() < 0.05


def test_a_blank_waveform_image_is_refused() -> None:
    out = io.BytesIO()
    Image.new("RGBA", (400, 100), (0, 0, 0, 0)).save(out, "PNG")
    assert "blank" in bad_input(peaks_from_image, out.getvalue())


def test_a_huge_waveform_image_is_refused_from_its_header() -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 60_000, 1_000, 8, 6, 0, 0, 0)  # 60 MP of 40 allowed
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    png = b"\x89PNG\r\n\x1a\n" + body
    assert "over the limit" in bad_input(peaks_from_image, png)


def test_a_damaged_waveform_image_is_refused() -> None:
    assert "could not be read" in bad_input(peaks_from_image, b"\x89PNG\r\n\x1a\nbroken")


# ------------------------------------------------------------------------- resampling and images


def test_shrinking_keeps_each_groups_loudest_value() -> None:
    assert resample([0.1, 0.9, 0.2, 0.3, 0.0, 0.4], 3) == (0.9, 0.3, 0.4)


def test_stretching_interpolates() -> None:
    assert resample([0.0, 1.0], 3) == (0.0, 0.5, 1.0)
    assert resample([], 2) == (0.0, 0.0)


def test_regenerated_waveform_image_is_deterministic_from_audio_or_peaks() -> None:
    audio = sample_audio(seed=5, seconds=3.0)
    png = waveform_png(audio)
    assert png == waveform_png(audio) == waveform_png(peaks_from_audio(audio)) == sample_waveform_png(audio)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (1600, 400) and image.mode == "RGBA"


# ------------------------------------------------------------------------------ the sample makers


def test_sample_audio_is_deterministic_and_voice_like() -> None:
    audio = sample_audio(seed=7, seconds=5.0)
    assert audio == sample_audio(seed=7, seconds=5.0) != sample_audio(seed=8, seconds=5.0)
    info = soundfile.info(io.BytesIO(audio))
    assert info.format == "WAV" and info.duration == pytest.approx(5.0, abs=0.01)
    peaks = peaks_from_audio(audio, bins=100)
    assert sum(p < 0.05 for p in peaks) >= 5, "a voice pauses between words"


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "MP3"])
def test_sample_audio_in_other_formats(fmt: str) -> None:
    assert soundfile.info(io.BytesIO(sample_audio(seed=1, seconds=1.0, fmt=fmt))).format == fmt


def test_sample_photo_is_deterministic_in_size_and_format() -> None:
    photo = sample_photo(seed=2, size=(300, 200))
    assert photo == sample_photo(seed=2, size=(300, 200)) != sample_photo(seed=3, size=(300, 200))
    image = Image.open(io.BytesIO(photo))
    assert image.format == "JPEG" and image.size == (300, 200)
    assert Image.open(io.BytesIO(sample_photo(size=(30, 40), fmt="PNG"))).format == "PNG"
