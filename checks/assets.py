"""Poster assets: every template loads and validates, the fonts and background it names load, and a
full canary render of each template succeeds.

A canary render costs around a second for all templates, and the assets change only when someone
deploys or edits them, so the whole verdict is cached under a fingerprint of the asset files (name,
size, mtime of every file in `templates/`, `fonts/`, `backgrounds/`): the next probe with the same
fingerprint reuses it, and any added, removed, replaced or touched file makes the next probe redo
it all. Every failure names the file, because the reader has to go and fix that file.

The daemon hands the check its render pool (`render`): the canary is then rendered in a render
process, and the daemon's own process never imports ReportLab, Pillow or numpy (25 MiB resident
once it has rendered, held for good). The canary render loads every font and the background the way an order's
render does, so it names a broken file with the same message, but stops at the first one. Without
`render` (`healer check`, a process of its own), the files are loaded here first, every problem
is listed, and the canary is rendered here too.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import struct
import threading
import time
import wave
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from checks.base import Check, CheckFailed, Healthy, Runbook
from fulfilment.errors import ErrorClass, StepError
from fulfilment.render.inputs import PosterInputs
from fulfilment.templates import (
    BACKGROUNDS_DIR,
    FONTS_DIR,
    TEMPLATES_DIR,
    list_templates,
    load_template,
)

log = logging.getLogger(__name__)

CANARY_TITLE = "Canary"
CANARY_SUBTITLE = "health check render"
# A failed canary for these reasons says nothing about the files, so it is not remembered.
_TRANSIENT = (ErrorClass.RESOURCES, ErrorClass.INTERNAL)

Fingerprint = tuple[tuple[str, int, int], ...]
# The final poster as PDF bytes, from the assets this check judges (healer.render.pool.RenderPool).
CanaryRender = Callable[[PosterInputs], bytes]


@dataclass(frozen=True)
class Verdict:
    """What the asset files were found to be, for one fingerprint."""

    templates: int
    problems: tuple[str, ...]  # one line each, naming the file
    canary_seconds: float
    cacheable: bool


class VerdictCache:
    """The last verdict and the fingerprint it was made for; shared by the probes of one check."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: tuple[Fingerprint, Verdict] | None = None

    def get(self, fingerprint: Fingerprint) -> Verdict | None:
        with self._lock:
            if self._entry is not None and self._entry[0] == fingerprint:
                return self._entry[1]
            return None

    def put(self, fingerprint: Fingerprint, verdict: Verdict) -> None:
        with self._lock:
            self._entry = (fingerprint, verdict) if verdict.cacheable else None

    def clear(self) -> None:
        with self._lock:
            self._entry = None


