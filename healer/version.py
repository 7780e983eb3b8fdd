"""What `healer --version` and `healer_build_info` say: the package version and, when known, the
commit it was built from (the image sets HEALER_BUILD_COMMIT; a source checkout asks git)."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

from healer import __version__

_SOURCE_TREE = Path(__file__).resolve().parent.parent


@functools.cache
def build_commit() -> str | None:
    if commit := os.environ.get("HEALER_BUILD_COMMIT", "").strip():
        return commit[:12]
    if not (_SOURCE_TREE / ".git").exists():  # an installed wheel: no repository to ask
        return None
    try:
        done = subprocess.run(["git", "-C", str(_SOURCE_TREE), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def version_line() -> str:
    commit = build_commit()
    return f"healer {__version__}" + (f" (commit {commit})" if commit else "")
