"""`healer` and `python -m healer`: the command line (healer.cli), imported only when run.

Kept this small on purpose. A render process is spawned, and a spawned process imports the main
module of its parent again before it renders anything: were that healer.cli, every render process
would carry the web stack, the database layer and every client library (about 110 MiB instead of
45). The `healer` command's script imports this module, not healer.cli.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from healer.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
