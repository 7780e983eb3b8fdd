# The healer daemon, as docker-compose.yml and deploy/kubernetes run it. Build: `docker build -t healer .`
#
# Two stages: `build` installs the locked dependencies and healer into a virtual environment,
# and the runtime stage copies that environment alone. The sources, the build backend's work and
# anything a build could leave behind stay in the build stage.
#
# Both stages start from the same base, given once here: the environment's `python` links to the
# base image's interpreter (/usr/local/bin/python3.11), so the two must be the same image.
# An exact version, never a moving tag (`3.11-slim` changes under a rebuild). To pin the digest as
# well, take the one the registry serves for this tag and append it:
#   docker buildx imagetools inspect python:3.11.11-slim-bookworm    (the index's "Digest:")
#   ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<that digest>
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/healer/bin:$PATH

# The environment the runtime stage copies. pip compiles every module to bytecode as it installs
# (not disabled here on purpose): the runtime's root filesystem is read-only under Kubernetes, and
# each render process is spawned and imports its modules afresh, so they must not need compiling.
RUN python -m venv /opt/healer

WORKDIR /src

# Dependencies first: this layer is rebuilt only when the lock changes.
#
# From requirements-runtime.lock, not requirements.lock: that one also pins the test tools
# (pytest, moto, schemathesis...), which have no place in the image, and pip's hash-checking mode
# cannot use a lock as constraints (`-c`) to pick the runtime subset out of it. scripts/lock.sh
# makes both locks from pyproject.toml with one resolver, the runtime lock constrained by the full
# one, so the image runs exactly the versions the tests ran. --require-hashes: every file pip
# downloads must match a sha256 in the lock; --no-deps: nothing outside the lock gets in. The lock
# holds the build backend (setuptools, wheel) too, so installing healer below needs no index.
COPY requirements-runtime.lock ./
RUN pip install --require-hashes --no-deps -r requirements-runtime.lock

COPY pyproject.toml ./
COPY healer ./healer
COPY checks ./checks
COPY fulfilment ./fulfilment
COPY poster_assets ./poster_assets
# healer/docs links to docs/: the wheel takes the operations guide (GET /runbook) from there.
COPY docs ./docs
RUN pip install --no-deps --no-build-isolation --no-index .


FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/healer/bin:$PATH

# The installed environment only: no /src, no pip cache, no compiler (the base has none, and
# every locked dependency is a wheel).
COPY --from=build /opt/healer /opt/healer

# Poster assets: the wheel carries them (poster_assets), and the image also puts a copy in /app,
# its HEALER_ASSETS_DIR, where an operator finds them (`ls /app/fonts`) and can mount the shop's own.
WORKDIR /app
COPY poster_assets/fonts ./fonts
COPY poster_assets/templates ./templates
COPY poster_assets/backgrounds ./backgrounds

# A non-root user owning only its data directory; the assets stay read-only to it. USER is the
# number, not the name: Kubernetes' runAsNonRoot can only verify a numeric user.
RUN groupadd --system --gid 10001 healer \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/healer --create-home healer
USER 10001:10001

# Two listeners. HEALER_HTTP_*: the public one (completion API, downloads, Stripe webhook).
# HEALER_OPS_*: the operator one (/livez, /readyz, /health, /metrics, /docs, admin API). Both listen
# on every interface of the container, so that Prometheus on the compose network can scrape 8081;
# only 8080 is exposed and published. Never publish 8081 (`-p 8081:8081`) to the internet.
# `healer --version` names the commit: docker build --build-arg
# HEALER_BUILD_COMMIT=$(git rev-parse HEAD) . (the image has no repository to ask).
ARG HEALER_BUILD_COMMIT=""
ENV HEALER_BUILD_COMMIT=${HEALER_BUILD_COMMIT} \
    HEALER_HTTP_HOST=0.0.0.0 \
    HEALER_HTTP_PORT=8080 \
    HEALER_OPS_HOST=0.0.0.0 \
    HEALER_OPS_PORT=8081 \
    HEALER_DATA_DIR=/var/lib/healer \
    HEALER_ASSETS_DIR=/app
VOLUME ["/var/lib/healer"]
EXPOSE 8080

# /livez, on the operator port: the process answers and its scheduler jobs are succeeding (a
# wedged worker fails it). Kubernetes ignores HEALTHCHECK: its probes (deploy/kubernetes) do this.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('HEALER_OPS_PORT', '8081'), timeout=4)"]

# Migrate, then replace the shell with the daemon so it gets SIGTERM and stops cleanly. (Under
# Kubernetes the Deployment runs `healer run` alone: a Job migrates once, not every replica.)
CMD ["sh", "-c", "healer db upgrade && exec healer run"]
