"""The customer's photo, checked from its header before anything is decoded, then prepared for the page.

A photo's format and pixel count are read from its first bytes (`fulfilment.photo_header`) before
Pillow or any decoder sees the file, so a decompression bomb costs a few bytes of parsing. A final
embeds the customer's JPEG as it is; a preview gets a downscaled copy, so a preview is no print master.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError
from reportlab.lib.utils import ImageReader

from fulfilment.errors import ErrorClass, StepError
from fulfilment.photo_header import PhotoHeader, read_photo_header
from fulfilment.render.images import JpegReader, embeddable_jpeg, printable
from fulfilment.templates import Fit, PhotoSpec

if TYPE_CHECKING:  # the package imports this module; RenderLimits is only read here
    from fulfilment.render import RenderLimits

_PREVIEW_JPEG_QUALITY = 80
PRINT_DPI = 300  # what a print needs of a photo; a JPEG re-encoded for the page is decoded no finer


@dataclass(frozen=True)
class Photo:
    reader: ImageReader
    width: int  # stored pixels, before EXIF orientation
    height: int
    orientation: int  # EXIF orientation 1..8

    @property
    def upright_size(self) -> tuple[int, int]:
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)


def load_photo(data: bytes, limits: RenderLimits, *, preview: bool, spec: PhotoSpec | None = None) -> Photo:
    """Check the photo from its header before anything is decoded, then prepare it for the page.

    `spec` is the template's photo box: a JPEG that cannot be embedded as it is gets decoded only
    at the resolution the box needs in print.
    """
    if not data:
        raise StepError(ErrorClass.BAD_INPUT, "photo is empty")
    if len(data) > limits.max_photo_bytes:
        raise StepError(
            ErrorClass.BAD_INPUT,
            f"photo is {len(data) / 2**20:.1f} MiB, over the limit of {limits.max_photo_bytes / 2**20:.0f} MiB",
        )
    header = read_photo_header(data)
    if header.pixels > limits.max_photo_pixels:
        raise StepError(
            ErrorClass.BAD_INPUT,
            f"photo is {header.width}x{header.height} pixels ({header.pixels / 1e6:.0f} megapixels), "
            f"over the pixel limit of {limits.max_photo_pixels / 1e6:.0f} megapixels",
        )
    image = _open_photo(data, header, limits)
    width, height = image.size  # before a draft scales it down
    orientation = _orientation(image)
    try:
        if preview:
            reader = _preview_reader(image, limits.preview_photo_px)
        else:
            reader = _final_reader(image, data, _print_size(image, orientation, spec))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise StepError(ErrorClass.BAD_INPUT, _undecodable(exc, limits)) from None
    return Photo(reader, width, height, orientation)


def _open_photo(data: bytes, header: PhotoHeader, limits: RenderLimits) -> Image.Image:
    """Pillow reads the header again (decoding nothing yet), limited to the format we sniffed."""
    try:
        return Image.open(io.BytesIO(data), formats=[header.format])
    except Image.DecompressionBombError as exc:  # Pillow's own limit, where the caller left it lower
        raise StepError(ErrorClass.BAD_INPUT, f"photo is over the pixel limit: {exc}") from None
    except UnidentifiedImageError:
        raise StepError(ErrorClass.BAD_INPUT, f"photo is not a readable {header.format} image") from None
    except (OSError, ValueError) as exc:  # libwebp allocates the whole canvas here
        raise StepError(ErrorClass.BAD_INPUT, _undecodable(exc, limits)) from None


def _undecodable(exc: Exception, limits: RenderLimits) -> str:
    if limits.memory_mb is None:
        return f"photo is damaged: {exc}"
    # libjpeg and libwebp report an allocation refused under the memory cap as a broken stream,
    # not as a MemoryError: under a cap, either may be the cause, so the message names both.
    return (
        f"photo could not be decoded: {exc} (the file is damaged, or it needs more than the render "
        f"memory limit of {limits.memory_mb} MB)"
    )


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _print_size(image: Image.Image, orientation: int, spec: PhotoSpec | None) -> tuple[int, int]:
    """The stored image's size that fills the photo box at PRINT_DPI; never more than it has."""
    if spec is None:
        return image.size
    box_w, box_h = (spec.box.width_mm / 25.4 * PRINT_DPI, spec.box.height_mm / 25.4 * PRINT_DPI)
    if orientation >= 5:  # stored sideways: the box's width lies along the stored image's height
        box_w, box_h = box_h, box_w
    choose = max if spec.fit is Fit.COVER else min
    scale = min(1.0, choose(box_w / image.width, box_h / image.height))
    return max(1, math.ceil(image.width * scale)), max(1, math.ceil(image.height * scale))


def _final_reader(image: Image.Image, data: bytes, print_size: tuple[int, int]) -> ImageReader:
    jpeg = embeddable_jpeg(image, data)
    if jpeg is None:
        # JPEG only (a no-op for other formats): decode at the scale the print needs, so a 200 MP
        # photo that must be re-encoded does not cost 600 MB of RGB.
        image.draft(None, print_size)
        return ImageReader(printable(image))
    # Decoding at 1/8 scale reads every scan, so a truncated file is caught here and cheaply.
    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
    image.load()
    return JpegReader(jpeg)


def _preview_reader(image: Image.Image, long_side: int) -> ImageReader:
    scale = min(1.0, long_side / max(image.size))
    target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image.draft("RGB", target)  # JPEG only: let the decoder skip the detail a preview drops
    small = printable(image)
    small.thumbnail(target, Image.Resampling.LANCZOS)
    if small.mode in ("RGBA", "LA"):
        return ImageReader(small)
    out = io.BytesIO()
    small.convert("RGB").save(out, "JPEG", quality=_PREVIEW_JPEG_QUALITY)
    return JpegReader(out.getvalue())
