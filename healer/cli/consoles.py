"""Where the `healer` command writes: results to stdout, problems to stderr (rich consoles)."""

from rich.console import Console

out = Console()
err = Console(stderr=True)
