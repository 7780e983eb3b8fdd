#!/usr/bin/env bash
# `healer demo` on a fresh machine: installs healer, then runs the daemon on its embedded
# defaults (SQLite, a local object store, an outbox of .eml files) with sample orders.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_python_env
export HEALER_DATA_DIR="${HEALER_DATA_DIR:-./var/demo}"
exec .venv/bin/healer demo "$@"
