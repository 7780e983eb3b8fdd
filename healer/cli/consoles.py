"""Where the `healer` command writes: results to stdout, problems to stderr (rich consoles).

Piped into a file or another program, a console is as wide as its longest line rather than
rich's 80 columns, so nothing a script reads is cut or wrapped.
"""

from __future__ import annotations

import json
import os
import sys

from rich.console import Console
from rich.table import Column


def _width(stream: object) -> int | None:
    interactive = getattr(stream, "isatty", lambda: False)()
    return None if interactive or os.environ.get("COLUMNS") else 1000


out = Console(width=_width(sys.stdout))
err = Console(stderr=True, width=_width(sys.stderr))

UUID_CHARS = 36


def id_column(header: str = "id", width: int = UUID_CHARS) -> Column:
    """A table column for ids: never cut or wrapped, whatever the terminal; the others give way."""
    return Column(header, no_wrap=True, min_width=width, overflow="fold")


def print_json(value: object, console: Console = out) -> None:
    """`--json` output: the whole value, never wrapped or styled."""
    console.print(json.dumps(value, indent=2, default=str), markup=False, highlight=False, soft_wrap=True)
