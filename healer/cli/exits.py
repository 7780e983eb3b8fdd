"""The `healer` command's exit codes, one set for every command (docs/operations.md has the table).

`healer check` alone follows the Nagios plugin convention instead: 0 ok, 1 warning, 2 failing,
3 unknown (checks.base.Verdict.exit_code).
"""

from healer.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_SOFTWARE, EXIT_USAGE

EXIT_OK = 0

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "EXIT_SOFTWARE", "EXIT_USAGE"]
