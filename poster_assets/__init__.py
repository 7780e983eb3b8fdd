"""The poster assets that ship with healer: `fonts/`, `templates/` and `backgrounds/`.

Data only, no code: a package so that the wheel carries the files (package data) and
`importlib.resources` finds them wherever healer is installed, a source checkout or a venv.
`HEALER_ASSETS_DIR` points the daemon at another directory of the same shape (the image uses
`/app`, where an operator can mount the shop's own fonts and templates).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def bundled_assets_dir() -> Path:
    """The directory holding the bundled `fonts/`, `templates/` and `backgrounds/`.

    ReportLab and Pillow open fonts and images by file name, so the assets must be real files:
    they are, for every install pip makes (a wheel is unpacked); a zipped import would not be.
    """
    root = files(__name__)
    if not isinstance(root, Path):
        raise RuntimeError(f"poster assets are inside an archive ({root}); set HEALER_ASSETS_DIR to a directory")
    return root