@dataclass(frozen=True, kw_only=True)
class AssetsCheck(Check):
    name: ClassVar[str] = "assets"
    runbook: ClassVar[Runbook] = Runbook.PDF_GENERATION

    assets_dir: Path
    canary: bool = True  # render each template; off, only files are loaded and validated
    timeout_seconds: float = 60.0  # the first probe renders every template
    # Renders wait on this check (step gating); readiness does not: orders are still taken and queued.
    critical: bool = False
    cache: VerdictCache = field(default_factory=VerdictCache, compare=False, repr=False)
    # Renders the canary in a render process; None: here (see the module docstring).
    render: CanaryRender | None = field(default=None, compare=False, repr=False)

    def probe(self) -> str | Healthy:
        assets_dir = Path(self.assets_dir)
        fingerprint = asset_fingerprint(assets_dir)
        verdict = self.cache.get(fingerprint)
        cached = verdict is not None
        if verdict is None:
            verdict = self._judge(assets_dir)
            self.cache.put(fingerprint, verdict)
        data = {
            "templates": float(verdict.templates),
            "templates_broken": float(len(verdict.problems)),
            "canary_seconds": round(verdict.canary_seconds, 4),
            "canary_cached": 1.0 if cached else 0.0,
        }
        if verdict.problems:
            raise CheckFailed("; ".join(verdict.problems), _remedy(assets_dir), data)
        rendered = "canary rendered" if self.canary else "canary off"
        when = "cached, files unchanged" if cached else f"{verdict.canary_seconds:.2f}s"
        return Healthy(f"{verdict.templates} templates valid, {rendered} ({when})", data)

    def invalidate(self) -> None:
        # A render that failed on files whose fingerprint did not change (a font unreadable now,
        # say) is judged again by a canary render, not by the verdict cached for those files.
        self.cache.clear()

    def _judge(self, assets_dir: Path) -> Verdict:
        try:
            names = list_templates(assets_dir)
        except StepError as error:
            return Verdict(0, (error.message,), 0.0, True)
        if not names:
            return Verdict(0, (f"no templates (*.toml) in {assets_dir / TEMPLATES_DIR}",), 0.0, True)
        problems: list[str] = []
        cacheable = True
        started = time.perf_counter()
        for name in names:
            problem = self._template_problem(assets_dir, name)
            if problem is not None:
                problems.append(f"{name}: {problem.message}")
                cacheable = cacheable and problem.error_class not in _TRANSIENT
        return Verdict(len(names), tuple(problems), time.perf_counter() - started, cacheable)

    def _template_problem(self, assets_dir: Path, name: str) -> StepError | None:
        try:
            template = load_template(assets_dir, name)
        except StepError as error:
            return error
        if self.render is None or not self.canary:
            # Loads the files with ReportLab and Pillow, in this process.
            from fulfilment.render.assets import template_asset_problems

            missing = template_asset_problems(assets_dir, template)
            if missing:
                return StepError(ErrorClass.ASSET_MISSING, "; ".join(missing))
        if not self.canary:
            return None
        try:
            self._render_canary(assets_dir, canary_inputs(name))
        except StepError as error:
            log.warning("Canary render of template %s failed: %s", name, error.message)
            return error
        return None

    def _render_canary(self, assets_dir: Path, inputs: PosterInputs) -> None:
        if self.render is not None:
            self.render(inputs)
            return
        from fulfilment.render.poster import render_poster

        render_poster(assets_dir, inputs, preview=False)


def asset_fingerprint(assets_dir: Path) -> Fingerprint:
    """(relative path, size, mtime) of every file the renderer may read; cheap: stat calls only."""
    entries = []
    for sub in (TEMPLATES_DIR, FONTS_DIR, BACKGROUNDS_DIR):
        directory = assets_dir / sub
        if not directory.is_dir():
            entries.append((sub, -1, -1))  # a missing directory is a state of its own
            continue
        for path in sorted(directory.iterdir()):
            try:
                stat = path.stat()
            except OSError:  # vanished or unreadable since listing: differs from any good state
                entries.append((f"{sub}/{path.name}", -1, -1))
                continue
            entries.append((f"{sub}/{path.name}", stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def canary_inputs(template: str) -> PosterInputs:
    return PosterInputs(
        template=template,
        title=CANARY_TITLE,
        subtitle=CANARY_SUBTITLE,
        photo=_canary_photo(),
        waveform_image=None,  # drawn from the audio: the path a lost waveform takes, too
        audio=_canary_audio(),
        audio_name="canary.wav",
    )


@functools.cache
def _canary_photo(width: int = 96, height: int = 128) -> bytes:
    # A small grey gradient PNG, written with zlib so that the daemon's process need not import
    # Pillow to make it; the render decodes it like a customer's PNG.
    rows = b"".join(b"\x00" + bytes([255 * y // (height - 1)]) * width for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows)) + (
        _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def _canary_audio(seconds: float = 0.5, rate: int = 8000) -> bytes:
    # A rising-and-falling tone, so the waveform has a shape rather than a flat line.
    frames = int(seconds * rate)
    samples = (
        int(20000 * math.sin(math.pi * i / frames) * math.sin(2 * math.pi * 220 * i / rate))
        for i in range(frames)
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(rate)
        sound.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return out.getvalue()


def _remedy(assets_dir: Path) -> str:
    return (
        f"Runbook 3: restore or fix the named files under {assets_dir} ({FONTS_DIR}/, "
        f"{TEMPLATES_DIR}/, {BACKGROUNDS_DIR}/) from the release image or the repository, then check "
        f"with `healer check assets`. Renders wait while this check fails and resume when it is green."
    )
