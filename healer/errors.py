"""Errors an operator can act on: one line that says what is wrong and how to fix it.

The `healer` command prints such an error's message alone and exits with its code (no traceback
unless `--debug`); anything else that escapes a command is a bug, printed the same way with its
type. The codes are the sysexits ones the command documents (healer.cli.exits).
"""

from __future__ import annotations

EXIT_FAILED = 1  # the command ran and found a problem
EXIT_USAGE = 64  # EX_USAGE: a bad argument
EXIT_CONFIG = 78  # EX_CONFIG: a bad configuration value or an unusable directory
EXIT_SOFTWARE = 70  # EX_SOFTWARE: an error healer did not expect (a bug)


class OperatorError(Exception):
    """A failure whose message is one actionable line (no secrets: it is printed as it is)."""

    exit_code = EXIT_FAILED


class UsageError(OperatorError):
    exit_code = EXIT_USAGE


class ConfigurationError(OperatorError):
    exit_code = EXIT_CONFIG
