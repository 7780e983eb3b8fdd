"""What runs inside a render process, and nothing else.

Render processes are spawned (see healer.render.pool.RenderPool): each imports only what it is
handed, so this module stays apart from the pool and from healer.worker, whose imports (the
pipeline, the database layer, the S3, Stripe and SendGrid clients) a render process has no use
for. A render process holds ReportLab, Pillow and numpy; about a third of the memory of the
daemon's full import. The daemon imports this module too (the pool hands its functions over by
name), so those are imported here only inside the render process: by `start_render_process`.

Each render process is bounded (`start_render_process`, the pool's initializer): its memory by an
rlimit, so a photo or a recording too large to render fails there with a MemoryError (`bad_input`)
and the daemon never notices; its time by the pool, which stops the process at the deadline. It
ends with the daemon (`end_with_parent`), however the daemon ends.

With tracing on, the work arrives with its caller's trace context (`trace_headers`), and the render
is a span here, under the caller's step, exported by this process itself (healer.tracing); without
it, nothing of tracing is imported here.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import resource
import tempfile
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from fulfilment.errors import ErrorClass, StepError
from fulfilment.render.inputs import PosterInputs, RenderLimits, out_of_memory

# The watcher only waits on a pipe. Its stack is a private writable mapping, which RLIMIT_DATA
# counts (cap_memory): the default 8 MiB would come out of every render's memory cap.
_WATCHER_STACK_BYTES = 256 * 1024
# What renders and redraws use, imported when the process starts: before its memory is capped, so
# that the cap is left whole for the work (measured in cap_memory), and so the first render does
# not pay for the imports.
_RENDERER_MODULES = ("fulfilment.render.poster", "fulfilment.waveform")


def start_render_process(memory_mb: int | None, max_photo_pixels: int) -> None:
    """The pool's initializer: tie the process to the daemon, import the renderer, cap its memory,
    size Pillow's check."""
    end_with_parent()
    for module in _RENDERER_MODULES:
        importlib.import_module(module)
    if memory_mb is not None:
        cap_memory(memory_mb)
    from PIL import Image

    # Pillow refuses twice this and warns above it; render_poster checks the header against the
    # setting itself, first. Left at Pillow's default (89 MP), a 200 MP phone photo is refused.
    Image.MAX_IMAGE_PIXELS = max_photo_pixels


def end_with_parent() -> None:
    """End this process as soon as the daemon is gone, however it went (SIGKILL included).

    The daemon holds the write end of the pipe this process was started through (multiprocessing's
    parent sentinel) for as long as it keeps the process; the kernel closes it when the daemon
    dies. A thread here waits for that and ends the process. It is already closed if the daemon
    died while this process was starting, so there is no window in which an orphan goes unnoticed.

    Not PR_SET_PDEATHSIG: Linux sends it when the *thread* that spawned the child ends, not the
    process, and a pool spawns from whichever thread renders first (an order thread, a short-lived
    remediation thread). Its SIGKILL then hit render processes of a live daemon, some while they
    held a lock their siblings needed. Kept as a belt it would do only that harm, so it is gone.
    """
    parent = multiprocessing.parent_process()
    if parent is None:  # not started by a pool (called in the daemon's own process): nothing to watch
        return
    previous = threading.stack_size(_WATCHER_STACK_BYTES)
    try:
        threading.Thread(target=_exit_when_gone, args=(parent,), name="parent-watch", daemon=True).start()
    finally:
        threading.stack_size(previous)


def _exit_when_gone(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()  # returns once the sentinel pipe is closed: the daemon is gone
    os._exit(1)  # at once: a render for nobody is not worth finishing, nor cleaning up after


def cap_memory(memory_mb: int) -> None:
    """Limit what this process may allocate; past it, allocations fail (MemoryError in Python).

    RLIMIT_DATA, not RLIMIT_AS: since Linux 4.7 it counts the heap and every private writable
    mapping, which is what decoding and drawing allocate, but not shared libraries nor the address
    space glibc (64 MB malloc arenas) and OpenBLAS (per-thread buffers) reserve without using,
    which grow with the number of cores. Measured here after the render imports: 99 MiB of data,
    168 MiB of address space; the cap means about the same on a 2-core and a 64-core machine.
    """
    limit = memory_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)  # an unprivileged process cannot raise its hard limit
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _traced(
    headers: Mapping[str, str] | None, name: str, attributes: Mapping[str, str | int] | None = None
) -> AbstractContextManager[None]:
    """A span under the caller's, when the work came with one; the tracing module is imported only
    then (20 ms and the OpenTelemetry API, at every render process start otherwise)."""
    if not headers:
        return nullcontext()
    from healer.tracing import continued

    return continued(headers, name, attributes)


def render_to_scratch(
    assets_dir: Path, inputs: PosterInputs, scratch_dir: Path, limits: RenderLimits, preview: bool = False,
    trace_headers: Mapping[str, str] | None = None,
) -> str:
    """Render the poster into a scratch file and return its path.

    The PDF travels back through the file, not the pool's pipe; a full scratch disk is a
    `resources` failure (gated on the disk check, and cleaned by remediation), not a crash.
    """
    with _traced(trace_headers, "render", {"poster.template": inputs.template}):
        return _render_to_scratch(assets_dir, inputs, scratch_dir, limits, preview)


def _render_to_scratch(
    assets_dir: Path, inputs: PosterInputs, scratch_dir: Path, limits: RenderLimits, preview: bool
) -> str:
    from fulfilment.render.poster import render_poster  # imported already: start_render_process

    pdf = render_poster(assets_dir, inputs, preview=preview, limits=limits)
    path = None
    try:
        scratch_dir.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=scratch_dir, prefix="render-", suffix=".pdf")
        with os.fdopen(fd, "wb") as out:
            out.write(pdf)
    except OSError as error:
        if path is not None:
            Path(path).unlink(missing_ok=True)  # a half-written file would only fill it further
        raise StepError(ErrorClass.RESOURCES, f"cannot write the render to {scratch_dir}: {error.strerror}") from None
    return path


def draw_waveform(
    audio: bytes, audio_name: str, limits: RenderLimits, trace_headers: Mapping[str, str] | None = None
) -> bytes:
    """A waveform PNG redrawn from the customer's audio: decoding it is as bounded as a render."""
    from fulfilment.waveform import peaks_from_audio, waveform_png  # imported already: start_render_process

    with _traced(trace_headers, "draw_waveform"):
        try:
            peaks = peaks_from_audio(
                audio, audio_name, max_bytes=limits.max_audio_bytes, max_seconds=limits.max_audio_seconds
            )
            return waveform_png(peaks)
        except MemoryError:
            raise out_of_memory(limits, "drawing the waveform from the audio") from None
