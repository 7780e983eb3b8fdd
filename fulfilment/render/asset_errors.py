"""How an asset file that cannot be used is reported: the same two messages for fonts and backgrounds,
each naming the file, because the reader has to go and fix that file.
"""

from __future__ import annotations

from pathlib import Path

from fulfilment.errors import ErrorClass, StepError


def unusable(kind: str, path: Path | str, exc: OSError) -> StepError:
    """A file that could not be opened: missing, or there but unreadable (permissions, I/O)."""
    if isinstance(exc, FileNotFoundError):
        return StepError(ErrorClass.ASSET_MISSING, f"{kind} file {path} is missing")
    return unreadable(kind, path, exc)


def unreadable(kind: str, path: Path | str, exc: Exception) -> StepError:
    """A file that is there but cannot be used: unreadable, truncated or damaged."""
    return StepError(ErrorClass.ASSET_MISSING, f"{kind} file {path} is unreadable: {exc}")
