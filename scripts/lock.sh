#!/usr/bin/env bash
# Regenerates the two hashed locks from pyproject.toml, with uv in a throwaway virtualenv:
#
#   requirements.lock          the dependencies and the `test` extra: .venv, the tests, CI
#                              (scripts/lib.sh installs it with `pip install --require-hashes`)
#   requirements-runtime.lock  the dependencies and the build backend only: the image (Dockerfile),
#                              at the same versions as requirements.lock (it is the constraint)
#
# Every pinned version carries the sha256 of every file PyPI has for it (all wheels and the sdist),
# so one lock serves this machine's CPython and the image's python:3.11-slim alike. Resolution is
# for CPython 3.11 on Linux, whatever machine runs this script.
#
# Versions already in a lock are kept (uv prefers the pins of an existing output file), so running
# this twice changes nothing; a dependency added to pyproject.toml gets its newest allowed version.
# To move versions on purpose:
#
#   bash scripts/lock.sh --upgrade                    # everything
#   bash scripts/lock.sh --upgrade-package stripe     # one package (repeatable)
#
# The arguments go to the requirements.lock compile; the runtime lock follows it.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8  # the resolver: a newer uv may order or annotate differently, so it is pinned too
INDEX=https://pypi.org/simple  # PyPI only, whatever pip.conf adds: the hashes are PyPI's files'

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
"$work/venv/bin/pip" --quiet --disable-pip-version-check install "uv==$UV_VERSION" \
    2> >(grep -v "^WARNING: Location 'file://" >&2)

# The build backend pyproject.toml names ([build-system] requires), for the image's
# `pip install --no-build-isolation .`: hashed like everything else it installs.
python3 - > "$work/build-system.in" <<'EOF'
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))
EOF

compile() {
    "$work/venv/bin/uv" pip compile --quiet --no-config \
        --index-url "$INDEX" \
        --python-version 3.11 --python-platform linux \
        --generate-hashes \
        --custom-compile-command "bash scripts/lock.sh" \
        "$@"
}

compile pyproject.toml --extra test --output-file requirements.lock "$@"
compile pyproject.toml "$work/build-system.in" --constraint requirements.lock \
    --output-file requirements-runtime.lock

# The header names the throwaway file; say what it stands for instead.
sed -i "s|$work/build-system.in|pyproject.toml [build-system] requires|" requirements-runtime.lock

echo "requirements.lock: $(grep -c '^[A-Za-z]' requirements.lock) packages;" \
     "requirements-runtime.lock: $(grep -c '^[A-Za-z]' requirements-runtime.lock) packages" >&2
