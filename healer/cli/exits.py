"""The `healer` command's exit codes, one set for every command."""

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and found a problem (or `healer check`: a warning)
EXIT_USAGE = 2  # a bad argument or configuration value
