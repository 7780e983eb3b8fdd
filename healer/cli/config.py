"""`healer config [--json]`: the effective configuration, as the daemon would read it here.

Every variable healer reads, its value (secrets masked, a database password too) and where the
value came from: the environment, healer's default, or an embedded default (the peer healer runs
itself when the variable is unset). Every problem is listed at once, then the exit code is 78 (or 0).
"""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from healer.cli.consoles import err, out, print_json
from healer.cli.exits import EXIT_CONFIG, EXIT_OK
from healer.config import Source, read_configuration

_SOURCE_STYLES = {Source.ENV: "bold", Source.DEFAULT: "dim", Source.EMBEDDED: "cyan"}


def cmd_config(_parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    configuration = read_configuration()
    if args.json:
        print_json({"variables": [{"name": v.name, "value": v.value, "source": v.source.value,
                                   "problem": v.problem or None} for v in configuration.variables],
                    "problems": list(configuration.problems),
                    "embedded": configuration.settings.embedded_defaults() if configuration.settings else []})
    else:
        table = Table("variable", "value", "source", "problem")
        for v in configuration.variables:
            table.add_row(v.name, Text(v.value), Text(v.source.value, style=_SOURCE_STYLES[v.source]),
                          Text(v.problem, style="bold red"))
        out.print(table)
        for note in configuration.settings.embedded_defaults() if configuration.settings else ():
            out.print(note, markup=False, highlight=False)
        for problem in configuration.problems:
            err.print(f"healer: configuration error: {problem}", markup=False, highlight=False, soft_wrap=True)
    return EXIT_CONFIG if configuration.problems else EXIT_OK
