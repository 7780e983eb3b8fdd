"""Bounded inputs: a photo is a JPEG, PNG or WebP (read from its first bytes, whatever its name or
content type says), its pixel count is refused from the header before anything is decoded, and
identifiers (template, font and background names) are matched whole.

The photo's limits under real render processes (memory cap, time limit, a 200 MP phone photo) are
in test_render_limits.py.
"""

from __future__ import annotations

import io
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from fulfilment.errors import ErrorClass, StepError
from fulfilment.photo_header import read_photo_header
from fulfilment.pipeline import Pipeline
from fulfilment.render import PosterInputs, render_poster
from fulfilment.templates import load_template
from healer.demo.samples import sample_photo
from healer.render.pool import RenderPool
from tests.fakes.render_fixtures import BUNDLED_ASSETS
from tests.fakes.shop_fixtures import Shop

pytestmark = pytest.mark.timeout(180)


def refused(assets: Path, inputs: PosterInputs) -> StepError:
    with pytest.raises(StepError) as caught:
        render_poster(assets, inputs, preview=False)
    assert caught.value.error_class is ErrorClass.BAD_INPUT, caught.value
    return caught.value


def encoded(fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(sample_photo(seed=5, size=(320, 240)))).save(out, fmt, **options)
    return out.getvalue()


def png_bomb_1bit(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG, all black: `width`x`height` pixels in a few kilobytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + one bit per pixel
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------- the photo's format


@pytest.mark.parametrize(
    ("photo", "named"),
    [
        (encoded("GIF"), "a GIF file"),
        (encoded("BMP"), "a BMP file"),
        (encoded("TIFF"), "a TIFF file"),
        (encoded("TGA"), "an unknown kind of file"),  # Pillow would open it: TGA has no magic number
        (encoded("PPM"), "an unknown kind of file"),
        (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64, "a HEIC file"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>', "an SVG file"),
        (b"8BPS\0\1" + b"\0" * 64, "a PSD file"),
    ],
    ids=["gif", "bmp", "tiff", "tga", "ppm", "heic", "svg", "psd"],
)
def test_a_photo_that_is_not_jpeg_png_or_webp_is_bad_input(
    sample_inputs: PosterInputs, photo: bytes, named: str
) -> None:
    error = refused(BUNDLED_ASSETS, replace(sample_inputs, photo=photo))
    assert error.message == f"photo is {named}, not a JPEG, PNG or WebP image"


def test_a_gif_named_photo_jpg_is_refused_through_the_pipeline(shop: Shop) -> None:
    order_id = shop.paid_order(photo=encoded("GIF"))  # stored as tmp/…/photo.jpg, image/jpeg

    status = _complete(shop, order_id, shop.pipeline())

    order = shop.order(order_id)
    assert (status, order.last_error_step, order.last_error_class) == ("needs_attention", "render", "bad_input")
    assert "a GIF file" in (order.last_error or "")


def _webp_with_alpha() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (300, 200), (10, 20, 30, 128)).save(out, "WEBP")
    return out.getvalue()


@pytest.mark.parametrize(
    ("photo", "fmt"),
    [
        (encoded("JPEG", quality=90), "JPEG"),
        (encoded("JPEG", quality=90, progressive=True), "JPEG"),
        (encoded("PNG"), "PNG"),
        (encoded("WEBP", quality=80), "WEBP"),  # VP8: lossy
        (encoded("WEBP", lossless=True), "WEBP"),  # VP8L
        (_webp_with_alpha(), "WEBP"),  # VP8X: extended
    ],
    ids=["jpeg", "progressive-jpeg", "png", "webp-lossy", "webp-lossless", "webp-extended"],
)
def test_the_header_gives_the_size_pillow_decodes(photo: bytes, fmt: str) -> None:
    header = read_photo_header(photo)
    assert (header.format, (header.width, header.height)) == (fmt, Image.open(io.BytesIO(photo)).size)


# ------------------------------------------------------------------------ the photo's pixels


@pytest.fixture
def render_pool(assets_dir: Path, tmp_path: Path) -> Iterator[RenderPool]:
    # The daemon's shape with a low megapixel setting and a memory cap a decoded bomb would blow.
    pool = RenderPool(assets_dir, 1, tmp_path / "scratch", max_photo_megapixels=50, memory_mb=256)
    yield pool
    pool.shutdown()


def test_a_decompression_bomb_is_refused_from_its_header_and_not_retried(
    shop: Shop, render_pool: RenderPool
) -> None:
    bomb = png_bomb_1bit(8_000, 7_500)  # 60 MP: 180 MB once decoded to RGB for the page
    assert len(bomb) < 20_000
    order_id = shop.paid_order(photo=bomb)

    status = _complete(shop, order_id, shop.pipeline(render=render_pool, max_attempts=5))

    order = shop.order(order_id)
    assert (status, order.last_error_step, order.last_error_class) == ("needs_attention", "render", "bad_input")
    # The header's words: decoded under the 256 MB cap, it would have run out of memory instead.
    assert order.last_error == (
        "photo is 8000x7500 pixels (60 megapixels), over the pixel limit of 50 megapixels"
    )
    assert [e.outcome for e in shop.events(order_id) if e.step == "render"] == ["gave_up"]
    assert shop.emails_to("ada@example.com") == []


def _complete(shop: Shop, order_id: uuid.UUID, pipeline: Pipeline) -> str:
    """One run of the order's steps, as a worker does it."""
    assert pipeline.claim_order(order_id, "test")
    pipeline.run(order_id, "test")
    return shop.order(order_id).status


# ------------------------------------------------------------------------------ identifiers


@pytest.mark.parametrize("name", ["a4-portrait\n", "a4-portrait\r\n", "\na4-portrait", "a4-portrait "])
def test_a_template_name_with_a_trailing_newline_is_an_unknown_template(
    assets_dir: Path, sample_inputs: PosterInputs, name: str
) -> None:
    error = refused(assets_dir, replace(sample_inputs, template=name))
    assert repr(name) in error.message


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('font = "DejaVuSerif-Bold.ttf"', 'font = "DejaVuSerif-Bold.ttf\\n"'),
        ('image = "cream-paper.jpg"', 'image = "cream-paper.jpg\\n"'),
        ('color = "#2A2A2A"', 'color = "#2A2A2A\\n"'),
    ],
    ids=["font", "background", "colour"],
)
def test_asset_names_in_a_template_are_matched_whole(assets_dir: Path, old: str, new: str) -> None:
    path = assets_dir / "templates" / "a4-portrait.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(StepError) as caught:
        load_template(assets_dir, "a4-portrait")
    assert caught.value.error_class is ErrorClass.RENDER_ERROR and "\\n" in caught.value.message
