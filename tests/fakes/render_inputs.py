"""Small render inputs made with nothing heavier than Pillow, for processes that must start fast
(tests/healer/render_harness.py) as much as for tests: healer.demo.samples, the realistic ones,
imports the whole command line with the demo."""

from __future__ import annotations

import io
import math
import struct
import wave

from PIL import Image


def endless_title() -> str:
    """Customer text of 4 MB (the title column is unbounded): fitting it tries every font size down
    to the minimum, a couple of minutes of pure CPU before it is refused as too long."""
    return "Zoë & Ömer " * 400_000


def tiny_photo() -> bytes:
    """A 48x64 PNG: a photo the renderer accepts, at next to no cost."""
    out = io.BytesIO()
    Image.new("RGB", (48, 64), (200, 120, 80)).save(out, "PNG")
    return out.getvalue()


def tiny_wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A mono 16-bit WAV of a rising tone, so its waveform has something to draw."""
    frames = b"".join(
        struct.pack("<h", round(12_000 * (n / (rate * seconds)) * math.sin(n / 7))) for n in range(round(rate * seconds))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(rate)
        sound.writeframes(frames)
    return out.getvalue()
