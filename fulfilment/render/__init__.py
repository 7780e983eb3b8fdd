"""The poster PDF: one page drawn with ReportLab's canvas from a template, a photo and a waveform.

`render_poster` is the entry point; it runs in a process pool, so it takes and returns plain,
picklable data, and only `StepError` ever leaves it:
- `asset_missing` when a font, template or background file is missing or unreadable (names the path),
- `render_error` for an invalid template (names file and field) or a failure inside ReportLab,
- `bad_input` for what the customer sent: a damaged or oversized photo or audio, a photo that is
  not a JPEG, PNG or WebP, text the font cannot draw, no waveform source at all, or a render that
  runs out of the memory its process may use (`RenderLimits.memory_mb`).

The memory cap and the time limit themselves are the caller's to enforce (healer runs each render
in a process with an rlimit and a deadline); this package only names the cap when a render runs
into it. The same inputs always give the same bytes, so a render repeated after a crash overwrites
the file with an identical one.

Importing this package is cheap: it holds the inputs and limits (`inputs`), which the daemon's own
process builds, and nothing that draws. `render_poster` lives in `poster` with ReportLab, Pillow
and numpy, and is imported from there on first use of `fulfilment.render.render_poster`, so that
only the processes that render pay for it (16 MiB resident, 25 MiB once it has rendered).

One concern per module, in the order a render uses them:
- `assets`: the template's fonts (`fonts`) and background, loaded, and judged for the assets check
  (`asset_errors`: the messages naming a file that cannot be used),
- `layout`: the customer's text, cleaned, checked against the font, sized and wrapped,
- `photo`: the customer's photo, checked from its header, prepared for print or preview
  (`images`: how an image is handed to ReportLab, shared with the background),
- `waveform_drawing`: the waveform's peaks and their bars or outline,
- `draw`: the page (`geometry`: where a template's millimetres land in PDF points).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fulfilment.render.inputs import MAX_AUDIO_BYTES, MAX_AUDIO_SECONDS, PosterInputs, RenderLimits, out_of_memory

if TYPE_CHECKING:
    from fulfilment.render.poster import render_poster

__all__ = ["MAX_AUDIO_BYTES", "MAX_AUDIO_SECONDS", "PosterInputs", "RenderLimits", "out_of_memory", "render_poster"]


def __getattr__(name: str) -> object:
    # PEP 562: `from fulfilment.render import render_poster` keeps working, and imports the
    # drawing modules only then.
    if name == "render_poster":
        from fulfilment.render.poster import render_poster

        return render_poster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
