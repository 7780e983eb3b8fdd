"""The poster renderer, read back the way a customer and a printer see it: pypdf and pdftoppm."""

from __future__ import annotations

import io
import multiprocessing
import shutil
import struct
import subprocess
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import soundfile
from PIL import Image
from pypdf import PdfReader
from pypdf.generic import DictionaryObject
from reportlab.pdfbase.pdfmetrics import stringWidth

from fulfilment.errors import ErrorClass, StepError
from fulfilment.render import PosterInputs, RenderLimits, render_poster
from fulfilment.render.draw import WATERMARK_TEXT
from fulfilment.render.fonts import load_font
from fulfilment.render.layout import fit_text
from fulfilment.templates import Box, Template, list_templates, load_template
from healer.demo.samples import sample_audio, sample_photo
from tests.fakes.render_fixtures import BUNDLED_ASSETS, SAMPLE_SUBTITLE, SAMPLE_TITLE

TEMPLATES = list_templates(BUNDLED_ASSETS)
MM_PER_PT = 25.4 / 72


# ------------------------------------------------------------------------------------ helpers


def rasterize(pdf: bytes, tmp_path: Path, long_side: int = 600) -> Image.Image:
    """The first page as pixels, through poppler, as a print shop's RIP would see it."""
    if shutil.which("pdftoppm") is None:
        pytest.fail("pdftoppm is missing: install Debian's poppler-utils (apt-get install -y poppler-utils)")
    source = tmp_path / "poster.pdf"
    source.write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-png", "-singlefile", "-scale-to", str(long_side), str(source), str(tmp_path / "page")],
        check=True,
        timeout=60,
    )
    return Image.open(tmp_path / "page.png").convert("RGB")


def box_pixels(page: Image.Image, template: Template, box: Box, inset: float = 0.1) -> np.ndarray:
    """The pixels inside a template box (minus a margin), from a raster of the whole page."""
    media_w = template.page.width_mm + 2 * template.page.bleed_mm
    scale = page.width / media_w
    bleed = template.page.bleed_mm
    dx, dy = box.width_mm * inset, box.height_mm * inset
    left = (bleed + box.x_mm + dx) * scale
    top = (bleed + box.y_mm + dy) * scale
    right = (bleed + box.x_mm + box.width_mm - dx) * scale
    bottom = (bleed + box.y_mm + box.height_mm - dy) * scale
    return np.asarray(page.crop((round(left), round(top), round(right), round(bottom))), dtype=np.int16)


def share_near(pixels: np.ndarray, hex_color: str, tolerance: int = 60) -> float:
    target = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    return float((np.abs(pixels - target).max(axis=2) < tolerance).mean())


def page_text(pdf: bytes) -> str:
    return PdfReader(io.BytesIO(pdf)).pages[0].extract_text()


def page_resources(pdf: bytes, kind: str) -> list[Any]:
    """The page's /Font or /XObject resources, resolved."""
    resources = cast(DictionaryObject, PdfReader(io.BytesIO(pdf)).pages[0]["/Resources"])
    entries = cast(DictionaryObject, resources[kind])
    return [entries[name].get_object() for name in entries]


def font_dicts(pdf: bytes) -> list[Any]:
    return page_resources(pdf, "/Font")


def image_xobjects(pdf: bytes) -> list[Any]:
    return page_resources(pdf, "/XObject")


def bad_input(assets: Path, inputs: PosterInputs, **limits: object) -> StepError:
    with pytest.raises(StepError) as caught:
        render_poster(assets, inputs, preview=False, limits=RenderLimits(**limits))  # type: ignore[arg-type]
    assert caught.value.error_class is ErrorClass.BAD_INPUT, caught.value
    return caught.value


