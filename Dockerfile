# The healer daemon, as docker-compose.yml runs it. Build: `docker build -t healer .`
# Runtime dependencies are installed at the versions pinned in requirements.lock (used as
# constraints, so the test-only packages in the lock stay out of the image).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies first: this layer is rebuilt only when the lock or the dependency list changes.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > runtime-requirements.txt \
    && pip install -r runtime-requirements.txt -c requirements.lock

COPY healer ./healer
COPY checks ./checks
COPY fulfilment ./fulfilment
RUN pip install --no-deps . && rm -rf /src

# Poster assets, read at run time from /app (the default HEALER_ASSETS_DIR in the image).
WORKDIR /app
COPY fonts ./fonts
COPY templates ./templates
COPY backgrounds ./backgrounds

# A non-root user owning only its data directory; the assets stay read-only to it.
RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/healer --create-home healer
USER healer

ENV HEALER_HTTP_HOST=0.0.0.0 \
    HEALER_HTTP_PORT=8080 \
    HEALER_DATA_DIR=/var/lib/healer \
    HEALER_ASSETS_DIR=/app
VOLUME ["/var/lib/healer"]
EXPOSE 8080

# /livez: the process answers and its scheduler jobs are succeeding (a wedged worker fails it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('HEALER_HTTP_PORT', '8080'), timeout=4)"]

# Migrate, then replace the shell with the daemon so it gets SIGTERM and stops cleanly.
CMD ["sh", "-c", "healer db upgrade && exec healer run"]
