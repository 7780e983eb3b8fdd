"""Poster templates: declarative TOML files in `{assets_dir}/templates/`, validated when loaded.

A template names its page, the boxes for photo, waveform, title and subtitle, the fonts, colours and
background. Adding a template is adding a file; nothing here knows any template by name. Every
validation error names the file and the field, because the person who reads it is an operator or a
designer with the file open, not a developer.

Boxes are `[x, y, width, height]` in millimetres from the top-left corner of the trim box (the page
as it will be cut), which is how designers measure; the renderer turns them into PDF points.
"""

from __future__ import annotations

import enum
import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fulfilment.errors import ErrorClass, StepError

log = logging.getLogger(__name__)

TEMPLATES_DIR = "templates"
FONTS_DIR = "fonts"
BACKGROUNDS_DIR = "backgrounds"

# Identifiers are matched whole, with `fullmatch`: `$` also matches before a trailing newline, so
# `match` would take "a4-portrait\n" for a template name (and a newline into a file name).
# Template names come from the orders table: they must never reach the file system as a path.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
# A file name inside an asset directory, never a path that could leave it.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

E = TypeVar("E", bound=enum.Enum)


class Fit(enum.StrEnum):
    COVER = "cover"  # fill the box, cropping what overflows
    CONTAIN = "contain"  # show the whole image, leaving bands


class Align(enum.StrEnum):
    LEFT = "left"
    CENTER = "center"
    RIGHT = "right"


class WaveStyle(enum.StrEnum):
    BARS = "bars"
    MIRRORED = "mirrored"  # a filled outline, symmetric about the centre line


@dataclass(frozen=True)
class Box:
    x_mm: float
    y_mm: float
    width_mm: float
    height_mm: float


@dataclass(frozen=True)
class Page:
    width_mm: float  # trim size: the poster as cut
    height_mm: float
    bleed_mm: float  # printed beyond the trim on every side


@dataclass(frozen=True)
class Background:
    color: str
    image: str | None  # file name in backgrounds/, drawn over the colour, covering the bleed


@dataclass(frozen=True)
class PhotoSpec:
    box: Box
    fit: Fit
    radius_mm: float  # rounded corners; half the box's short side makes a circle or pill


@dataclass(frozen=True)
class WaveformSpec:
    box: Box
    style: WaveStyle
    color: str
    samples: int  # bars, or points of the outline
    gap: float  # share of each bar's slot left empty


@dataclass(frozen=True)
class TextSpec:
    box: Box
    font: str  # file name in fonts/
    color: str
    max_pt: float
    min_pt: float  # shrink no further than this, then wrap
    max_lines: int
    align: Align
    uppercase: bool
    tracking: float  # extra space between letters, in em


@dataclass(frozen=True)
class Template:
    name: str
    label: str
    path: str
    page: Page
    background: Background
    photo: PhotoSpec
    waveform: WaveformSpec
    title: TextSpec
    subtitle: TextSpec

    @property
    def fonts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.title.font, self.subtitle.font)))


def template_path(assets_dir: Path, name: str) -> Path:
    if not _NAME.fullmatch(name):
        raise StepError(ErrorClass.BAD_INPUT, f"template name {name!r} is not a valid template name")
    return assets_dir / TEMPLATES_DIR / f"{name}.toml"


def list_templates(assets_dir: Path) -> list[str]:
    """Names of the template files present, valid or not (loading them says which are valid)."""
    directory = assets_dir / TEMPLATES_DIR
    if not directory.is_dir():
        raise StepError(ErrorClass.ASSET_MISSING, f"templates directory {directory} is missing")
    names = []
    for path in sorted(directory.glob("*.toml")):
        if _NAME.fullmatch(path.stem):
            names.append(path.stem)
        else:  # an order could never name it: say so rather than let it look installed
            log.warning("ignoring template file %s: names are lower-case letters, digits, - and _", path)
    return names


def load_template(assets_dir: Path, name: str) -> Template:
    path = template_path(assets_dir, name)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _missing(path) from None
    except OSError as exc:
        raise StepError(ErrorClass.ASSET_MISSING, f"template file {path} is unreadable: {exc}") from None
    return parse_template(name, path, raw)


def _missing(path: Path) -> StepError:
    """No file for a template the order names: the order asks for what the shop does not have.

    That is the order's fault (`bad_input`, not retried) while the templates directory is there;
    without the directory nothing can render, which is the assets' fault (retried once fixed).
    """
    if path.parent.is_dir():
        return StepError(ErrorClass.BAD_INPUT, f"unknown template {path.stem!r}: there is no template file {path}")
    return StepError(ErrorClass.ASSET_MISSING, f"template file {path} is missing (no directory {path.parent})")


def parse_template(name: str, path: Path, raw: bytes) -> Template:
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise StepError(ErrorClass.RENDER_ERROR, f"template file {path}: not valid TOML: {exc}") from None
    root = _Section(path, "", data)
    label = root.text("label", default=name)
    page = _page(root.section("page"))
    template = Template(
        name=name,
        label=label,
        path=str(path),
        page=page,
        background=_background(root.section("background")),
        photo=_photo(root.section("photo"), page),
        waveform=_waveform(root.section("waveform"), page),
        title=_text(root.section("title"), page),
        subtitle=_text(root.section("subtitle"), page),
    )
    root.done()
    return template


def _page(s: _Section) -> Page:
    page = Page(
        width_mm=s.number("width_mm", minimum=50, maximum=2000),
        height_mm=s.number("height_mm", minimum=50, maximum=2000),
        bleed_mm=s.number("bleed_mm", minimum=0, maximum=20, default=3.0),
    )
    s.done()
    return page


