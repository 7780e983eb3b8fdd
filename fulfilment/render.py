"""The poster PDF: one page drawn with ReportLab's canvas from a template, a photo and a waveform.

`render_poster` is the entry point; it runs in a process pool, so it takes and returns plain,
picklable data, and only `StepError` ever leaves it:
- `asset_missing` when a font, template or background file is missing or unreadable (names the path),
- `render_error` for an invalid template (names file and field) or a failure inside ReportLab,
- `bad_input` for what the customer sent: a damaged or oversized photo or audio, a photo that is
  not a JPEG, PNG or WebP, text the font cannot draw, no waveform source at all, or a render that
  runs out of the memory its process may use (`RenderLimits.memory_mb`).

A photo's format and pixel count are read from its first bytes by this module, before Pillow or
any decoder sees the file, so a decompression bomb costs a few bytes of parsing. The memory cap and
the time limit themselves are the caller's to enforce (healer runs each render in a process with
an rlimit and a deadline); this module only names the cap when a render runs into it.

The same inputs always give the same bytes (fixed dates and ids, `invariant=1`), so a render
repeated after a crash overwrites the file with an identical one. Finals embed the customer's JPEG
as it is; previews get a downscaled copy and a diagonal watermark, so a preview is no print master.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import math
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from reportlab import rl_config
from reportlab.lib.colors import Color, HexColor
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.pdfutils import readJPEGInfo
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from fulfilment.errors import ErrorClass, StepError
from fulfilment.photo_header import PhotoHeader, read_photo_header
from fulfilment.templates import (
    BACKGROUNDS_DIR,
    FONTS_DIR,
    Align,
    Box,
    Fit,
    PhotoSpec,
    Template,
    TextSpec,
    WaveformSpec,
    WaveStyle,
    load_template,
)
from fulfilment.waveform import MAX_AUDIO_BYTES, MAX_AUDIO_SECONDS, Peaks, peaks_from_audio, peaks_from_image, resample

log = logging.getLogger(__name__)

WATERMARK_TEXT = "PREVIEW"
_LEADING = 1.2  # line pitch as a multiple of the font size
_PREVIEW_JPEG_QUALITY = 80
PRINT_DPI = 300  # what a print needs of a photo; a JPEG re-encoded for the page is decoded no finer
_RL_CONFIG_LOCK = threading.Lock()

Rect = tuple[float, float, float, float]  # x, y, width, height in PDF points, origin bottom-left


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
    # renders, or it refuses such a photo first: healer.render_process does.
    max_photo_pixels: int = 200_000_000
    max_audio_bytes: int = MAX_AUDIO_BYTES
    max_audio_seconds: float = MAX_AUDIO_SECONDS
    preview_photo_px: int = 1600  # long side of the photo in a preview
    # The memory cap of the process the render runs in, enforced by whoever runs it; None: none.
    # With a cap, running out of memory is the input's fault (`bad_input`); without one, the
    # machine's (`resources`, retried).
    memory_mb: int | None = None


@dataclass(frozen=True)
class TextLayout:
    font: str  # registered ReportLab font name
    size: float  # points
    lines: tuple[str, ...]


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
    title_font = load_font(assets_dir / FONTS_DIR / template.title.font)
    subtitle_font = load_font(assets_dir / FONTS_DIR / template.subtitle.font)
    background = _load_background(assets_dir, template)
    title = fit_text(inputs.title, title_font, template, template.title, "title")
    subtitle = fit_text(inputs.subtitle, subtitle_font, template, template.subtitle, "subtitle")
    photo = load_photo(inputs.photo, limits, preview=preview, spec=template.photo)
    peaks = _peaks(inputs, limits)
    with _binary_streams():
        return _draw(template, background, photo, peaks, title, subtitle, preview)


# ---------------------------------------------------------------------------------------- assets


def load_font(path: Path) -> str:
    """Register a TrueType font once per process and return its ReportLab name."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise StepError(ErrorClass.ASSET_MISSING, f"font file {path} is missing") from None
    except OSError as exc:
        raise StepError(ErrorClass.ASSET_MISSING, f"font file {path} is unreadable: {exc}") from None
    return _registered_font(str(path), stat.st_mtime_ns, stat.st_size)


# Parsing a font costs tens of milliseconds: do it once per worker process. The key holds mtime and
# size so a replaced file is parsed again; failures are not cached, so a fixed file is seen at once.
@functools.lru_cache(maxsize=32)
def _registered_font(path: str, mtime_ns: int, size: int) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StepError(ErrorClass.ASSET_MISSING, f"font file {path} is unreadable: {exc}") from None
    # Named by content, so the PDF does not depend on where the assets live or when they loaded.
    name = f"{Path(path).stem}-{hashlib.sha256(data).hexdigest()[:12]}"
    if name not in pdfmetrics.getRegisteredFontNames():
        try:
            font = TTFont(name, io.BytesIO(data), validate=1)
        except Exception as exc:  # noqa: BLE001 - a damaged font fails in many ways; all mean "unreadable"
            raise StepError(ErrorClass.ASSET_MISSING, f"font file {path} is unreadable: {exc}") from None
        pdfmetrics.registerFont(font)
    return name


