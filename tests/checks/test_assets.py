"""The assets check on a private copy of the real fonts, templates and backgrounds: each kind of
damage fails naming the file, the repair turns it green, and the canary render is redone only when
an asset file changes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from checks.assets import AssetsCheck
from checks.base import CheckResult, Runbook, Status, run_check
from healer.render.pool import RenderPool
from tests.fakes.render_fixtures import BUNDLED_ASSETS, render_processes

FONT = "DejaVuSans.ttf"  # a subtitle font of most templates


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path} no longer holds {old!r}: update the test"
    path.write_text(text.replace(old, new))


def _failing(result: CheckResult) -> CheckResult:
    assert result.status is Status.FAILING, result.detail
    assert result.runbook is Runbook.PDF_GENERATION
    assert result.remedy.startswith("Runbook 3")
    return result


def test_intact_assets_pass_with_a_canary_render_of_every_template(assets_dir: Path) -> None:
    result = run_check(AssetsCheck(assets_dir=assets_dir))

    assert result.status is Status.OK, result.detail
    templates = len(list((assets_dir / "templates").glob("*.toml")))
    assert result.detail.startswith(f"{templates} templates valid, canary rendered")
    assert result.data["templates"] == templates and result.data["templates_broken"] == 0
    assert result.data["canary_cached"] == 0 and result.data["canary_seconds"] > 0


def test_a_deleted_font_fails_naming_the_file_and_recovers_when_restored(assets_dir: Path) -> None:
    check = AssetsCheck(assets_dir=assets_dir)
    font = assets_dir / "fonts" / FONT
    font.unlink()

    result = _failing(run_check(check))
    assert f"font file {font} is missing" in result.detail
    naming_it = [t for t in (assets_dir / "templates").glob("*.toml") if f'"{FONT}"' in t.read_text()]
    assert result.data["templates_broken"] == len(naming_it) > 0

    shutil.copy2(BUNDLED_ASSETS / "fonts" / FONT, font)
    assert run_check(check).status is Status.OK


def test_a_truncated_font_fails_as_unreadable_and_recovers_when_replaced(assets_dir: Path) -> None:
    check = AssetsCheck(assets_dir=assets_dir)
    assert run_check(check).status is Status.OK
    font = assets_dir / "fonts" / FONT
    font.write_bytes(font.read_bytes()[:4096])  # an interrupted copy

    result = _failing(run_check(check))
    assert f"font file {font} is unreadable" in result.detail

    shutil.copy2(BUNDLED_ASSETS / "fonts" / FONT, font)
    assert run_check(check).status is Status.OK


def test_a_template_naming_a_missing_background_fails_naming_both(assets_dir: Path) -> None:
    check = AssetsCheck(assets_dir=assets_dir)
    template = assets_dir / "templates" / "a4-portrait.toml"
    _replace(template, 'image = "cream-paper.jpg"', 'image = "cream-papr.jpg"')

    result = _failing(run_check(check))
    assert result.detail == f"a4-portrait: background file {assets_dir / 'backgrounds' / 'cream-papr.jpg'} is missing"
    assert result.data["templates_broken"] == 1

    _replace(template, 'image = "cream-papr.jpg"', 'image = "cream-paper.jpg"')
    assert run_check(check).status is Status.OK


def test_an_invalid_template_field_fails_naming_the_file_and_the_field(assets_dir: Path) -> None:
    check = AssetsCheck(assets_dir=assets_dir)
    template = assets_dir / "templates" / "square-30x30.toml"
    original = template.read_text()
    template.write_text(original.replace("[photo]\n", "[photo]\ncolour = \"#FFFFFF\"\n", 1))

    result = _failing(run_check(check))
    assert result.detail == f"square-30x30: template file {template}: field 'photo.colour': is not a known field"

    template.write_text(original)
    assert run_check(check).status is Status.OK


def test_a_template_that_validates_but_cannot_render_is_caught_by_the_canary(assets_dir: Path) -> None:
    template = assets_dir / "templates" / "a4-portrait.toml"
    # A valid title box a few millimetres wide: no title fits, which only drawing reveals.
    _replace(template, "box_mm = [18, 243, 174, 24]", "box_mm = [18, 243, 4, 24]")

    result = _failing(run_check(AssetsCheck(assets_dir=assets_dir)))
    assert result.detail.startswith("a4-portrait: title is too long for template 'a4-portrait'")

    assert run_check(AssetsCheck(assets_dir=assets_dir, canary=False)).status is Status.OK


def test_the_canary_render_is_cached_until_an_asset_file_changes(assets_dir: Path) -> None:
    check = AssetsCheck(assets_dir=assets_dir)
    first = run_check(check)
    assert first.data["canary_cached"] == 0

    again = run_check(check)
    assert again.status is Status.OK
    assert again.data["canary_cached"] == 1
    assert again.detail.endswith("(cached, files unchanged)")

    background = assets_dir / "backgrounds" / "midnight.jpg"
    stat = background.stat()
    os.utime(background, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: redo
    assert run_check(check).data["canary_cached"] == 0
    assert run_check(check).data["canary_cached"] == 1

    (assets_dir / "fonts" / "Extra.ttf").write_bytes(b"")  # a new file, even one no template names
    assert run_check(check).data["canary_cached"] == 0


def test_a_failing_verdict_is_cached_too_and_dropped_when_the_file_is_fixed(assets_dir: Path) -> None:
    check = AssetsCheck(assets_dir=assets_dir)
    font = assets_dir / "fonts" / FONT
    font.write_bytes(b"not a font")

    assert _failing(run_check(check)).data["canary_cached"] == 0
    assert _failing(run_check(check)).data["canary_cached"] == 1

    shutil.copy2(BUNDLED_ASSETS / "fonts" / FONT, font)
    assert run_check(check).status is Status.OK


def test_no_templates_at_all_fails_naming_the_directory(assets_dir: Path) -> None:
    for template in (assets_dir / "templates").glob("*.toml"):
        template.unlink()

    result = _failing(run_check(AssetsCheck(assets_dir=assets_dir)))
    assert result.detail == f"no templates (*.toml) in {assets_dir / 'templates'}"


def test_in_a_render_process_the_canary_renders_and_names_a_broken_file_the_same_way(
    assets_dir: Path, tmp_path: Path
) -> None:
    # The daemon's way: its render pool renders the canary, and that render loads every font and
    # background, so a broken file is named with the same message as when the check loads it itself.
    pool = RenderPool(assets_dir, 1, tmp_path / "scratch")
    others = set(render_processes(os.getpid()))
    try:
        check = AssetsCheck(assets_dir=assets_dir, render=pool)
        result = run_check(check)
        assert result.status is Status.OK, result.detail
        templates = len(list((assets_dir / "templates").glob("*.toml")))
        assert result.detail.startswith(f"{templates} templates valid, canary rendered")
        assert len(set(render_processes(os.getpid())) - others) == 1  # it rendered there

        font = assets_dir / "fonts" / FONT
        font.write_bytes(font.read_bytes()[:4096])  # an interrupted copy
        broken = _failing(run_check(check))
        assert f"font file {font} is unreadable" in broken.detail
        assert broken.data["templates_broken"] > 0

        shutil.copy2(BUNDLED_ASSETS / "fonts" / FONT, font)
        assert run_check(check).status is Status.OK
    finally:
        pool.shutdown()
