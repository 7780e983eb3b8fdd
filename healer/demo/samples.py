"""Deterministic sample uploads for the demo, the benchmark and the tests.

Everything is generated from a seed, so the same call returns the same bytes on every run and no
customer data or downloaded media is ever needed. The photo is a small landscape (sky, sun, hills)
with film grain, so it compresses like a real photo; the audio is a voice-like murmur of syllables,
so its waveform has the peaks and pauses of a real voice note. For benchmarks at a customer's size:
`sample_phone_photo` (a 12 MP phone shot, its detail and sensor noise included, so it weighs what a
real one does: about 4 MB as a JPEG) and `sample_song` (three minutes of stereo music, MP3).
"""

from __future__ import annotations

import io

import numpy as np
import soundfile
from PIL import Image

from fulfilment.waveform import waveform_png

_PALETTES = (
    # sky top, sky horizon, sun, far hills, near hills
    ("#2B3A67", "#F4A261", "#FFE8B0", "#6D597A", "#355070"),
    ("#0B3954", "#BFD7EA", "#FFFFFF", "#087E8B", "#0B3954"),
    ("#5C2A4D", "#F7B267", "#FFF1C1", "#B56576", "#3D1A36"),
    ("#1D3557", "#A8DADC", "#F1FAEE", "#457B9D", "#1D3557"),
)


def sample_photo(seed: int = 0, size: tuple[int, int] = (1200, 1600), fmt: str = "JPEG") -> bytes:
    """A landscape at `size` (width, height), encoded as `fmt` (any format Pillow writes)."""
    rng = np.random.default_rng(seed)
    pixels = _landscape(rng, seed, size)
    pixels += rng.normal(0.0, 5.0, size=(size[1], size[0], 1)).astype(np.float32)  # film grain
    return _encode(pixels, fmt)


