"""The page itself: one PDF page drawn with ReportLab's canvas from what the other modules prepared.

Background (colour, then image covering the bleed), photo, waveform, title and subtitle, and on a
preview a diagonal watermark. It only places what the other modules prepared: text already laid
out, images already checked. The same inputs always give the same bytes (fixed dates and ids,
`invariant=1`).
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
from collections.abc import Iterator

from reportlab import rl_config
from reportlab.lib.colors import Color, HexColor
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfgen.canvas import Canvas

from fulfilment.render.geometry import Rect, box_rect, media_size
from fulfilment.render.layout import LEADING, TextLayout, block_height
from fulfilment.render.photo import Photo
from fulfilment.render.waveform_drawing import draw_waveform
from fulfilment.templates import Align, Fit, PhotoSpec, Template, TextSpec
from fulfilment.waveform import Peaks

WATERMARK_TEXT = "PREVIEW"
_RL_CONFIG_LOCK = threading.Lock()


def draw_page(
    template: Template,
    background: ImageReader | None,
    photo: Photo,
    peaks: Peaks,
    title: TextLayout,
    subtitle: TextLayout,
    preview: bool,
) -> bytes:
    """The poster as a one-page PDF: final, or a preview with the watermark across it."""
    media = media_size(template.page)
    out = io.BytesIO()
    with _binary_streams():
        canvas = _new_canvas(out, template, media, title)
        _draw_background(canvas, template, background, media)
        _draw_photo(canvas, photo, box_rect(template.page, template.photo.box), template.photo)
        draw_waveform(canvas, peaks, box_rect(template.page, template.waveform.box), template.waveform)
        _draw_text(canvas, title, box_rect(template.page, template.title.box), template.title)
        _draw_text(canvas, subtitle, box_rect(template.page, template.subtitle.box), template.subtitle)
        if preview:
            _draw_watermark(canvas, media, title.font)
        canvas.showPage()
        canvas.save()
    return out.getvalue()


@contextlib.contextmanager
def _binary_streams() -> Iterator[None]:
    """Write PDF streams as binary, not ASCII85 (ReportLab's default, read when objects are made).

    ASCII85 makes the file a quarter larger, and ReportLab's pure-Python encoder spends about a
    second on a 12 MP JPEG and five on a 12 MP PNG. The setting is process-global, so it is set
    only while drawing, under a lock, and put back.
    """
    with _RL_CONFIG_LOCK:
        saved = rl_config.useA85
        rl_config.useA85 = 0
        try:
            yield
        finally:
            rl_config.useA85 = saved


def _new_canvas(out: io.BytesIO, template: Template, media: tuple[float, float], title: TextLayout) -> Canvas:
    bleed = template.page.bleed_mm * mm
    # The initial font is ours, so the page never references an unembedded Helvetica.
    canvas = Canvas(out, pagesize=media, invariant=1, pageCompression=1, initialFontName=title.font)
    canvas.setTrimBox((bleed, bleed, media[0] - bleed, media[1] - bleed))
    canvas.setBleedBox((0, 0, media[0], media[1]))
    canvas.setTitle(" ".join(title.lines) or template.label)
    canvas.setSubject(template.label)
    canvas.setCreator("healer")
    return canvas


def _draw_background(
    canvas: Canvas, template: Template, background: ImageReader | None, media: tuple[float, float]
) -> None:
    canvas.setFillColor(HexColor(template.background.color))
    canvas.rect(0, 0, media[0], media[1], stroke=0, fill=1)
    if background is not None:
        width, height = background.getSize()
        _place_image(canvas, background, (width, height), 1, (0, 0, media[0], media[1]), Fit.COVER, 0.0)


def _draw_photo(canvas: Canvas, photo: Photo, rect: Rect, spec: PhotoSpec) -> None:
    _place_image(canvas, photo.reader, photo.upright_size, photo.orientation, rect, spec.fit, spec.radius_mm * mm)


# How the unit square of the stored image maps onto the upright picture, per EXIF orientation:
# (a, b, c, d, e, f) with x' = a*x + c*y + e and y' = b*x + d*y + f, in PDF's y-up coordinates.
_ORIENTATIONS: dict[int, tuple[float, float, float, float, float, float]] = {
    1: (1, 0, 0, 1, 0, 0),
    2: (-1, 0, 0, 1, 1, 0),  # mirrored left-right
    3: (-1, 0, 0, -1, 1, 1),  # upside down
    4: (1, 0, 0, -1, 0, 1),  # mirrored top-bottom
    5: (0, -1, -1, 0, 1, 1),  # transposed
    6: (0, -1, 1, 0, 0, 1),  # turned: needs a quarter turn clockwise
    7: (0, 1, 1, 0, 0, 0),  # transversed
    8: (0, 1, -1, 0, 1, 0),  # turned: needs a quarter turn anticlockwise
}


def _place_image(
    canvas: Canvas,
    reader: ImageReader,
    upright: tuple[int, int],
    orientation: int,
    rect: Rect,
    fit: Fit,
    radius: float,
) -> None:
    """Draw an image into `rect` without distortion, cropping (cover) or letterboxing (contain)."""
    x, y, width, height = rect
    choose = max if fit is Fit.COVER else min
    scale = choose(width / upright[0], height / upright[1])
    drawn_w, drawn_h = upright[0] * scale, upright[1] * scale
    canvas.saveState()
    clip = canvas.beginPath()
    if radius > 0:
        clip.roundRect(x, y, width, height, radius)
    else:
        clip.rect(x, y, width, height)
    canvas.clipPath(clip, stroke=0, fill=0)
    canvas.translate(x + (width - drawn_w) / 2, y + (height - drawn_h) / 2)
    canvas.scale(drawn_w, drawn_h)
    canvas.transform(*_ORIENTATIONS[orientation])
    canvas.drawImage(reader, 0, 0, 1, 1, mask="auto")
    canvas.restoreState()



def _draw_text(canvas: Canvas, layout: TextLayout, rect: Rect, spec: TextSpec) -> None:
    if not layout.lines:
        return
    x, y, width, height = rect
    face = pdfmetrics.getFont(layout.font).face
    block = block_height(layout.font, layout.size, len(layout.lines))
    baseline = y + (height + block) / 2 - face.ascent / 1000 * layout.size  # block centred in the box
    char_space = spec.tracking * layout.size
    canvas.saveState()
    canvas.setFont(layout.font, layout.size)
    canvas.setFillColor(HexColor(spec.color))
    for line in layout.lines:
        # drawString and friends write the text as it is: nothing in it is read as markup.
        if spec.align is Align.LEFT:
            canvas.drawString(x, baseline, line, charSpace=char_space)
        elif spec.align is Align.RIGHT:
            canvas.drawRightString(x + width, baseline, line, charSpace=char_space)
        else:
            canvas.drawCentredString(x + width / 2, baseline, line, charSpace=char_space)
        baseline -= LEADING * layout.size
    canvas.restoreState()


def _draw_watermark(canvas: Canvas, media: tuple[float, float], font: str) -> None:
    """Rows of PREVIEW across the whole page along its diagonal: no crop of the page escapes it."""
    width, height = media
    diagonal = math.hypot(width, height)
    size = diagonal / 14
    word_width = pdfmetrics.stringWidth(WATERMARK_TEXT, font, size) + size
    canvas.saveState()
    canvas.setFillColor(Color(0.5, 0.5, 0.5, alpha=0.35))
    canvas.setFont(font, size)
    canvas.translate(width / 2, height / 2)
    canvas.rotate(math.degrees(math.atan2(height, width)))
    rows = int(diagonal / (size * 2.6) / 2) + 1
    per_row = int(diagonal / word_width / 2) + 1
    for row in range(-rows, rows + 1):
        shift = (row % 2) * word_width / 2  # stagger rows like bricks
        for col in range(-per_row, per_row + 1):
            canvas.drawCentredString(col * word_width + shift, row * size * 2.6 - size * 0.35, WATERMARK_TEXT)
    canvas.restoreState()
