"""Where a template's boxes land on the PDF page: millimetres from the trim's top-left corner, as
designers measure, turned into points from the bottom-left of the media box, as PDF draws.
"""

from __future__ import annotations

from reportlab.lib.units import mm

from fulfilment.templates import Box, Page

Rect = tuple[float, float, float, float]  # x, y, width, height in PDF points, origin bottom-left


def media_size(page: Page) -> tuple[float, float]:
    """The whole sheet in points: the trim plus the bleed on every side."""
    return (page.width_mm + 2 * page.bleed_mm) * mm, (page.height_mm + 2 * page.bleed_mm) * mm


def box_rect(page: Page, box: Box) -> Rect:
    """A template box (mm from the trim's top-left) as a PDF rectangle (points from bottom-left)."""
    bleed = page.bleed_mm
    top_from_bottom = page.height_mm + bleed - box.y_mm
    return (
        (box.x_mm + bleed) * mm,
        (top_from_bottom - box.height_mm) * mm,
        box.width_mm * mm,
        box.height_mm * mm,
    )
