"""Render time and peak memory per template: a 12-megapixel photo (JPEG vs PNG) and 3 minutes of audio.

    .venv/bin/python bench/render_bench.py [--repeats 3] [--assets DIR]

Every case runs in a fresh process, as a render does in the worker pool, so the peak resident
memory it reports belongs to that render alone: the rise of the resident set's high-water mark over
the first render (fonts loaded, as in a cold worker), above what the process held before it with
the uploads already in memory. The time is the median of the following warm renders. Each number is
also given as a ratio to the baseline case (the A4 template with a phone-sized 2-megapixel JPEG)
measured in the same run, so runs on different machines can be compared by their ratios.

The waveform image is left out on purpose, so each render also decodes the whole audio file: the
path taken when the shop's waveform has been lost, and the most expensive one.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fulfilment.render import PosterInputs, render_poster
from fulfilment.templates import list_templates
from healer.demo.samples import sample_audio, sample_photo
from poster_assets import bundled_assets_dir

TITLE = "Zoë & Ömer"
SUBTITLE = "14 February 2025 · Our first dance"


@dataclass(frozen=True)
class Case:
    label: str
    template: str
    photo: str  # file name in the inputs directory
    audio: str
    preview: bool = False


@dataclass(frozen=True)
class Measurement:
    case: Case
    seconds: float
    peak_mib: float
    pdf_mib: float


def make_inputs(directory: Path) -> None:
    """Generate the uploads once, in the parent, so no case pays for making them."""
    files = {
        "small.jpg": lambda: sample_photo(seed=1, size=(1200, 1600)),
        "12mp.jpg": lambda: sample_photo(seed=1, size=(3000, 4000)),
        "12mp.png": lambda: sample_photo(seed=1, size=(3000, 4000), fmt="PNG"),
        "3min.wav": lambda: sample_audio(seed=1, seconds=180.0, sample_rate=44100),
        "3min.mp3": lambda: sample_audio(seed=1, seconds=180.0, sample_rate=44100, fmt="MP3"),
    }
    for name, make in files.items():
        (directory / name).write_bytes(make())


def cases(templates: list[str]) -> list[Case]:
    baseline = Case("baseline", "a4-portrait", "small.jpg", "3min.wav")
    per_template = [
        case
        for name in templates
        for case in (
            Case("12MP JPEG", name, "12mp.jpg", "3min.wav"),
            Case("12MP PNG", name, "12mp.png", "3min.wav"),
            Case("12MP JPEG preview", name, "12mp.jpg", "3min.wav", preview=True),
        )
    ]
    return [baseline, *per_template, Case("12MP JPEG, MP3", "a4-portrait", "12mp.jpg", "3min.mp3")]


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # the kernel reports kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Start the peak (VmHWM) afresh from the current resident size (Linux 4.0 and later).

    ru_maxrss cannot serve: a spawned worker inherits the parent's high-water mark across exec,
    and the parent has just generated 12 MP photos.
    """
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def run_case(assets: Path, inputs_dir: Path, case: Case, repeats: int) -> Measurement:
    """In a fresh worker process: one cold render for the memory peak, then `repeats` timed ones."""
    audio_name = case.audio
    inputs = PosterInputs(
        template=case.template,
        title=TITLE,
        subtitle=SUBTITLE,
        photo=(inputs_dir / case.photo).read_bytes(),
        waveform_image=None,
        audio=(inputs_dir / audio_name).read_bytes(),
        audio_name=audio_name,
    )
    gc.collect()
    _reset_peak()
    resident = _status_mib("VmRSS")
    pdf = render_poster(assets, inputs, preview=case.preview)
    peak = _status_mib("VmHWM") - resident
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        render_poster(assets, inputs, preview=case.preview)
        timings.append(time.perf_counter() - started)
    return Measurement(case, statistics.median(timings), peak, len(pdf) / 2**20)


def measure(assets: Path, inputs_dir: Path, case: Case, repeats: int) -> Measurement:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_case, assets, inputs_dir, case, repeats).result()


def report(results: list[Measurement]) -> None:
    base = results[0]
    print(f"{'template':<14} {'case':<19} {'time s':>7} {'x base':>7} {'+peak MiB':>9} {'x base':>7} {'PDF MiB':>8}")
    for m in results:
        print(
            f"{m.case.template:<14} {m.case.label:<19} {m.seconds:>7.2f} {m.seconds / base.seconds:>7.2f} "
            f"{m.peak_mib:>9.1f} {m.peak_mib / base.peak_mib:>7.2f} {m.pdf_mib:>8.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed renders per case (after one cold render)")
    parser.add_argument(
        "--assets", type=Path, default=bundled_assets_dir(), help="directory holding fonts/ templates/ backgrounds/"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="render-bench-") as tmp:
        inputs_dir = Path(tmp)
        print("generating inputs (12 MP photos, 3 minutes of audio)...", file=sys.stderr)
        make_inputs(inputs_dir)
        results = []
        for case in cases(list_templates(args.assets)):
            results.append(measure(args.assets, inputs_dir, case, args.repeats))
            print(f"  {case.template} {case.label}: {results[-1].seconds:.2f}s", file=sys.stderr)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