def _load_background(assets_dir: Path, template: Template) -> ImageReader | None:
    if template.background.image is None:
        return None
    path = assets_dir / BACKGROUNDS_DIR / template.background.image
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StepError(ErrorClass.ASSET_MISSING, f"background file {path} is missing") from None
    except OSError as exc:
        raise StepError(ErrorClass.ASSET_MISSING, f"background file {path} is unreadable: {exc}") from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # backgrounds are small; decoding all of it is the only proof it is whole
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged files
        raise StepError(ErrorClass.ASSET_MISSING, f"background file {path} is unreadable: {exc}") from None
    jpeg = _embeddable_jpeg(image, data)
    return ImageReader(_printable(image)) if jpeg is None else _JpegReader(jpeg)


# ------------------------------------------------------------------------------------------ text


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
    one_line = min(spec.max_pt, width / natural, height / _block_height(font, 1.0, 1))
    if one_line >= spec.min_pt:
        return TextLayout(font, math.floor(one_line * 10) / 10, (text,))
    size = spec.max_pt
    while size >= spec.min_pt:
        lines = _wrap(text, font, size, width, spec)
        if len(lines) <= spec.max_lines and _block_height(font, size, len(lines)) <= height:
            return TextLayout(font, size, lines)
        size -= 0.5
    raise StepError(
        ErrorClass.BAD_INPUT,
        f"{part} is too long for template {template.name!r}: {len(text)} characters do not fit in "
        f"{spec.max_lines} line(s) at {spec.min_pt:g} pt",
    )


def _line_width(line: str, font: str, size: float, spec: TextSpec) -> float:
    return pdfmetrics.stringWidth(line, font, size) + spec.tracking * size * (len(line) - 1)


def _block_height(font: str, size: float, lines: int) -> float:
    face = pdfmetrics.getFont(font).face
    return (face.ascent - face.descent) / 1000 * size + (lines - 1) * _LEADING * size


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


# ----------------------------------------------------------------------------------------- photo


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
    except Exception:  # noqa: BLE001 - a damaged EXIF block only loses the rotation hint
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
    jpeg = _embeddable_jpeg(image, data)
    if jpeg is None:
        # JPEG only (a no-op for other formats): decode at the scale the print needs, so a 200 MP
        # photo that must be re-encoded does not cost 600 MB of RGB.
        image.draft(None, print_size)
        return ImageReader(_printable(image))
    # Decoding at 1/8 scale reads every scan, so a truncated file is caught here and cheaply.
    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
    image.load()
    return _JpegReader(jpeg)


def _preview_reader(image: Image.Image, long_side: int) -> ImageReader:
    scale = min(1.0, long_side / max(image.size))
    target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image.draft("RGB", target)  # JPEG only: let the decoder skip the detail a preview drops
    small = _printable(image)
    small.thumbnail(target, Image.Resampling.LANCZOS)
    if small.mode in ("RGBA", "LA"):
        return ImageReader(small)
    out = io.BytesIO()
    small.convert("RGB").save(out, "JPEG", quality=_PREVIEW_JPEG_QUALITY)
    return _JpegReader(out.getvalue())


