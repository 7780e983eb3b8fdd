#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, starts what is not running.
# Extra arguments go to pytest (e.g. scripts/test.sh -k pipeline -x), run in one process.
#
# The whole run is two pytest runs: the tests that share nothing on two workers (pytest-xdist, a
# file to a worker: most tests wait on a peer or a daemon, not on the CPU), then the `serial` ones
# alone (they stop PostgreSQL, use dockerd, or time themselves; tests/conftest.py marks them).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_apt_packages poppler-utils docker.io busybox-static prometheus prometheus-alertmanager docker-compose haproxy chromium
ensure_python_env
ensure_postgresql
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
# The whole run also lints and type-checks.
.venv/bin/ruff check healer checks fulfilment poster_assets bench tests
.venv/bin/mypy healer checks fulfilment poster_assets
status=0
.venv/bin/python -m pytest -n 2 --dist loadfile -m "not serial" || status=$?
.venv/bin/python -m pytest -m serial || status=$((status ? status : $?))
exit "$status"