def asset_fault(assets: Path, inputs: PosterInputs, error_class: ErrorClass) -> str:
    with pytest.raises(StepError) as caught:
        render_poster(assets, inputs, preview=False)
    assert caught.value.error_class is error_class, caught.value
    return caught.value.message


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size but carries almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def quadrant_photo(size: tuple[int, int]) -> Image.Image:
    """Upright picture: red top-left, green top-right, blue bottom-left, yellow bottom-right."""
    width, height = size
    image = Image.new("RGB", size)
    for color, box in (
        ((220, 30, 30), (0, 0, width // 2, height // 2)),
        ((30, 200, 30), (width // 2, 0, width, height // 2)),
        ((30, 30, 220), (0, height // 2, width // 2, height)),
        ((230, 220, 30), (width // 2, height // 2, width, height)),
    ):
        image.paste(color, box)
    return image


# The transpose that stores an upright picture so that EXIF orientation N turns it upright again.
_STORE_FOR_ORIENTATION = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


# ------------------------------------------------------------------------- every template, read back


@pytest.fixture(scope="module")
def posters(sample_inputs: PosterInputs) -> dict[tuple[str, bool], bytes]:
    return {
        (name, preview): render_poster(BUNDLED_ASSETS, replace(sample_inputs, template=name), preview=preview)
        for name in TEMPLATES
        for preview in (False, True)
    }


def test_the_repository_ships_at_least_four_templates() -> None:
    assert len(TEMPLATES) >= 4


@pytest.mark.parametrize("preview", [False, True], ids=["final", "preview"])
@pytest.mark.parametrize("name", TEMPLATES)
def test_page_is_the_template_size_plus_bleed_with_the_trim_marked(posters, name: str, preview: bool) -> None:
    template = load_template(BUNDLED_ASSETS, name)
    page = PdfReader(io.BytesIO(posters[name, preview])).pages[0]
    bleed = template.page.bleed_mm
    assert float(page.mediabox.width) * MM_PER_PT == pytest.approx(template.page.width_mm + 2 * bleed, abs=0.01)
    assert float(page.mediabox.height) * MM_PER_PT == pytest.approx(template.page.height_mm + 2 * bleed, abs=0.01)
    assert float(page.trimbox.width) * MM_PER_PT == pytest.approx(template.page.width_mm, abs=0.01)
    assert float(page.trimbox.left) * MM_PER_PT == pytest.approx(bleed, abs=0.01)


@pytest.mark.parametrize("preview", [False, True], ids=["final", "preview"])
@pytest.mark.parametrize("name", TEMPLATES)
def test_every_font_is_embedded(posters, name: str, preview: bool) -> None:
    fonts = font_dicts(posters[name, preview])
    assert fonts
    for font in fonts:
        descriptor = font["/FontDescriptor"]
        assert "/FontFile2" in descriptor, f"{font['/BaseFont']} is not embedded"


@pytest.mark.parametrize("preview", [False, True], ids=["final", "preview"])
@pytest.mark.parametrize("name", TEMPLATES)
def test_title_and_subtitle_are_real_text(posters, name: str, preview: bool) -> None:
    text = page_text(posters[name, preview])
    assert SAMPLE_TITLE in text
    subtitle = load_template(BUNDLED_ASSETS, name).subtitle
    assert (SAMPLE_SUBTITLE.upper() if subtitle.uppercase else SAMPLE_SUBTITLE) in text


@pytest.mark.parametrize("name", TEMPLATES)
def test_only_the_preview_carries_the_watermark(posters, name: str) -> None:
    assert WATERMARK_TEXT in page_text(posters[name, True])
    assert WATERMARK_TEXT not in page_text(posters[name, False])


@pytest.mark.parametrize("preview", [False, True], ids=["final", "preview"])
@pytest.mark.parametrize("name", TEMPLATES)
def test_photo_and_waveform_boxes_are_drawn(posters, tmp_path: Path, name: str, preview: bool) -> None:
    template = load_template(BUNDLED_ASSETS, name)
    page = rasterize(posters[name, preview], tmp_path)
    photo = box_pixels(page, template, template.photo.box, inset=0.2)
    assert photo.std(axis=(0, 1)).max() > 15, "photo box is flat: no photo drawn"
    wave = box_pixels(page, template, template.waveform.box, inset=0.02)
    assert share_near(wave, template.waveform.color) > 0.05, "waveform box holds no waveform"


def test_render_is_deterministic_and_the_same_in_a_worker_process(sample_inputs: PosterInputs) -> None:
    here = render_poster(BUNDLED_ASSETS, sample_inputs, preview=False)
    assert render_poster(BUNDLED_ASSETS, sample_inputs, preview=False) == here
    # A fresh process has loaded no fonts yet: the bytes must not depend on that history either.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = pool.submit(render_poster, BUNDLED_ASSETS, sample_inputs, preview=False).result(timeout=120)
        with pytest.raises(StepError) as caught:
            pool.submit(render_poster, BUNDLED_ASSETS, replace(sample_inputs, photo=b"nope"), preview=False).result(120)
    assert there == here
    assert caught.value.error_class is ErrorClass.BAD_INPUT


# ------------------------------------------------------------------------------------ the photo


def test_final_embeds_the_customers_jpeg_byte_for_byte(sample_inputs: PosterInputs) -> None:
    pdf = render_poster(BUNDLED_ASSETS, sample_inputs, preview=False)
    assert any(x.get_data() == sample_inputs.photo for x in image_xobjects(pdf))


def test_a_phones_mpo_photo_embeds_only_its_first_jpeg(sample_inputs: PosterInputs) -> None:
    main = Image.open(io.BytesIO(sample_photo(seed=6, size=(300, 400))))
    depth_map = Image.new("RGB", (300, 400), (90, 90, 90))
    out = io.BytesIO()
    main.save(out, "MPO", save_all=True, append_images=[depth_map], quality=90)
    mpo = out.getvalue()
    pdf = render_poster(BUNDLED_ASSETS, replace(sample_inputs, photo=mpo), preview=False)
    embedded = [x.get_data() for x in image_xobjects(pdf) if mpo.startswith(x.get_data())]
    assert len(embedded) == 1 and len(embedded[0]) < len(mpo) and embedded[0].endswith(b"\xff\xd9")
    assert Image.open(io.BytesIO(embedded[0])).size == (300, 400)


def test_preview_carries_a_downscaled_copy_of_a_large_photo(sample_inputs: PosterInputs) -> None:
    large = sample_photo(seed=2, size=(2400, 1800))
    inputs = replace(sample_inputs, photo=large)
    pdf = render_poster(BUNDLED_ASSETS, inputs, preview=True, limits=RenderLimits(preview_photo_px=800))
    widths = sorted(int(x["/Width"]) for x in image_xobjects(pdf))
    assert 800 in widths and 2400 not in widths


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_other_photo_formats_are_drawn(sample_inputs: PosterInputs, tmp_path: Path, fmt: str) -> None:
    photo = sample_photo(seed=3, size=(300, 400), fmt=fmt)
    pdf = render_poster(BUNDLED_ASSETS, replace(sample_inputs, photo=photo), preview=False)
    template = load_template(BUNDLED_ASSETS, "a4-portrait")
    assert box_pixels(rasterize(pdf, tmp_path), template, template.photo.box).std(axis=(0, 1)).max() > 15


def test_transparent_png_photo_keeps_its_alpha(sample_inputs: PosterInputs) -> None:
    image = Image.new("RGBA", (200, 200), (200, 40, 40, 255))
    image.paste((0, 0, 0, 0), (0, 0, 100, 200))
    out = io.BytesIO()
    image.save(out, "PNG")
    pdf = render_poster(BUNDLED_ASSETS, replace(sample_inputs, photo=out.getvalue()), preview=False)
    assert any("/SMask" in x for x in image_xobjects(pdf))


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_respected(sample_inputs: PosterInputs, tmp_path: Path, orientation: int) -> None:
    upright = quadrant_photo((400, 400))
    transpose = _STORE_FOR_ORIENTATION[orientation]
    stored = upright if transpose is None else upright.transpose(transpose)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    stored.save(out, "JPEG", quality=95, exif=exif.tobytes())
    pdf = render_poster(BUNDLED_ASSETS, replace(sample_inputs, photo=out.getvalue()), preview=False)
    template = load_template(BUNDLED_ASSETS, "a4-portrait")
    box = template.photo.box
    quarter = Box(box.x_mm, box.y_mm, box.width_mm / 2, box.height_mm / 2)
    page = rasterize(pdf, tmp_path)
    for dx, dy, color in ((0, 0, "#DC1E1E"), (1, 0, "#1EC81E"), (0, 1, "#1E1EDC"), (1, 1, "#E6DC1E")):
        corner = replace(quarter, x_mm=box.x_mm + dx * quarter.width_mm, y_mm=box.y_mm + dy * quarter.height_mm)
        assert share_near(box_pixels(page, template, corner, inset=0.25), color) > 0.9, (dx, dy, color)


def _variant(assets: Path, name: str, old: str, new: str, base: str = "a4-portrait") -> None:
    text = (assets / "templates" / f"{base}.toml").read_text()
    assert old in text
    (assets / "templates" / f"{name}.toml").write_text(text.replace(old, new))


def test_cover_fills_the_photo_box_and_contain_leaves_bands(
    assets_dir: Path, sample_inputs: PosterInputs, tmp_path: Path
) -> None:
    _variant(assets_dir, "covered", 'fit = "cover"', 'fit = "cover"')
    _variant(assets_dir, "contained", 'fit = "cover"', 'fit = "contain"')
    wide = Image.new("RGB", (800, 200), (220, 30, 30))  # 4:1 into a square box
    out = io.BytesIO()
    wide.save(out, "JPEG")
    template = load_template(assets_dir, "covered")
    box = template.photo.box
    top_band = Box(box.x_mm, box.y_mm, box.width_mm, box.height_mm * 0.3)
    middle = Box(box.x_mm, box.y_mm + box.height_mm * 0.4, box.width_mm, box.height_mm * 0.2)
    red = {}
    for name in ("covered", "contained"):
        pdf = render_poster(assets_dir, replace(sample_inputs, template=name, photo=out.getvalue()), preview=False)
        page = rasterize(pdf, tmp_path)
        red[name] = tuple(share_near(box_pixels(page, template, part), "#DC1E1E") for part in (top_band, middle))
    assert red["covered"][0] > 0.95 and red["covered"][1] > 0.95
    assert red["contained"][0] < 0.05 and red["contained"][1] > 0.95


# --------------------------------------------------------------------------------------- the text


def test_title_shrinks_to_fit_then_wraps_then_is_refused() -> None:
    template = load_template(BUNDLED_ASSETS, "a4-portrait")
    spec = template.title
    font = load_font(BUNDLED_ASSETS / "fonts" / spec.font)
    short = fit_text("Zoë & Ömer", font, template, spec, "title")
    assert short.size == spec.max_pt and short.lines == ("Zoë & Ömer",)
    medium = fit_text("Zoë & Ömer, forever and a day", font, template, spec, "title")
    assert spec.min_pt <= medium.size < spec.max_pt and len(medium.lines) == 1
    long_title = "Zoë & Ömer, forever and a day, under the old lime tree by the river in Ljubljana"
    wrapped = fit_text(long_title, font, template, spec, "title")
    assert len(wrapped.lines) == 2 and " ".join(wrapped.lines) == long_title
    box_pt = spec.box.width_mm / MM_PER_PT
    assert all(stringWidth(line, font, wrapped.size) <= box_pt for line in wrapped.lines)
    with pytest.raises(StepError) as caught:
        fit_text(long_title * 4, font, template, spec, "title")
    assert caught.value.error_class is ErrorClass.BAD_INPUT and "too long" in caught.value.message


def test_customer_text_is_never_read_as_markup(sample_inputs: PosterInputs) -> None:
    title = "<b>Zoë</b> & <font color=red>Ömer</font>"
    pdf = render_poster(BUNDLED_ASSETS, replace(sample_inputs, title=title, subtitle="&amp; <br/>"), preview=False)
    text = page_text(pdf).replace("\n", " ")
    assert "<b>Zoë</b>" in text and "<font color=red>Ömer</font>" in text and "&amp; <br/>" in text.lower()


def test_invisible_characters_are_dropped_not_drawn(sample_inputs: PosterInputs) -> None:
    title = "Zoë\u200b &\u00ad Ömer \u2665\ufe0f\n"
    pdf = render_poster(BUNDLED_ASSETS, replace(sample_inputs, title=title), preview=False)
    assert "Zoë & Ömer \u2665" in page_text(pdf)


def test_text_the_font_cannot_draw_is_reported_with_the_font(sample_inputs: PosterInputs) -> None:
    error = bad_input(BUNDLED_ASSETS, replace(sample_inputs, title="Zoë 😀 Ömer"))
    assert "U+1F600" in error.message and "DejaVuSerif-Bold.ttf" in error.message and "title" in error.message


def test_right_to_left_text_is_reported(sample_inputs: PosterInputs) -> None:
    error = bad_input(BUNDLED_ASSETS, replace(sample_inputs, subtitle="שלום"))
    assert "right-to-left" in error.message and "subtitle" in error.message


# ----------------------------------------------------------------------------------- the waveform


def test_a_lost_waveform_image_is_redrawn_from_the_audio(sample_inputs: PosterInputs, tmp_path: Path) -> None:
    pdf = render_poster(BUNDLED_ASSETS, replace(sample_inputs, waveform_image=None), preview=False)
    template = load_template(BUNDLED_ASSETS, "a4-portrait")
    wave = box_pixels(rasterize(pdf, tmp_path), template, template.waveform.box, inset=0.02)
    assert share_near(wave, template.waveform.color) > 0.05


def test_a_damaged_waveform_image_falls_back_to_the_audio(sample_inputs: PosterInputs) -> None:
    damaged = replace(sample_inputs, waveform_image=b"\x89PNG broken")
    assert render_poster(BUNDLED_ASSETS, damaged, preview=False) == render_poster(
        BUNDLED_ASSETS, replace(sample_inputs, waveform_image=None), preview=False
    )
    error = bad_input(BUNDLED_ASSETS, replace(damaged, audio=None))
    assert "waveform image" in error.message


def test_neither_waveform_nor_audio_is_bad_input(sample_inputs: PosterInputs) -> None:
    error = bad_input(BUNDLED_ASSETS, replace(sample_inputs, waveform_image=None, audio=None))
    assert "waveform" in error.message and "audio" in error.message


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "MP3"])
def test_compressed_audio_draws_the_waveform(sample_inputs: PosterInputs, fmt: str) -> None:
    audio = sample_audio(seed=4, seconds=3.0, fmt=fmt)
    inputs = replace(sample_inputs, waveform_image=None, audio=audio, audio_name=f"memo.{fmt.lower()}")
    assert render_poster(BUNDLED_ASSETS, inputs, preview=False).startswith(b"%PDF")


# ------------------------------------------------------------------------------ bounded inputs


@pytest.mark.parametrize(
    ("size", "limit"), [((10_000, 8_500), 80_000_000), ((30_000, 30_000), RenderLimits.max_photo_pixels)],
    ids=["85MP-over-80MP", "900MP-over-the-default"],
)
def test_a_decompression_bomb_photo_is_refused_from_its_header(
    sample_inputs: PosterInputs, size: tuple[int, int], limit: int
) -> None:
    error = bad_input(BUNDLED_ASSETS, replace(sample_inputs, photo=png_header_only(*size)), max_photo_pixels=limit)
    assert "over the pixel limit" in error.message and f"{size[0]}x{size[1]} pixels" in error.message


def test_an_oversized_photo_file_is_refused(sample_inputs: PosterInputs) -> None:
    error = bad_input(BUNDLED_ASSETS, sample_inputs, max_photo_bytes=10_000)
    assert "MiB" in error.message and "limit" in error.message


def test_a_two_hour_recording_is_refused_from_its_header(sample_inputs: PosterInputs) -> None:
    out = io.BytesIO()
    soundfile.write(out, np.zeros(7200 * 1000, dtype=np.int16), 1000, format="FLAC")  # 2 h of silence
    inputs = replace(sample_inputs, waveform_image=None, audio=out.getvalue(), audio_name="x.flac")
    error = bad_input(BUNDLED_ASSETS, inputs)
    assert "2:00:00" in error.message and "limit" in error.message


# -------------------------------------------------------------- every fault names what is wrong


def test_an_unknown_template_is_bad_input_naming_the_file(assets_dir: Path, sample_inputs: PosterInputs) -> None:
    message = asset_fault(assets_dir, replace(sample_inputs, template="no-such-poster"), ErrorClass.BAD_INPUT)
    assert "unknown template 'no-such-poster'" in message
    assert str(assets_dir / "templates" / "no-such-poster.toml") in message


def test_a_template_name_that_is_a_path_is_bad_input(assets_dir: Path, sample_inputs: PosterInputs) -> None:
    message = asset_fault(assets_dir, replace(sample_inputs, template="../fonts/x"), ErrorClass.BAD_INPUT)
    assert "../fonts/x" in message


def test_missing_font_names_the_file(assets_dir: Path, sample_inputs: PosterInputs) -> None:
    font = assets_dir / "fonts" / "DejaVuSerif-Bold.ttf"
    font.unlink()
    message = asset_fault(assets_dir, sample_inputs, ErrorClass.ASSET_MISSING)
    assert str(font) in message and "missing" in message


def test_truncated_font_names_the_file(assets_dir: Path, sample_inputs: PosterInputs) -> None:
    font = assets_dir / "fonts" / "DejaVuSans.ttf"
    font.write_bytes(font.read_bytes()[:50_000])
    message = asset_fault(assets_dir, sample_inputs, ErrorClass.ASSET_MISSING)
    assert str(font) in message and "unreadable" in message


def test_template_naming_a_missing_background_names_the_file(assets_dir: Path, sample_inputs: PosterInputs) -> None:
    _variant(assets_dir, "lost-background", '"cream-paper.jpg"', '"gone.jpg"')
    message = asset_fault(assets_dir, replace(sample_inputs, template="lost-background"), ErrorClass.ASSET_MISSING)
    assert str(assets_dir / "backgrounds" / "gone.jpg") in message


def test_damaged_background_names_the_file(assets_dir: Path, sample_inputs: PosterInputs) -> None:
    background = assets_dir / "backgrounds" / "cream-paper.jpg"
    background.write_bytes(background.read_bytes()[:2000])
    message = asset_fault(assets_dir, sample_inputs, ErrorClass.ASSET_MISSING)
    assert str(background) in message and "unreadable" in message


def test_invalid_template_field_names_the_file_and_field(assets_dir: Path, sample_inputs: PosterInputs) -> None:
    _variant(assets_dir, "bad-style", 'style = "bars"', 'style = "zigzag"')
    message = asset_fault(assets_dir, replace(sample_inputs, template="bad-style"), ErrorClass.RENDER_ERROR)
    assert str(assets_dir / "templates" / "bad-style.toml") in message and "waveform.style" in message


@pytest.mark.parametrize(
    "photo",
    [b"", b"not an image at all", sample_photo(seed=5, size=(300, 400))[:3000]],
    ids=["empty", "garbage", "truncated-jpeg"],
)
def test_unreadable_photo_is_bad_input(sample_inputs: PosterInputs, photo: bytes) -> None:
    assert "photo" in bad_input(BUNDLED_ASSETS, replace(sample_inputs, photo=photo)).message


def test_unreadable_audio_is_bad_input(sample_inputs: PosterInputs) -> None:
    inputs = replace(sample_inputs, waveform_image=None, audio=b"RIFF\x00\x00broken", audio_name="memo.wav")
    assert "audio 'memo.wav' could not be decoded" in bad_input(BUNDLED_ASSETS, inputs).message


def test_a_new_template_is_a_new_file(assets_dir: Path, sample_inputs: PosterInputs) -> None:
    _variant(assets_dir, "letter-portrait", "width_mm = 210\nheight_mm = 297", "width_mm = 216\nheight_mm = 279")
    _variant(assets_dir, "letter-portrait", "[18, 268, 174, 12]", "[18, 262, 174, 10]", base="letter-portrait")
    pdf = render_poster(assets_dir, replace(sample_inputs, template="letter-portrait"), preview=False)
    trim = PdfReader(io.BytesIO(pdf)).pages[0].trimbox
    assert float(trim.width) * MM_PER_PT == pytest.approx(216, abs=0.01)
