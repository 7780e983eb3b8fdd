"""The `healer` command as the operator can type it again, for the commands the demo suggests.

A bare `healer` misleads whoever installed healer in a virtualenv without activating it: it is not
on their PATH. So a suggestion names the program that was run, as it was run.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path


def healer_command(argv0: str | None = None) -> str:
    """`healer` when that is what the shell finds and what ran; else the script that ran, by its
    absolute path; else the `healer` on PATH; else this interpreter with `-m healer`."""
    ran = Path(sys.argv[0] if argv0 is None else argv0)
    on_path = shutil.which("healer")
    if ran.name == "healer" and ran.is_file():
        if on_path is not None and Path(on_path).resolve() == ran.resolve():
            return "healer"
        # Absolute, not as typed: scripts/demo.sh runs `.venv/bin/healer` from the checkout, which
        # need not be the directory the operator pastes the command in.
        return shlex.quote(os.path.abspath(ran))
    if on_path is not None:
        return shlex.quote(on_path)
    return f"{shlex.quote(sys.executable)} -m healer"


@dataclass(frozen=True)
class CommandHint:
    """A `healer` command line that reads the demo's data, whatever the operator's shell exports."""

    healer: str
    data_dir: Path
    # The demo ignores DATABASE_URL; a command run in the same shell would not, unless cleared.
    clear_database_url: bool = False

    def command(self, arguments: str) -> str:
        env = [f"HEALER_DATA_DIR={shlex.quote(str(self.data_dir))}"]
        if self.clear_database_url:
            env.append("DATABASE_URL=")
        return " ".join([*env, self.healer, arguments])
