"""Images as ReportLab will write them: JPEG bytes embedded untouched where possible, else decoded
pixels in a mode the PDF holds faithfully. Shared by the customer's photo and the template's background.
"""

from __future__ import annotations

import io

from PIL import Image
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase.pdfutils import readJPEGInfo


def embeddable_jpeg(image: Image.Image, data: bytes) -> bytes | None:
    """The JPEG bytes ReportLab can embed as they are (8-bit baseline or progressive), if any."""
    if image.format == "MPO":
        data = _first_mpo_image(image, data)
    elif image.format != "JPEG":
        return None
    if image.mode not in ("L", "RGB", "CMYK"):
        return None
    try:
        readJPEGInfo(io.BytesIO(data))
    except Exception:
        return None
    return data


def _first_mpo_image(image: Image.Image, data: bytes) -> bytes:
    """Phones often save MPO: a complete JPEG followed by depth maps or previews nobody will print."""
    try:
        size = int(image.mpinfo[0xB002][0]["Size"])  # type: ignore[attr-defined]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return data
    first = data[:size]
    return first if first.startswith(b"\xff\xd8") and first.endswith(b"\xff\xd9") else data


def printable(image: Image.Image) -> Image.Image:
    """A decoded image in a mode ReportLab writes faithfully."""
    image.load()
    if image.mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        return image
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode.startswith("I") or image.mode == "F":  # 16-bit and float greyscale
        return image.convert("F").point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


class JpegReader(ImageReader):  # type: ignore[misc]  # ReportLab ships no type hints
    """An ImageReader for JPEG bytes that ReportLab embeds untouched.

    `Canvas.drawImage` names each image by hashing `getRGBData()`, which would decode every pixel of
    a 12 MP photo (36 MB) only to throw them away; the PDF takes the original bytes via `jpeg_fh`
    anyway. Hashing the file bytes names the image just as well.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self._jpeg_bytes = data
        self._dataA = None  # no alpha channel: drawImage reads this after getRGBData
        # ReportLab embeds as-is only what Pillow calls "JPEG"; an MPO's first image is one too.
        self.jpeg_fh = self._jpeg_fh

    def getRGBData(self) -> bytes:  # ReportLab's name and signature
        return self._jpeg_bytes
