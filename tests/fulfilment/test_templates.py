"""Poster templates: the shipped files are valid and complete, and every mistake names file and field."""

from __future__ import annotations

import importlib.util
import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reportlab.pdfbase.ttfonts import TTFontFile

from fulfilment.errors import ErrorClass, StepError
from fulfilment.render.assets import template_asset_problems
from fulfilment.templates import Fit, WaveStyle, list_templates, load_template
from tests.fakes.render_fixtures import BUNDLED_ASSETS

A4 = "a4-portrait"
GENERATOR = Path(__file__).resolve().parents[2] / "scripts" / "generate_backgrounds.py"


def write_variant(assets: Path, name: str, old: str, new: str) -> Path:
    text = (assets / "templates" / f"{A4}.toml").read_text()
    assert old in text, old
    path = assets / "templates" / f"{name}.toml"
    path.write_text(text.replace(old, new))
    return path


def load_error(assets: Path, name: str) -> StepError:
    with pytest.raises(StepError) as caught:
        load_template(assets, name)
    return caught.value


# ------------------------------------------------------------------------------ shipped templates


def test_shipped_templates_load_and_have_all_their_assets() -> None:
    names = list_templates(BUNDLED_ASSETS)
    assert len(names) >= 4
    for name in names:
        template = load_template(BUNDLED_ASSETS, name)
        assert template_asset_problems(BUNDLED_ASSETS, template) == [], name


def test_shipped_templates_offer_the_sizes_the_shop_sells() -> None:
    templates = [load_template(BUNDLED_ASSETS, name) for name in list_templates(BUNDLED_ASSETS)]
    sizes = {(t.page.width_mm, t.page.height_mm) for t in templates}
    assert {(210, 297), (297, 420), (500, 700), (300, 300)} <= sizes


def test_shipped_templates_use_both_fits_and_both_waveform_styles() -> None:
    templates = [load_template(BUNDLED_ASSETS, n) for n in list_templates(BUNDLED_ASSETS)]
    assert {t.photo.fit for t in templates} == set(Fit)
    assert {t.waveform.style for t in templates} == set(WaveStyle)


def test_shipped_fonts_cover_accented_latin_and_carry_their_licence() -> None:
    fonts = sorted((BUNDLED_ASSETS / "fonts").glob("*.ttf"))
    assert 2 <= len(fonts) <= 4
    assert sum(f.stat().st_size for f in fonts) < 3 * 2**20
    for font in fonts:
        glyphs = TTFontFile(str(font)).charToGlyph
        assert all(ord(ch) in glyphs for ch in "Zoë & Ömer ÀÉÎÕÜçñßøåæœŁőűčšž ’“”–—·"), font.name
    licence = (BUNDLED_ASSETS / "fonts" / "LICENSE-DejaVu.txt").read_text()
    assert "Bitstream" in licence and "Permission is hereby granted" in licence


def test_backgrounds_are_what_the_committed_script_generates(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("generate_backgrounds", GENERATOR)
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, generate)  # dataclasses look their module up there
    spec.loader.exec_module(generate)
    for recipe in generate.RECIPES:
        committed = np.asarray(Image.open(BUNDLED_ASSETS / "backgrounds" / recipe.file_name), dtype=np.int16)
        fresh = np.asarray(Image.open(io.BytesIO(generate.render(recipe))), dtype=np.int16)
        # Pixels, not bytes: another libjpeg may encode the same picture a little differently.
        assert fresh.shape == committed.shape and np.abs(fresh - committed).mean() < 1.0, recipe.file_name


# ----------------------------------------------------------------------------- finding templates


def test_a_new_file_is_a_new_template(assets_dir: Path) -> None:
    write_variant(assets_dir, "a4-landscape-ish", 'label = "A4 portrait (210 x 297 mm)"', 'label = "Another"')
    assert "a4-landscape-ish" in list_templates(assets_dir)
    assert load_template(assets_dir, "a4-landscape-ish").label == "Another"


def test_an_unknown_template_is_bad_input_naming_the_path(assets_dir: Path) -> None:
    # The order names a template the shop does not have: no retry can help; fix the order.
    error = load_error(assets_dir, "gone")
    assert error.error_class is ErrorClass.BAD_INPUT
    assert "unknown template 'gone'" in error.message
    assert str(assets_dir / "templates" / "gone.toml") in error.message


def test_a_template_without_its_directory_is_an_asset_fault(assets_dir: Path) -> None:
    shutil.rmtree(assets_dir / "templates")
    error = load_error(assets_dir, "a4-portrait")
    assert error.error_class is ErrorClass.ASSET_MISSING
    assert str(assets_dir / "templates" / "a4-portrait.toml") in error.message


