"""The poster PDF: one page drawn with ReportLab's canvas from a template, a photo and a waveform.

`render_poster` is the entry point; it runs in a process pool, so it takes and returns plain,
picklable data, and only `StepError` ever leaves it:
- `asset_missing` when a font, template or background file is missing or unreadable (names the path),
- `render_error` for an invalid template (names file and field) or a failure inside ReportLab,
- `bad_input` for what the customer sent: a damaged or oversized photo or audio, a photo that is
  not a JPEG, PNG or WebP, text the font cannot draw, no waveform source at all, or a render that
  runs out of the memory its process may use (`RenderLimits.memory_mb`).

The memory cap and the time limit themselves are the caller's to enforce (healer runs each render
in a process with an rlimit and a deadline); this package only names the cap when a render runs
into it. The same inputs always give the same bytes, so a render repeated after a crash overwrites
the file with an identical one.

One concern per module, in the order a render uses them:
- `assets`: the template's fonts (`fonts`) and background, loaded, and judged for the assets check
  (`asset_errors`: the messages naming a file that cannot be used),
- `layout`: the customer's text, cleaned, checked against the font, sized and wrapped,
- `photo`: the customer's photo, checked from its header, prepared for print or preview
  (`images`: how an image is handed to ReportLab, shared with the background),
- `waveform_drawing`: the waveform's peaks and their bars or outline,
- `draw`: the page (`geometry`: where a template's millimetres land in PDF points).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from fulfilment.errors import ErrorClass, StepError
from fulfilment.render.assets import font_path, load_background
from fulfilment.render.draw import draw_page
from fulfilment.render.fonts import load_font
from fulfilment.render.layout import fit_text
from fulfilment.render.photo import load_photo
from fulfilment.render.waveform_drawing import poster_peaks
from fulfilment.templates import load_template
from fulfilment.waveform import MAX_AUDIO_BYTES, MAX_AUDIO_SECONDS

log = logging.getLogger(__name__)


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


def render_poster(
    assets_dir: Path, inputs: PosterInputs, *, preview: bool, limits: RenderLimits = RenderLimits()
) -> bytes:
    """The poster as PDF bytes: final (for print) or preview (watermarked, lighter)."""
    started = time.perf_counter()
    try:
        pdf = _render(Path(assets_dir), inputs, preview, limits)
    except StepError:
        raise
    except MemoryError:
        raise out_of_memory(limits, "rendering the poster") from None
    except Exception as exc:
        log.exception("renderer failed on template %s", inputs.template)
        raise StepError(ErrorClass.RENDER_ERROR, f"renderer failed: {type(exc).__name__}: {exc}") from exc
    log.debug(
        "rendered %s %s in %.2fs, %d bytes",
        inputs.template, "preview" if preview else "final", time.perf_counter() - started, len(pdf),
    )
    return pdf


def out_of_memory(limits: RenderLimits, doing: str) -> StepError:
    """A MemoryError while `doing` something, classified by whether a cap of ours caused it."""
    if limits.memory_mb is None:  # no cap of ours: the machine itself is short of memory
        return StepError(ErrorClass.RESOURCES, f"out of memory while {doing}")
    return StepError(
        ErrorClass.BAD_INPUT,
        f"{doing} went over the render memory limit of {limits.memory_mb} MB: "
        "the photo or audio needs more memory than a render may use",
    )


def _render(assets_dir: Path, inputs: PosterInputs, preview: bool, limits: RenderLimits) -> bytes:
    template = load_template(assets_dir, inputs.template)
    title_font = load_font(font_path(assets_dir, template.title.font))
    subtitle_font = load_font(font_path(assets_dir, template.subtitle.font))
    background = load_background(assets_dir, template)
    title = fit_text(inputs.title, title_font, template, template.title, "title")
    subtitle = fit_text(inputs.subtitle, subtitle_font, template, template.subtitle, "subtitle")
    photo = load_photo(inputs.photo, limits, preview=preview, spec=template.photo)
    peaks = poster_peaks(inputs, limits)
    return draw_page(template, background, photo, peaks, title, subtitle, preview)
