"""The poster's waveform: its peaks, from the shop's waveform image or else the customer's audio,
drawn as a row of rounded bars or a filled, mirrored outline.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from reportlab.lib.colors import HexColor
from reportlab.pdfgen.canvas import Canvas

from fulfilment.errors import ErrorClass, StepError, WaveformUnusable
from fulfilment.render.geometry import Rect
from fulfilment.templates import WaveformSpec, WaveStyle
from fulfilment.waveform import Peaks, peaks_from_audio, peaks_from_image, resample

if TYPE_CHECKING:  # the package imports this module; these are only read here
    from fulfilment.render import PosterInputs, RenderLimits

log = logging.getLogger(__name__)


def poster_peaks(inputs: PosterInputs, limits: RenderLimits) -> Peaks:
    """The waveform image's peaks; the audio's if the image is gone or unusable."""
    if inputs.waveform_image is not None:
        try:
            return peaks_from_image(inputs.waveform_image)
        except StepError as exc:
            if inputs.audio is None:
                raise WaveformUnusable(f"waveform image unusable and no audio given: {exc.message}") from None
            log.warning("waveform image unusable (%s); drawing the waveform from the audio", exc.message)
    if inputs.audio is not None:
        return peaks_from_audio(
            inputs.audio, inputs.audio_name, max_bytes=limits.max_audio_bytes, max_seconds=limits.max_audio_seconds
        )
    raise StepError(
        ErrorClass.BAD_INPUT, "neither a waveform image nor the audio was given: nothing to draw the waveform from"
    )


def draw_waveform(canvas: Canvas, peaks: Peaks, rect: Rect, spec: WaveformSpec) -> None:
    canvas.saveState()
    canvas.setFillColor(HexColor(spec.color))
    if spec.style is WaveStyle.BARS:
        path = _bars_path(canvas, resample(peaks, spec.samples), rect, spec.gap)
    else:
        path = _outline_path(canvas, _smoothed(resample(peaks, spec.samples)), rect)
    canvas.drawPath(path, stroke=0, fill=1)
    canvas.restoreState()


def _bars_path(canvas: Canvas, values: Peaks, rect: Rect, gap: float):  # type: ignore[no-untyped-def]
    x, y, width, height = rect
    slot = width / len(values)
    bar = slot * (1 - gap)
    floor = min(bar, height * 0.04)  # silence still shows as a row of dots
    middle = y + height / 2
    path = canvas.beginPath()
    for i, value in enumerate(values):
        length = max(floor, value * height)
        path.roundRect(x + i * slot + (slot - bar) / 2, middle - length / 2, bar, length, min(bar, length) / 2)
    return path


def _outline_path(canvas: Canvas, values: Peaks, rect: Rect):  # type: ignore[no-untyped-def]
    x, y, width, height = rect
    middle = y + height / 2
    step = width / (len(values) - 1)
    half = [max(0.015, v) * height / 2 for v in values]  # a hairline through silence
    path = canvas.beginPath()
    path.moveTo(x, middle + half[0])
    for i in range(1, len(values)):
        path.lineTo(x + i * step, middle + half[i])
    for i in reversed(range(len(values))):
        path.lineTo(x + i * step, middle - half[i])
    path.close()
    return path


def _smoothed(values: Peaks) -> Peaks:
    # A filled outline shows every single-sample spike as a needle; a light blur reads as sound.
    padded = (values[0], *values, values[-1])
    return tuple(0.25 * padded[i - 1] + 0.5 * padded[i] + 0.25 * padded[i + 1] for i in range(1, len(padded) - 1))
