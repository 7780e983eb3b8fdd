"""A photo's format and pixel size from its first bytes, before any decoder sees it.

Pillow's `Image.open` is lazy for JPEG and PNG, but its WebP plugin allocates the whole canvas as
it opens, and every registered plugin would get a look at the bytes: so the three formats a poster
accepts are recognised here, by their own headers, and anything else is refused by name. Pillow
then opens the file restricted to the format found (fulfilment.render.load_photo).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fulfilment.errors import ErrorClass, StepError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG frame headers (SOF0..SOF15) carry the size; C4, C8 and CC are other segments.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length
# Formats customers send that are refused, named so the refusal says what the file is.
_OTHER_MAGIC = (
    (b"GIF8", "a GIF"), (b"BM", "a BMP"), (b"II*\0", "a TIFF"), (b"MM\0*", "a TIFF"), (b"8BPS", "a PSD"),
    (b"%PDF", "a PDF"), (b"<?xml", "an XML (SVG?)"), (b"<svg", "an SVG"), (b"\0\0\1\0", "an ICO"),
)
_ISO_BRANDS = {b"heic": "a HEIC", b"heix": "a HEIC", b"mif1": "a HEIF", b"msf1": "a HEIF", b"avif": "an AVIF"}


@dataclass(frozen=True)
class PhotoHeader:
    format: str  # Pillow's name: "JPEG" (an MPO, a phone's JPEG with extras, too), "PNG" or "WEBP"
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_photo_header(data: bytes) -> PhotoHeader:
    """Format and pixel size from the file's first bytes, before any decoder sees it."""
    if data.startswith(_PNG_SIGNATURE):
        fmt, size = "PNG", _png_size(data)
    elif data.startswith(b"\xff\xd8\xff"):
        fmt, size = "JPEG", _jpeg_size(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt, size = "WEBP", _webp_size(data)
    else:
        raise StepError(ErrorClass.BAD_INPUT, f"photo is {_other_format(data)} file, not a JPEG, PNG or WebP image")
    if size is None or min(size) <= 0:
        raise StepError(ErrorClass.BAD_INPUT, f"photo is not a readable {fmt} image: its header is damaged")
    return PhotoHeader(fmt, *size)


def _other_format(data: bytes) -> str:
    for magic, name in _OTHER_MAGIC:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":  # ISO base media: HEIC/HEIF/AVIF from phones
        return _ISO_BRANDS.get(data[8:12], "an ISO media")
    return "an unknown kind of"


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR" or len(data) < 24:
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the segments from SOI to the first frame header; nothing past it is read."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF or marker in _JPEG_STANDALONE:  # a fill byte, or a marker without length
            pos += 1 if marker == 0xFF else 2
            continue
        if marker in _JPEG_FRAMES:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker in (0xDA, 0xD9):  # scan data or the end before any frame header
            return None
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if length < 2:
            return None
        pos += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:  # extended: the canvas size, 24 bits each, minus one
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:  # lossless: 14 bits each, minus one
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None
