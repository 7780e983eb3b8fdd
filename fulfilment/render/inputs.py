"""What a render is given and what it may take on: plain, picklable data, importing nothing heavy.

The daemon's own process builds these (fulfilment.steps, healer.render.pool, the assets check) and
hands them to a render process; importing this module must not pull in ReportLab, Pillow or numpy,
which only render processes hold (tests/healer/test_footprint.py watches that).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fulfilment.errors import ErrorClass, StepError

# The largest recording a render decodes, in bytes and in seconds (fulfilment.waveform reads audio
# in blocks up to these).
MAX_AUDIO_BYTES = 200 * 2**20
MAX_AUDIO_SECONDS = 20 * 60.0


@dataclass(frozen=True)
class PosterInputs:
    template: str  # template name, e.g. "a4-portrait"
    title: str
    subtitle: str
    # Megabytes each: kept out of the repr so a log line or a traceback stays readable.
    photo: bytes = field(repr=False)
    waveform_image: bytes | None = field(repr=False)  # the shop's waveform PNG, if it still exists
    audio: bytes | None = field(repr=False)  # the customer's sound (WAV/MP3/OGG/FLAC)
    audio_name: str = ""  # original key/file name, a hint for the format


@dataclass(frozen=True)
class RenderLimits:
    """What one render may take on; beyond these an input is refused as `bad_input`."""

    max_photo_bytes: int = 50 * 2**20
    # Today's largest phone photos are 200 MP. Checked from the header; a JPEG is never decoded at
    # full size (embedded as it is, checked at 1/8 scale), and a PNG or WebP too large to decode
    # under the memory cap is stopped by the cap. Pillow's own check (DecompressionBombError at
    # twice its MAX_IMAGE_PIXELS, 89 MP by default) must be raised to this in the process that
    # renders, or it refuses such a photo first: healer.render.process does.
    max_photo_pixels: int = 200_000_000
    max_audio_bytes: int = MAX_AUDIO_BYTES
    max_audio_seconds: float = MAX_AUDIO_SECONDS
    preview_photo_px: int = 1600  # long side of the photo in a preview
    # The memory cap of the process the render runs in, enforced by whoever runs it; None: none.
    # With a cap, running out of memory is the input's fault (`bad_input`); without one, the
    # machine's (`resources`, retried).
    memory_mb: int | None = None


def out_of_memory(limits: RenderLimits, doing: str) -> StepError:
    """A MemoryError while `doing` something, classified by whether a cap of ours caused it."""
    if limits.memory_mb is None:  # no cap of ours: the machine itself is short of memory
        return StepError(ErrorClass.RESOURCES, f"out of memory while {doing}")
    return StepError(
        ErrorClass.BAD_INPUT,
        f"{doing} went over the render memory limit of {limits.memory_mb} MB: "
        "the photo or audio needs more memory than a render may use",
    )