def _embeddable_jpeg(image: Image.Image, data: bytes) -> bytes | None:
    """The JPEG bytes ReportLab can embed as they are (8-bit baseline or progressive), if any."""
    if image.format == "MPO":
        data = _first_mpo_image(image, data)
    elif image.format != "JPEG":
        return None
    if image.mode not in ("L", "RGB", "CMYK"):
        return None
    try:
        readJPEGInfo(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any complaint means "decode and re-encode instead"
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


def _printable(image: Image.Image) -> Image.Image:
    """A decoded image in a mode ReportLab writes faithfully."""
    image.load()
    if image.mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        return image
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode.startswith("I") or image.mode == "F":  # 16-bit and float greyscale
        return image.convert("F").point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


class _JpegReader(ImageReader):
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


# -------------------------------------------------------------------------------------- waveform


def _peaks(inputs: PosterInputs, limits: RenderLimits) -> Peaks:
    if inputs.waveform_image is not None:
        try:
            return peaks_from_image(inputs.waveform_image)
        except StepError as exc:
            if inputs.audio is None:
                raise
            log.warning("waveform image unusable (%s); drawing the waveform from the audio", exc.message)
    if inputs.audio is not None:
        return peaks_from_audio(
            inputs.audio, inputs.audio_name, max_bytes=limits.max_audio_bytes, max_seconds=limits.max_audio_seconds
        )
    raise StepError(
        ErrorClass.BAD_INPUT, "neither a waveform image nor the audio was given: nothing to draw the waveform from"
    )


# -------------------------------------------------------------------------------------- drawing


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


def _draw(
    template: Template,
    background: ImageReader | None,
    photo: Photo,
    peaks: Peaks,
    title: TextLayout,
    subtitle: TextLayout,
    preview: bool,
) -> bytes:
    page = template.page
    media = ((page.width_mm + 2 * page.bleed_mm) * mm, (page.height_mm + 2 * page.bleed_mm) * mm)
    bleed = page.bleed_mm * mm
    out = io.BytesIO()
    # The initial font is ours, so the page never references an unembedded Helvetica.
    canvas = Canvas(out, pagesize=media, invariant=1, pageCompression=1, initialFontName=title.font)
    canvas.setTrimBox((bleed, bleed, media[0] - bleed, media[1] - bleed))
    canvas.setBleedBox((0, 0, media[0], media[1]))
    canvas.setTitle(" ".join(title.lines) or template.label)
    canvas.setSubject(template.label)
    canvas.setCreator("healer")
    _draw_background(canvas, template, background, media)
    _draw_photo(canvas, photo, _rect(template, template.photo.box), template.photo)
    _draw_waveform(canvas, peaks, _rect(template, template.waveform.box), template.waveform)
    _draw_text(canvas, title, _rect(template, template.title.box), template.title)
    _draw_text(canvas, subtitle, _rect(template, template.subtitle.box), template.subtitle)
    if preview:
        _draw_watermark(canvas, media, title.font)
    canvas.showPage()
    canvas.save()
    return out.getvalue()


def _rect(template: Template, box: Box) -> Rect:
    """A template box (mm from the trim's top-left) as a PDF rectangle (points from bottom-left)."""
    bleed = template.page.bleed_mm
    top_from_bottom = template.page.height_mm + bleed - box.y_mm
    return (
        (box.x_mm + bleed) * mm,
        (top_from_bottom - box.height_mm) * mm,
        box.width_mm * mm,
        box.height_mm * mm,
    )


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


def _draw_waveform(canvas: Canvas, peaks: Peaks, rect: Rect, spec: WaveformSpec) -> None:
    canvas.saveState()
    canvas.setFillColor(HexColor(spec.color))
    if spec.style is WaveStyle.BARS:
        path = _bars_path(canvas, resample(peaks, spec.samples), rect, spec.gap)
    else:
        path = _outline_path(canvas, _smoothed(resample(peaks, spec.samples)), rect)
    canvas.drawPath(path, stroke=0, fill=1)
    canvas.restoreState()


def _bars_path(canvas: Canvas, values: Peaks, rect: Rect, gap: float):  # type: ignore[no-untyped-def]
    x, y, width, height = rect
    slot = width / len(values)
    bar = slot * (1 - gap)
    floor = min(bar, height * 0.04)  # silence still shows as a row of dots
    middle = y + height / 2
    path = canvas.beginPath()
    for i, value in enumerate(values):
        length = max(floor, value * height)
        path.roundRect(x + i * slot + (slot - bar) / 2, middle - length / 2, bar, length, min(bar, length) / 2)
    return path


def _outline_path(canvas: Canvas, values: Peaks, rect: Rect):  # type: ignore[no-untyped-def]
    x, y, width, height = rect
    middle = y + height / 2
    step = width / (len(values) - 1)
    half = [max(0.015, v) * height / 2 for v in values]  # a hairline through silence
    path = canvas.beginPath()
    path.moveTo(x, middle + half[0])
    for i in range(1, len(values)):
        path.lineTo(x + i * step, middle + half[i])
    for i in reversed(range(len(values))):
        path.lineTo(x + i * step, middle - half[i])
    path.close()
    return path


def _smoothed(values: Peaks) -> Peaks:
    # A filled outline shows every single-sample spike as a needle; a light blur reads as sound.
    padded = (values[0], *values, values[-1])
    return tuple(0.25 * padded[i - 1] + 0.5 * padded[i] + 0.25 * padded[i + 1] for i in range(1, len(padded) - 1))


def _draw_text(canvas: Canvas, layout: TextLayout, rect: Rect, spec: TextSpec) -> None:
    if not layout.lines:
        return
    x, y, width, height = rect
    face = pdfmetrics.getFont(layout.font).face
    block = _block_height(layout.font, layout.size, len(layout.lines))
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
        baseline -= _LEADING * layout.size
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
