#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, starts what is not running.
# Extra arguments go to pytest (e.g. scripts/test.sh -k pipeline -x).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_apt_packages poppler-utils docker.io busybox-static prometheus prometheus-alertmanager docker-compose haproxy chromium
ensure_python_env
ensure_postgresql
if [ $# -eq 0 ]; then  # the whole run also lints and type-checks
    .venv/bin/ruff check healer checks fulfilment poster_assets bench tests
    .venv/bin/mypy healer checks fulfilment poster_assets
fi
exec .venv/bin/python -m pytest "$@"
