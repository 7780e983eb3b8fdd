"""Generate the poster backgrounds in `poster_assets/backgrounds/`, reproducibly; nothing is downloaded.

Run `.venv/bin/python scripts/generate_backgrounds.py` after changing a recipe and commit the
images with it. Each
image comes from a fixed seed, so running it again writes the same bytes (with the same Pillow and
libjpeg). The images are small on purpose: they hold only soft, low-frequency shapes, which stay
smooth when a template stretches them over a 50 x 70 cm page, and they keep the repository light.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUNDS = Path(__file__).resolve().parents[1] / "poster_assets" / "backgrounds"

Pixels = np.ndarray  # float32, height x width x 3, 0..255


@dataclass(frozen=True)
class Recipe:
    file_name: str
    size: tuple[int, int]  # width, height in pixels
    seed: int
    paint: Callable[[np.random.Generator, int, int], Pixels]


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float32)


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates 0..1 across and down the image."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs / (width - 1), ys / (height - 1)


def _blend(a: str, b: str, t: np.ndarray) -> Pixels:
    return _rgb(a) + (_rgb(b) - _rgb(a)) * t[..., None]


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Large soft blotches in -1..1: a coarse random grid upscaled with a smooth filter."""
    coarse = rng.uniform(0, 255, size=(max(2, cells * height // width), cells)).astype(np.uint8)
    image = Image.fromarray(coarse, "L").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 127.5 - 1.0


def _vignette(x: np.ndarray, y: np.ndarray, strength: float) -> np.ndarray:
    r = np.hypot(x - 0.5, y - 0.5) / np.hypot(0.5, 0.5)
    return 1.0 - strength * r**2


def _soft_disc(x: np.ndarray, y: np.ndarray, cx: float, cy: float, radius: float, aspect: float) -> np.ndarray:
    d = np.hypot((x - cx) * aspect, y - cy) / radius
    return np.clip(1.0 - d, 0.0, 1.0) ** 1.5


def cream_paper(rng: np.random.Generator, width: int, height: int) -> Pixels:
    x, y = _grid(width, height)
    base = _blend("#F8F3EA", "#EFE6D6", y)
    mottle = _smooth_noise(rng, width, height, 14)[..., None] * 3.0
    return (base + mottle) * _vignette(x, y, 0.07)[..., None]


def midnight(rng: np.random.Generator, width: int, height: int) -> Pixels:
    x, y = _grid(width, height)
    aspect = width / height
    pixels = _blend("#101733", "#1E2150", y)
    glow = _soft_disc(x, y, 0.5, 0.18, 0.75, aspect)
    pixels += glow[..., None] * (_rgb("#3B4390") - _rgb("#101733")) * 0.6
    for _ in range(28):  # out-of-focus specks of light
        cx, cy = rng.uniform(0.03, 0.97), rng.uniform(0.03, 0.97)
        radius = rng.uniform(0.006, 0.02)
        pixels += _soft_disc(x, y, cx, cy, radius, aspect)[..., None] * rng.uniform(40, 110)
    return pixels * _vignette(x, y, 0.25)[..., None]


def blush(rng: np.random.Generator, width: int, height: int) -> Pixels:
    x, y = _grid(width, height)
    aspect = width / height
    pixels = _blend("#FBE8DC", "#F0C9CB", np.clip((x + y) / 2, 0, 1))
    for _ in range(9):  # large translucent circles, like light through gauze
        cx, cy = rng.uniform(-0.1, 1.1), rng.uniform(-0.1, 1.1)
        disc = _soft_disc(x, y, cx, cy, rng.uniform(0.15, 0.45), aspect) ** 0.4
        pixels += disc[..., None] * (255.0 - pixels) * 0.18
    return pixels


def sage_rings(rng: np.random.Generator, width: int, height: int) -> Pixels:
    x, y = _grid(width, height)
    aspect = width / height
    pixels = _blend("#E3EADB", "#C8D5C0", y)
    # Faint rings spreading from below the page: sound travelling outwards.
    r = np.hypot((x - 0.5) * aspect, y - 1.15)
    phase = rng.uniform(0, 2 * np.pi)
    rings = (0.5 + 0.5 * np.cos(r * 2 * np.pi * 9 + phase)) ** 6 * np.clip(1.4 - r, 0, 1)
    pixels -= rings[..., None] * 9.0
    return pixels * _vignette(x, y, 0.08)[..., None]


RECIPES = (
    Recipe("cream-paper.jpg", (1000, 1414), 11, cream_paper),
    Recipe("midnight.jpg", (1000, 1414), 23, midnight),
    Recipe("blush.jpg", (1000, 1400), 37, blush),
    Recipe("sage-rings.jpg", (1000, 1000), 41, sage_rings),
)


def render(recipe: Recipe) -> bytes:
    rng = np.random.default_rng(recipe.seed)
    width, height = recipe.size
    pixels = recipe.paint(rng, width, height)
    # Half a level of dither hides the banding that 8-bit gradients show on large prints.
    pixels = pixels + rng.uniform(-0.5, 0.5, size=pixels.shape)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=88, optimize=True)
    return out.getvalue()


def main() -> None:
    for recipe in RECIPES:
        data = render(recipe)
        (BACKGROUNDS / recipe.file_name).write_bytes(data)
        print(f"{recipe.file_name}: {recipe.size[0]}x{recipe.size[1]}, {len(data) // 1024} KiB")


if __name__ == "__main__":
    main()
