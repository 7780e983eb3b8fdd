"""What runs inside a render process, and nothing else.

Render processes are spawned (see healer.worker.RenderPool): each imports only what it is handed,
so this module stays apart from healer.worker, whose imports (the pipeline, the database layer,
the S3, Stripe and SendGrid clients) a render process has no use for. A render process holds
ReportLab, Pillow and numpy; about a third of the memory of the daemon's full import.
"""

from __future__ import annotations

import ctypes
import os
import signal
import tempfile
from pathlib import Path

from fulfilment.errors import ErrorClass, StepError
from fulfilment.render import PosterInputs, render_poster

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """The pool's initializer: end when the daemon ends, even if it was SIGKILLed (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: orphans end when their next read of the call queue fails
        pass


def render_to_scratch(assets_dir: Path, inputs: PosterInputs, scratch_dir: Path) -> str:
    """Render the final poster into a scratch file and return its path.

    The PDF travels back through the file, not the pool's pipe; a full scratch disk is a
    `resources` failure (gated on the disk check, and cleaned by remediation), not a crash.
    """
    pdf = render_poster(assets_dir, inputs, preview=False)
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