def _background(s: _Section) -> Background:
    background = Background(color=s.color("color", default="#FFFFFF"), image=s.file_name("image", default=None))
    s.done()
    return background


def _photo(s: _Section, page: Page) -> PhotoSpec:
    box = s.box("box_mm", page)
    spec = PhotoSpec(
        box=box,
        fit=s.choice("fit", Fit, default=Fit.COVER),
        radius_mm=s.number("radius_mm", minimum=0, maximum=min(box.width_mm, box.height_mm) / 2, default=0.0),
    )
    s.done()
    return spec


def _waveform(s: _Section, page: Page) -> WaveformSpec:
    spec = WaveformSpec(
        box=s.box("box_mm", page),
        style=s.choice("style", WaveStyle, default=WaveStyle.BARS),
        color=s.color("color", default="#000000"),
        samples=s.integer("samples", minimum=8, maximum=1000, default=120),
        gap=s.number("gap", minimum=0, maximum=0.9, default=0.35),
    )
    s.done()
    return spec


def _text(s: _Section, page: Page) -> TextSpec:
    max_pt = s.number("max_pt", minimum=4, maximum=400)
    spec = TextSpec(
        box=s.box("box_mm", page),
        font=s.file_name("font"),
        color=s.color("color", default="#000000"),
        max_pt=max_pt,
        min_pt=s.number("min_pt", minimum=4, maximum=max_pt, default=max_pt),
        max_lines=s.integer("max_lines", minimum=1, maximum=10, default=1),
        align=s.choice("align", Align, default=Align.CENTER),
        uppercase=s.boolean("uppercase", default=False),
        tracking=s.number("tracking", minimum=-0.1, maximum=1.0, default=0.0),
    )
    s.done()
    return spec


class _Required:
    pass


_REQUIRED: Any = _Required()


class _Section:
    """One TOML table, read field by field; every complaint names the file and the dotted field."""

    def __init__(self, path: Path, prefix: str, data: Mapping[str, Any]) -> None:
        self._path = path
        self._prefix = prefix
        self._data = data
        self._seen: set[str] = set()

    def _fail(self, key: str, problem: str) -> StepError:
        return StepError(ErrorClass.RENDER_ERROR, f"template file {self._path}: field '{self._prefix}{key}': {problem}")

    def _get(self, key: str, default: Any) -> Any:
        self._seen.add(key)
        if key in self._data:
            return self._data[key]
        if default is _REQUIRED:
            raise self._fail(key, "is required")
        return default

    def done(self) -> None:
        # Unknown fields are typos ("colour", "box") that would otherwise be silently ignored.
        for key in self._data:
            if key not in self._seen:
                raise self._fail(key, "is not a known field")

    def section(self, key: str) -> _Section:
        value = self._get(key, _REQUIRED)
        if not isinstance(value, dict):
            raise self._fail(key, "must be a table, like [" + self._prefix + key + "]")
        return _Section(self._path, f"{self._prefix}{key}.", value)

    def number(self, key: str, *, minimum: float, maximum: float, default: Any = _REQUIRED) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, f"must be a number, got {value!r}")
        if not minimum <= value <= maximum:
            raise self._fail(key, f"must be between {minimum:g} and {maximum:g}, got {value:g}")
        return float(value)

    def integer(self, key: str, *, minimum: int, maximum: int, default: Any = _REQUIRED) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"must be a whole number, got {value!r}")
        if not minimum <= value <= maximum:
            raise self._fail(key, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, f"must be true or false, got {value!r}")
        return value

    def text(self, key: str, *, default: Any = _REQUIRED) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self._fail(key, f"must be a string, got {value!r}")
        return value

    def color(self, key: str, *, default: Any = _REQUIRED) -> str:
        value = self.text(key, default=default)
        if not _COLOR.fullmatch(value):
            raise self._fail(key, f'must be a colour like "#1A2B3C", got {value!r}')
        return value.upper()

    def choice(self, key: str, kind: type[E], *, default: Any = _REQUIRED) -> E:
        value = self._get(key, default)
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in kind)
            raise self._fail(key, f"must be one of {allowed}, got {value!r}") from None

    def file_name(self, key: str, *, default: Any = _REQUIRED) -> Any:
        value = self._get(key, default)
        if value is None and default is None:
            return None
        if not isinstance(value, str) or not _FILE_NAME.fullmatch(value):
            raise self._fail(key, f"must be a file name without directories, got {value!r}")
        return value

    def box(self, key: str, page: Page) -> Box:
        value = self._get(key, _REQUIRED)
        numeric = isinstance(value, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        )
        if not numeric or len(value) != 4:
            raise self._fail(key, f"must be [x, y, width, height] in mm, got {value!r}")
        box = Box(*(float(v) for v in value))
        if box.width_mm <= 0 or box.height_mm <= 0:
            raise self._fail(key, "width and height must be positive")
        # A box may reach into the bleed (a full-bleed photo) but not past it.
        b = page.bleed_mm
        inside_x = -b <= box.x_mm and box.x_mm + box.width_mm <= page.width_mm + b
        inside_y = -b <= box.y_mm and box.y_mm + box.height_mm <= page.height_mm + b
        if not (inside_x and inside_y):
            size = f"{page.width_mm:g} x {page.height_mm:g} mm plus {b:g} mm bleed"
            raise self._fail(key, f"{value!r} reaches outside the page ({size})")
        return box
