# Shared set-up steps for scripts/demo.sh and scripts/test.sh. Each step does nothing when its
# work is already done, so running a script twice costs seconds.

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# pip, without the warnings this machine's pip.conf adds for local mirror folders it lacks.
quiet_pip() {
    .venv/bin/pip --quiet "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2)
}

# A virtualenv in .venv with the pinned dependencies and healer itself (editable). Every file pip
# installs from the lock must match one of its sha256 hashes (scripts/lock.sh regenerates it);
# pip itself is upgraded first, outside the lock, and healer is installed from this tree.
ensure_python_env() {
    local stamp=.venv/.installed-$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
    if [ -f "$stamp" ]; then return; fi
    log "installing Python packages from requirements.lock into .venv"
    python3 -m venv .venv
    quiet_pip install --upgrade pip
    quiet_pip install --require-hashes -r requirements.lock
    quiet_pip install --no-deps --no-build-isolation -e .  # the lock holds the build backend
    rm -f .venv/.installed-* && touch "$stamp"
}

# Debian packages, installed only when one of them is missing (apt-get update once, first).
ensure_apt_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then return; fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# PostgreSQL on 127.0.0.1:5432 with trust auth, as the machine provides it; started if stopped.
ensure_postgresql() {
    if [ ! -d /etc/postgresql ]; then ensure_apt_packages postgresql; fi
    if pg_isready -q -h 127.0.0.1 -p 5432; then return; fi
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
    for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && return; sleep 0.2; done
    log "PostgreSQL did not start: see /var/log/postgresql/"; return 1
}
