"""A template's fonts and background are judged once: the assets check and a render refuse a broken
file with the same message, because both load it through fulfilment.render.assets."""

from __future__ import annotations

from pathlib import Path

import pytest

from fulfilment.errors import ErrorClass, StepError
from fulfilment.render import PosterInputs, render_poster
from fulfilment.render.assets import template_asset_problems
from fulfilment.templates import load_template

A4 = "a4-portrait"


@pytest.mark.parametrize(
    "damaged", [Path("fonts/DejaVuSerif-Bold.ttf"), Path("backgrounds/cream-paper.jpg")], ids=["font", "background"]
)
def test_a_damaged_asset_is_refused_by_check_and_render_alike(
    assets_dir: Path, sample_inputs: PosterInputs, damaged: Path
) -> None:
    path = assets_dir / damaged
    path.write_bytes(path.read_bytes()[:1500])  # cut short, as by an interrupted copy

    problems = template_asset_problems(assets_dir, load_template(assets_dir, A4))
    with pytest.raises(StepError) as caught:
        render_poster(assets_dir, sample_inputs, preview=True)

    assert caught.value.error_class is ErrorClass.ASSET_MISSING
    assert problems == [caught.value.message]
    assert str(path) in problems[0]
