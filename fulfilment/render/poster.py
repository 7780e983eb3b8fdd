"""`render_poster`: the poster PDF drawn from a template, a photo and a waveform (see fulfilment.render).

Imports ReportLab, Pillow and numpy: only render processes, and commands that render in their own
process, import it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fulfilment.errors import ErrorClass, StepError
from fulfilment.render.assets import font_path, load_background
from fulfilment.render.draw import draw_page
from fulfilment.render.fonts import load_font
from fulfilment.render.inputs import PosterInputs, RenderLimits, out_of_memory
from fulfilment.render.layout import fit_text
from fulfilment.render.photo import load_photo
from fulfilment.render.waveform_drawing import poster_peaks
from fulfilment.templates import load_template

log = logging.getLogger(__name__)


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
