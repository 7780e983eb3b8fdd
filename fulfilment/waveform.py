"""The sound's shape: peaks from the shop's waveform image or from the audio itself.

Peaks are plain tuples of floats in 0..1 (loudest = 1), left to right in time, so they pickle across
the render process pool. Both sources are bounded before anything large is decoded: an image's
pixel count is read from its header, an audio file's duration from its header, and audio is then
read in blocks, so a decompression bomb or a two-hour recording is refused cheaply as `bad_input`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import PurePath

import numpy as np
import soundfile
from PIL import Image, ImageDraw, UnidentifiedImageError

from fulfilment.errors import ErrorClass, StepError
from fulfilment.render.inputs import MAX_AUDIO_BYTES, MAX_AUDIO_SECONDS

log = logging.getLogger(__name__)

Peaks = tuple[float, ...]

DEFAULT_BINS = 1000
MAX_IMAGE_PIXELS = 40_000_000
AUDIO_FORMATS = ("WAV", "MP3", "OGG", "FLAC")

_BLOCK_FRAMES = 1 << 16
# How far a pixel's colour must be from the background to count as part of the drawn wave.
_INK_DISTANCE = 48


def peaks_from_audio(
    data: bytes,
    name: str = "",
    *,
    bins: int = DEFAULT_BINS,
    max_bytes: int = MAX_AUDIO_BYTES,
    max_seconds: float = MAX_AUDIO_SECONDS,
) -> Peaks:
    """Loudest sample per time slice, from WAV, MP3, OGG or FLAC bytes (`name` only improves errors)."""
    label = _audio_label(name)
    if len(data) > max_bytes:
        raise StepError(ErrorClass.BAD_INPUT, f"{label} is {_mib(len(data))}, over the limit of {_mib(max_bytes)}")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            _check_duration(label, sound.frames, sound.samplerate, max_seconds)
            peaks = _stream_peaks(sound, bins, int(max_seconds * sound.samplerate))
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise StepError(ErrorClass.BAD_INPUT, f"{label} could not be decoded ({_format_hint(name)}): {exc}") from None
    if not peaks.any():
        log.info("%s is silent; drawing a flat waveform", label)
    return _normalised(peaks)


def peaks_from_image(data: bytes, *, bins: int = DEFAULT_BINS, max_pixels: int = MAX_IMAGE_PIXELS) -> Peaks:
    """Recover the amplitude of each column of a drawn waveform (bars or outline, any colours)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise StepError(
                    ErrorClass.BAD_INPUT,
                    f"waveform image is {width}x{height} pixels, over the limit of {max_pixels:,}",
                )
            ink = _ink_mask(image)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise StepError(ErrorClass.BAD_INPUT, f"waveform image could not be read: {exc}") from None
    if not ink.any():
        raise StepError(ErrorClass.BAD_INPUT, "waveform image is blank: no wave drawn on it")
    rows = np.arange(height)[:, None]
    top = np.where(ink, rows, height).min(axis=0)
    bottom = np.where(ink, rows, -1).max(axis=0)
    amplitude = np.where(bottom >= top, (bottom - top + 1) / height, 0.0)
    return resample(_normalised(amplitude), bins)


def resample(peaks: Sequence[float], count: int) -> Peaks:
    """`count` values; shrinking keeps each group's loudest value, so short sharp sounds survive."""
    values = np.asarray(peaks, dtype=np.float64)
    if len(values) == 0:
        return (0.0,) * count
    if len(values) >= count:
        starts = (np.arange(count) * len(values)) // count
        return tuple(float(v) for v in np.maximum.reduceat(values, starts))
    positions = np.linspace(0, len(values) - 1, count)
    return tuple(float(v) for v in np.interp(positions, np.arange(len(values)), values))


def waveform_png(
    source: Sequence[float] | bytes,
    *,
    audio_name: str = "",
    size: tuple[int, int] = (1600, 400),
    color: str = "#1E1E1E",
    bars: int = 160,
) -> bytes:
    """A mirrored-bar waveform on a transparent background, like the shop's, from peaks or audio.

    Used to replace a lost waveform image so the order can go on; deterministic for the same input.
    """
    peaks = peaks_from_audio(source, audio_name) if isinstance(source, bytes) else tuple(source)
    width, height = size
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    fill = tuple(int(color[i : i + 2], 16) for i in (1, 3, 5)) + (255,)
    slot = width / bars
    for i, peak in enumerate(resample(peaks, bars)):
        half = max(1.0, peak * (height - 2) / 2)
        x0 = round(i * slot + slot * 0.15)
        x1 = max(x0, round((i + 1) * slot - slot * 0.15) - 1)
        draw.rectangle((x0, round(height / 2 - half), x1, round(height / 2 + half) - 1), fill=fill)
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return out.getvalue()


def _check_duration(label: str, frames: int, samplerate: int, max_seconds: float) -> None:
    if samplerate <= 0 or frames <= 0:
        raise StepError(ErrorClass.BAD_INPUT, f"{label} has no samples")
    seconds = frames / samplerate
    if seconds > max_seconds:
        raise StepError(
            ErrorClass.BAD_INPUT,
            f"{label} is {_clock(seconds)} long, over the limit of {_clock(max_seconds)}",
        )


def _stream_peaks(sound: soundfile.SoundFile, bins: int, max_frames: int) -> np.ndarray:
    """Max |sample| per bin, reading one block at a time so memory stays flat for long files."""
    frames = sound.frames
    peaks = np.zeros(bins, dtype=np.float64)
    position = 0
    for block in sound.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
        loudest = np.abs(block).max(axis=1)
        index = np.minimum(((position + np.arange(len(loudest))) * bins) // frames, bins - 1)
        starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
        touched = index[starts]  # distinct bins, in order
        peaks[touched] = np.maximum(peaks[touched], np.maximum.reduceat(loudest, starts))
        position += len(loudest)
        if position > max_frames:  # a header that understated the length
            raise StepError(ErrorClass.BAD_INPUT, "audio is longer than its header says, and over the limit")
    return peaks


def _ink_mask(image: Image.Image) -> np.ndarray:
    """True where the wave is drawn: opaque pixels, or pixels unlike the border's colour."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if has_alpha:
        alpha = np.asarray(image.convert("RGBA"), dtype=np.uint8)[..., 3]
        if alpha.min() < 128:  # a truly transparent background, not just an alpha channel
            return alpha >= 128
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    ink: np.ndarray = np.abs(rgb - background).max(axis=2) > _INK_DISTANCE
    return ink


def _normalised(values: np.ndarray) -> Peaks:
    # Float WAV files can hold NaN or infinity; they are damage, not loudness.
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max()) if len(values) else 0.0
    scaled = values / top if top > 0 else values
    return tuple(float(v) for v in np.clip(scaled, 0.0, 1.0))


def _audio_label(name: str) -> str:
    return f"audio {PurePath(name).name!r}" if name else "audio"


def _format_hint(name: str) -> str:
    suffix = PurePath(name).suffix.lstrip(".").upper()
    if suffix and suffix not in AUDIO_FORMATS + ("OGA", "WAVE"):
        return f"{suffix} is not supported; send one of {', '.join(AUDIO_FORMATS)}"
    return f"expected one of {', '.join(AUDIO_FORMATS)}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _clock(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
