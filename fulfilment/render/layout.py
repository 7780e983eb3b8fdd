"""Customer text set into a template's box: cleaned, checked against the font, sized and wrapped.

`fit_text` decides the size and the lines before anything is drawn, so text that cannot be set (no
glyph in the font, right-to-left script, too long for the box) is refused as `bad_input` with a
message the customer can act on. The page drawing (`fulfilment.render.draw`) only places the lines.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics

from fulfilment.errors import ErrorClass, StepError
from fulfilment.templates import Template, TextSpec

LEADING = 1.2  # line pitch as a multiple of the font size


@dataclass(frozen=True)
class TextLayout:
    font: str  # registered ReportLab font name
    size: float  # points
    lines: tuple[str, ...]


def clean_text(text: str) -> str:
    """Customer text as it will be set: composed accents, single spaces, no invisible characters."""
    text = unicodedata.normalize("NFC", text)
    visible = "".join(ch for ch in text if not _invisible(ch))
    return " ".join(visible.split())


def _invisible(ch: str) -> bool:
    # Control and format characters (zero-width space, soft hyphen, BOM, joiners) and emoji
    # variation selectors draw nothing; keeping them would only trip the glyph check.
    return (unicodedata.category(ch) in ("Cc", "Cf") and not ch.isspace()) or 0xFE00 <= ord(ch) <= 0xFE0F


def check_drawable(text: str, font: str, part: str, font_file: str) -> None:
    """Refuse text the font has no glyph for, rather than print empty boxes on a paid poster."""
    rtl = sorted({ch for ch in text if unicodedata.bidirectional(ch) in ("R", "AL")})
    if rtl:
        raise StepError(
            ErrorClass.BAD_INPUT,
            f"{part} contains right-to-left text ({_describe(rtl)}), which this renderer cannot set",
        )
    glyphs = pdfmetrics.getFont(font).face.charToGlyph
    missing = sorted({ch for ch in text if ord(ch) not in glyphs})
    if missing:
        raise StepError(
            ErrorClass.BAD_INPUT,
            f"{part} contains characters the font {font_file} cannot draw: {_describe(missing)}",
        )


def _describe(chars: list[str]) -> str:
    shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in chars[:5])
    return shown + (f" and {len(chars) - 5} more" if len(chars) > 5 else "")


def fit_text(text: str, font: str, template: Template, spec: TextSpec, part: str) -> TextLayout:
    """Largest size that fits the box on one line; below `min_pt`, wrap onto up to `max_lines`."""
    text = clean_text(text)
    if spec.uppercase:
        text = text.upper()
    check_drawable(text, font, part, spec.font)
    if not text:
        return TextLayout(font, spec.max_pt, ())
    width, height = spec.box.width_mm * mm, spec.box.height_mm * mm
    natural = max(_line_width(text, font, 1.0, spec), 1e-6)  # combining marks alone have no width
    one_line = min(spec.max_pt, width / natural, height / block_height(font, 1.0, 1))
    if one_line >= spec.min_pt:
        return TextLayout(font, math.floor(one_line * 10) / 10, (text,))
    size = spec.max_pt
    while size >= spec.min_pt:
        lines = _wrap(text, font, size, width, spec)
        if len(lines) <= spec.max_lines and block_height(font, size, len(lines)) <= height:
            return TextLayout(font, size, lines)
        size -= 0.5
    raise StepError(
        ErrorClass.BAD_INPUT,
        f"{part} is too long for template {template.name!r}: {len(text)} characters do not fit in "
        f"{spec.max_lines} line(s) at {spec.min_pt:g} pt",
    )


def _line_width(line: str, font: str, size: float, spec: TextSpec) -> float:
    return float(pdfmetrics.stringWidth(line, font, size)) + spec.tracking * size * (len(line) - 1)


def block_height(font: str, size: float, lines: int) -> float:
    face = pdfmetrics.getFont(font).face
    return float(face.ascent - face.descent) / 1000 * size + (lines - 1) * LEADING * size


def _wrap(text: str, font: str, size: float, width: float, spec: TextSpec) -> tuple[str, ...]:
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if _line_width(candidate, font, size, spec) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        pieces = _break_word(word, font, size, width, spec)  # a word wider than the box
        lines.extend(pieces[:-1])
        current = pieces[-1]
    lines.append(current)
    return tuple(lines)


def _break_word(word: str, font: str, size: float, width: float, spec: TextSpec) -> list[str]:
    pieces = [""]
    for ch in word:
        if pieces[-1] and _line_width(pieces[-1] + ch, font, size, spec) > width:
            pieces.append("")
        pieces[-1] += ch
    return pieces