def test_missing_templates_directory_is_an_asset_fault(tmp_path: Path) -> None:
    with pytest.raises(StepError) as caught:
        list_templates(tmp_path)
    assert caught.value.error_class is ErrorClass.ASSET_MISSING and str(tmp_path / "templates") in caught.value.message


@pytest.mark.parametrize("name", ["../secrets", "A4", "a4/portrait", "", "x" * 80])
def test_template_names_are_never_paths(assets_dir: Path, name: str) -> None:
    assert load_error(assets_dir, name).error_class is ErrorClass.BAD_INPUT


# ------------------------------------------------------------------------- validation of fields


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("box_mm = [18, 18, 174, 174]", "box_mm = [18, 18, 174]", "photo.box_mm"),
        ("box_mm = [18, 18, 174, 174]", "box_mm = [18, 18, -5, 174]", "photo.box_mm"),
        ("box_mm = [18, 200, 174, 36]", "box_mm = [100, 200, 174, 36]", "waveform.box_mm"),
        ('style = "bars"', 'style = "zigzag"', "waveform.style"),
        ("samples = 110", 'samples = "lots"', "waveform.samples"),
        ("gap = 0.4", "gap = 2", "waveform.gap"),
        ('color = "#1F1F1F"', 'color = "black"', "title.color"),
        ('color = "#1F1F1F"', 'colour = "#1F1F1F"', "title.colour"),
        ("min_pt = 16", "min_pt = 60", "title.min_pt"),
        ('font = "DejaVuSerif-Bold.ttf"', 'font = "../DejaVuSerif-Bold.ttf"', "title.font"),
        ('fit = "cover"', 'fit = "stretch"', "photo.fit"),
        ("width_mm = 210", 'width_mm = "210"', "page.width_mm"),
        ("bleed_mm = 3", "bleed_mm = 3\norientation = 1", "page.orientation"),
        ("[subtitle]", "[sub_title]", "subtitle"),
    ],
)
def test_invalid_field_names_the_file_and_the_field(assets_dir: Path, old: str, new: str, field: str) -> None:
    path = write_variant(assets_dir, "broken", old, new)
    error = load_error(assets_dir, "broken")
    assert error.error_class is ErrorClass.RENDER_ERROR
    assert str(path) in error.message and f"'{field}'" in error.message, error.message


def test_invalid_toml_names_the_file_and_the_line(assets_dir: Path) -> None:
    path = write_variant(assets_dir, "broken", "[photo]", "[photo")
    error = load_error(assets_dir, "broken")
    assert error.error_class is ErrorClass.RENDER_ERROR
    assert str(path) in error.message and "line" in error.message


# ---------------------------------------------------------------- the files a template depends on


def test_asset_problems_name_a_missing_font(assets_dir: Path) -> None:
    (assets_dir / "fonts" / "DejaVuSans.ttf").unlink()
    problems = template_asset_problems(assets_dir, load_template(assets_dir, A4))
    assert problems == [f"font file {assets_dir / 'fonts' / 'DejaVuSans.ttf'} is missing"]


def test_asset_problems_name_a_truncated_font(assets_dir: Path) -> None:
    font = assets_dir / "fonts" / "DejaVuSerif-Bold.ttf"
    font.write_bytes(font.read_bytes()[:40_000])
    problems = template_asset_problems(assets_dir, load_template(assets_dir, A4))
    assert len(problems) == 1 and str(font) in problems[0] and "unreadable" in problems[0]


def test_asset_problems_see_a_font_replaced_in_place(assets_dir: Path) -> None:
    template = load_template(assets_dir, A4)
    assert template_asset_problems(assets_dir, template) == []
    font = assets_dir / "fonts" / "DejaVuSans.ttf"
    font.write_bytes(b"\0\1\0\0" + b"\0" * 100)  # same path, new size: the cached verdict must not stick
    assert len(template_asset_problems(assets_dir, template)) == 1


def test_asset_problems_name_a_missing_background(assets_dir: Path) -> None:
    write_variant(assets_dir, "lost", '"cream-paper.jpg"', '"gone.jpg"')
    problems = template_asset_problems(assets_dir, load_template(assets_dir, "lost"))
    assert problems == [f"background file {assets_dir / 'backgrounds' / 'gone.jpg'} is missing"]


def test_asset_problems_name_a_damaged_background(assets_dir: Path) -> None:
    background = assets_dir / "backgrounds" / "cream-paper.jpg"
    background.write_bytes(background.read_bytes()[:1500])
    problems = template_asset_problems(assets_dir, load_template(assets_dir, A4))
    assert len(problems) == 1 and str(background) in problems[0]
