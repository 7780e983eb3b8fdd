"""The files a template names, its fonts and its background: whether they are usable is decided here,
once, by loading them the way a render does.

The renderer loads them before it draws; the `assets` health check asks `template_asset_problems`,
which loads them the same way and turns each refusal into its message. A file the check passes is
a file the renderer can use, and the two can never disagree about what "broken" means.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from reportlab.lib.utils import ImageReader

from fulfilment.errors import StepError
from fulfilment.render.asset_errors import unreadable, unusable
from fulfilment.render.fonts import load_font
from fulfilment.render.images import JpegReader, embeddable_jpeg, printable
from fulfilment.templates import BACKGROUNDS_DIR, FONTS_DIR, Template


def font_path(assets_dir: Path, font: str) -> Path:
    return assets_dir / FONTS_DIR / font


def load_background(assets_dir: Path, template: Template) -> ImageReader | None:
    """The template's background image, ready for the page; None if it has only a colour."""
    if template.background.image is None:
        return None
    path = assets_dir / BACKGROUNDS_DIR / template.background.image
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise unusable("background", path, exc) from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # backgrounds are small; decoding all of it is the only proof it is whole
    except Exception as exc:
        raise unreadable("background", path, exc) from None
    jpeg = embeddable_jpeg(image, data)
    return ImageReader(printable(image)) if jpeg is None else JpegReader(jpeg)


def template_asset_problems(assets_dir: Path, template: Template) -> list[str]:
    """What is wrong with the files a template needs, one line each naming the file; [] if none."""
    fonts = [font_path(assets_dir, font) for font in template.fonts]
    loads: list[Callable[[], object]] = [functools.partial(load_font, path) for path in fonts]
    loads.append(functools.partial(load_background, assets_dir, template))
    problems = [_problem(load) for load in loads]
    return [p for p in problems if p is not None]


def _problem(load: Callable[[], object]) -> str | None:
    try:
        load()
    except StepError as error:
        return error.message
    return None