def sample_phone_photo(seed: int = 0, size: tuple[int, int] = (4032, 3024), fmt: str = "JPEG") -> bytes:
    """A phone camera's 12 MP photo: the landscape with texture at several scales and per-channel
    sensor noise. Film grain alone compresses too well (about 2.9 MB at 4032x3024, quality 90); a
    real shot has detail everywhere and weighs 3-5 MB, and the bytes are what S3 and the render move."""
    rng = np.random.default_rng(seed)
    pixels = _landscape(rng, seed, size)
    width, height = size
    for cell, amplitude in ((3, 10.0), (9, 6.0), (27, 5.0)):  # fine to coarse: leaves, grass, clouds
        coarse = rng.normal(0.0, amplitude, size=(height // cell + 1, width // cell + 1)).astype(np.float32)
        pixels += np.asarray(Image.fromarray(coarse, "F").resize(size, Image.Resampling.BILINEAR))[..., None]
    pixels += rng.normal(0.0, 6.0, size=(height, width, 1)).astype(np.float32)  # luminance noise
    pixels += rng.normal(0.0, 3.0, size=(height, width, 3)).astype(np.float32)  # colour noise
    return _encode(pixels, fmt)


def sample_song(seed: int = 0, seconds: float = 180.0, *, sample_rate: int = 44100) -> bytes:
    """Stereo music as a 160 kbit/s MP3 (a song as customers upload it, 3.6 MB for three minutes):
    a kick on each beat, a chord per bar, hi-hats, and louder choruses between quieter verses, so
    its waveform is dense like a song's rather than a voice's syllables and pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(max(1, int(seconds * sample_rate)), dtype=np.float32) / sample_rate
    beat = np.float32(60.0 / rng.uniform(90, 128))
    since_beat = (t % beat) / beat
    bar = (t // (4 * beat)).astype(np.int64)
    root = (110 * 2 ** (rng.choice([0, 3, 5, 7, 8, 10], size=int(bar.max()) + 1) / 12)).astype(np.float32)[bar]
    chord = sum(np.sin(2 * np.pi * root * ratio * t) / (k + 1) for k, ratio in enumerate((1.0, 1.26, 1.5, 2.0)))
    kick = np.sin(2 * np.pi * 55 * t) * np.exp(-since_beat * 12)
    hats = rng.normal(0.0, 0.05, size=t.size).astype(np.float32) * np.exp(-((2 * since_beat) % 1) * 8)
    loudness = np.where((t // 20).astype(np.int64) % 2 == 1, 1.0, 0.55).astype(np.float32)  # chorus, verse
    mono = (0.5 * kick + 0.25 * chord + hats) * loudness
    stereo = np.stack([mono + 0.02 * np.roll(mono, 300), mono + 0.02 * np.roll(mono, -300)], axis=1)
    stereo *= 0.9 / max(float(np.abs(stereo).max()), 1e-9)
    out = io.BytesIO()
    # Constant bitrate: libsndfile's default is a variable one that makes smaller files than a song's.
    soundfile.write(out, stereo, sample_rate, format="MP3", compression_level=0.5, bitrate_mode="CONSTANT")
    return out.getvalue()


def sample_audio(seed: int = 0, seconds: float = 5.0, *, sample_rate: int = 22050, fmt: str = "WAV") -> bytes:
    """A voice-like recording: syllables of a gliding, harmonic tone, grouped into phrases."""
    rng = np.random.default_rng(seed)
    total = max(1, int(seconds * sample_rate))
    signal = np.zeros(total, dtype=np.float32)
    position = int(rng.uniform(0.05, 0.2) * sample_rate)
    while position < total:
        length = int(rng.uniform(0.12, 0.38) * sample_rate)
        syllable = _syllable(rng, length, sample_rate)[: total - position]
        signal[position : position + len(syllable)] += syllable
        pause = rng.uniform(0.35, 0.8) if rng.random() < 0.18 else rng.uniform(0.03, 0.12)
        position += length + int(pause * sample_rate)
    signal += rng.normal(0.0, 0.004, size=total).astype(np.float32)  # room noise
    signal *= 0.8 / max(float(np.abs(signal).max()), 1e-9)
    out = io.BytesIO()
    subtype = "PCM_16" if fmt.upper() in ("WAV", "FLAC") else None
    soundfile.write(out, signal, sample_rate, format=fmt.upper(), subtype=subtype)
    return out.getvalue()


def sample_waveform_png(audio: bytes) -> bytes:
    """The shop's waveform image for `audio`, as the upload page would have drawn it."""
    return waveform_png(audio)


def _landscape(rng: np.random.Generator, seed: int, size: tuple[int, int]) -> np.ndarray:
    """Sky, sun and two ranges of hills, as float RGB pixels (height, width, 3)."""
    width, height = size
    sky_top, horizon, sun, far, near = (_rgb(c) for c in _PALETTES[seed % len(_PALETTES)])
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    pixels = np.broadcast_to(sky_top + (horizon - sky_top) * np.clip(y / 0.62, 0, 1), (height, width, 3)).copy()
    _paint_sun(pixels, rng, sun)
    for depth, color in ((0.0, far), (1.0, near)):
        _paint_hills(pixels, rng, color, depth)
    return pixels


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    out = io.BytesIO()
    options = {"quality": 90} if fmt.upper() in ("JPEG", "JPG") else {}
    image.save(out, fmt, **options)
    return out.getvalue()


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float32)


def _paint_sun(pixels: np.ndarray, rng: np.random.Generator, color: np.ndarray) -> None:
    height, width, _ = pixels.shape
    cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.3, 0.45) * height
    radius = rng.uniform(0.07, 0.12) * min(width, height)
    ys, xs = np.ogrid[0:height, 0:width]
    distance = np.hypot(xs - cx, ys - cy, dtype=np.float32) / radius
    glow = np.clip(1.6 - distance, 0, 1) ** 2 * 0.45 + (distance < 1.0) * 0.55
    pixels += glow[..., None] * (color - pixels)


def _paint_hills(pixels: np.ndarray, rng: np.random.Generator, color: np.ndarray, depth: float) -> None:
    height, width, _ = pixels.shape
    x = np.linspace(0, 1, width, dtype=np.float32)
    ridge = 0.58 + depth * 0.12 + np.zeros_like(x)
    for _ in range(3):
        ridge += rng.uniform(0.01, 0.05) * np.sin(2 * np.pi * (rng.uniform(0.5, 3) * x + rng.uniform(0, 1)))
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    land = y > ridge[None, :]
    shade = (1.0 - 0.25 * np.clip(y - ridge[None, :], 0, 1))[..., None]  # darker towards the viewer
    pixels[land] = (color * shade)[land]


def _syllable(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    t = np.arange(length, dtype=np.float32) / sample_rate
    f0 = rng.uniform(110, 230) * (1 + rng.uniform(-0.15, 0.15) * t / max(t[-1], 1e-3))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 7))
    envelope = np.clip(np.sin(np.pi * np.linspace(0, 1, length, dtype=np.float32)), 0, 1) ** 1.5
    samples: np.ndarray = (tone * envelope * rng.uniform(0.3, 1.0)).astype(np.float32)
    return samples
