"""The poster's fonts: a TrueType file loaded, validated and registered with ReportLab, once per process.

`load_font` is the only judge of whether a font file is usable: the renderer calls it before it
draws, and the `assets` check calls it (through `fulfilment.render.assets`) to find a broken font
before an order does.
"""

from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path

from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont

from fulfilment.render.asset_errors import unreadable, unusable


def load_font(path: Path) -> str:
    """Register a TrueType font once per process and return its ReportLab name."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise unusable("font", path, exc) from None
    return _registered_font(str(path), stat.st_mtime_ns, stat.st_size)


# Parsing a font costs tens of milliseconds: do it once per worker process. The key holds mtime and
# size so a replaced file is parsed again; failures are not cached, so a fixed file is seen at once.
@functools.lru_cache(maxsize=32)
def _registered_font(path: str, mtime_ns: int, size: int) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise unreadable("font", path, exc) from None
    # Named by content, so the PDF does not depend on where the assets live or when they loaded.
    name = f"{Path(path).stem}-{hashlib.sha256(data).hexdigest()[:12]}"
    if name not in pdfmetrics.getRegisteredFontNames():
        try:
            font = TTFont(name, io.BytesIO(data), validate=1)
        except Exception as exc:
            raise unreadable("font", path, exc) from None
        pdfmetrics.registerFont(font)
    return name
