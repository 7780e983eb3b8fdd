"""Settings: read once from the environment into one frozen object, strictly.

A bad value raises `SettingsError` whose message is one line naming the variable and what is wrong;
`healer` prints it and stops. Secrets are kept in `Secret` wrappers so that no repr, log line or
health output can show them by accident.
"""

from __future__ import annotations

import enum
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fulfilment.secrets import mask_secret, mask_url_password, url_passwords
from healer.errors import ConfigurationError
from poster_assets import bundled_assets_dir


class SettingsError(ConfigurationError, ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Secret:
    value: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Secret({mask_secret(self.value)!r})"

    __str__ = __repr__

    @property
    def masked(self) -> str:
        return mask_secret(self.value)


class RemediationMode(enum.StrEnum):
    OFF = "off"
    DRY_RUN = "dry-run"
    ON = "on"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    assets_dir: Path
    database_url: Secret | None
    aws_access_key_id: Secret | None
    aws_secret_access_key: Secret | None
    s3_bucket: str | None
    s3_region: str | None
    s3_endpoint_url: str | None
    sendgrid_api_key: Secret | None
    sendgrid_api_base: str | None
    from_email: str
    session_expiration_seconds: int
    stripe_secret_key: Secret | None
    stripe_webhook_secret: Secret | None
    stripe_api_base: str | None
    http_host: str
    http_port: int
    ops_host: str
    ops_port: int
    public_rate_limit_per_minute: int
    public_base_url: str
    runbook_base_url: str
    admin_token: Secret | None
    check_interval_seconds: float
    worker_interval_seconds: float
    reconcile_interval_seconds: float
    order_sla_seconds: int
    lease_seconds: int
    workers: int
    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float
    remediation: RemediationMode
    autoheal_label: str
    docker_host: str | None
    compose_project: str
    autoheal_docker: bool
    autoheal_unhealthy_seconds: float
    autoheal_max_restarts: int
    autoheal_window_seconds: float
    delay_email_after_seconds: int | None
    refund_on_failure: bool
    refund_grace_seconds: int
    max_photo_megapixels: float
    render_memory_mb: int
    render_timeout_seconds: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        return _Reader(os.environ if env is None else env).settings()

    @property
    def effective_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.value
        return f"sqlite:///{self.data_dir / 'healer.sqlite3'}"

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def local_store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def scratch_dir(self) -> Path:
        return self.data_dir / "scratch"

    def embedded_defaults(self) -> list[str]:
        """One sentence per peer that runs on its embedded default, for the start-up banner."""
        notes = []
        if self.database_url is None:
            notes.append(f"DATABASE_URL unset: using SQLite at {self.effective_database_url}")
        if self.s3_bucket is None:
            notes.append(f"S3_BUCKET unset: storing objects under {self.local_store_dir}")
        if self.sendgrid_api_key is None:
            notes.append(f"SENDGRID_API_KEY unset: writing emails as .eml files to {self.outbox_dir}")
        if self.stripe_secret_key is None:
            notes.append("STRIPE_SECRET_KEY unset: payment verification is DISABLED (healer demo only)")
        return notes

    def daemon_problems(self) -> list[str]:
        """What stops `healer run` (and only it): a daemon that serves customers verifies every
        payment and every webhook. `healer demo` is the one way to run without Stripe."""
        return [
            f"{name} is unset: `healer run` never fulfils unverified payments "
            "(use `healer demo` to try healer without Stripe)"
            for name, value in (("STRIPE_SECRET_KEY", self.stripe_secret_key),
                                ("STRIPE_WEBHOOK_SECRET", self.stripe_webhook_secret))
            if value is None
        ]

    def describe(self) -> dict[str, str]:
        """Every setting, secrets masked: safe for logs and `healer` output."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                value = value.masked
            elif isinstance(value, enum.Enum):
                value = value.value
            out[f.name] = "" if value is None else str(value)
        if self.database_url is not None:
            out["database_url"] = mask_url_password(self.database_url.value)
        return out

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds, for the log scrubber: the env secrets and any
        password in DATABASE_URL (userinfo or `?password=`)."""
        values = [v.value for v in vars(self).values() if isinstance(v, Secret)]
        if self.database_url is not None:
            values.extend(url_passwords(self.database_url.value))
        return [v for v in values if v]


# Limits of one render process (see fulfilment.render and healer.worker.RenderPool).
# Measured on the 2-core dev machine (final A4 render in a fresh render process, RLIMIT_DATA cap):
# peak RSS 68 MiB for a 12 MP JPEG, 218 MiB for a 12 MP PNG, 132 MiB for a 200 MP baseline JPEG
# (embedded as it is; fits a 256 MB cap), 651 MiB for a 200 MP progressive JPEG (libjpeg holds
# every coefficient; needs a 768 MB cap), 1195 MiB for a 100 MP PNG (fits 1536 MB). 2048 MB is 3x
# the heaviest 200 MP JPEG; a larger PNG or WebP is refused by the cap.
DEFAULT_RENDER_MEMORY_MB = 2048
# Same renders: 0.1 s (12 MP JPEG), 0.5 s (200 MP JPEG), 2.3 s (progressive), 3.7 s (12 MP PNG),
# 31 s (100 MP PNG, the slowest that fits the memory cap); a render process starts in 0.2 s.
# 90 s is about 3x the slowest; it is also the default lease's 0.75 (healer.daemon takes the lower).
DEFAULT_RENDER_TIMEOUT_SECONDS = 90.0

# No setting means more than a year (of seconds, attempts or workers): a larger value is a typo.
MAX_NUMBER = 366 * 86400

# An admin token guards retries of paid orders: long enough that guessing it is hopeless.
MIN_ADMIN_TOKEN_CHARS = 32

_EMAIL = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")
_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class _Reader:
    """Parses one variable at a time; every error names its variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={value!r} must be on or off")

    def secret(self, name: str) -> Secret | None:
        value = self.raw(name)
        return Secret(value) if value is not None else None

    def number(
        self, name: str, default: float, *, minimum: float, maximum: float = MAX_NUMBER, integer: bool = False
    ) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            parsed = int(value) if integer else float(value)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise SettingsError(f"{name}={value!r} is not {kind}") from None
        if not math.isfinite(parsed):
            raise SettingsError(f"{name}={value!r} is not a finite number")
        if parsed < minimum:
            raise SettingsError(f"{name}={value!r} must be at least {minimum:g}")
        if parsed > maximum:
            raise SettingsError(f"{name}={value!r} must be at most {maximum:g}")
        return parsed

    def integer(self, name: str, default: int, *, minimum: int, maximum: int = MAX_NUMBER) -> int:
        return int(self.number(name, default, minimum=minimum, maximum=maximum, integer=True))

    def port(self, name: str, default: int) -> int:
        port = self.integer(name, default, minimum=0)
        if port > 65535:
            raise SettingsError(f"{name}={port} is not a TCP port (0-65535)")
        return port

    def admin_token(self) -> Secret | None:
        token = self.secret("HEALER_ADMIN_TOKEN")
        if token is not None and len(token.value) < MIN_ADMIN_TOKEN_CHARS:
            raise SettingsError(
                f"HEALER_ADMIN_TOKEN is {len(token.value)} characters: it must be at least "
                f"{MIN_ADMIN_TOKEN_CHARS} (e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return token

    def url(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        if value is None:
            return default
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(f"{name}={value!r} is not an http(s) URL")
        return value.rstrip("/")

    def duration(self, name: str, default: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        match = _DURATION.match(value.lower())
        if not match:
            raise SettingsError(f"{name}={value!r} is not a duration (seconds, or e.g. 30m, 24h, 7d)")
        return int(match.group(1)) * _DURATION_UNITS[match.group(2)]

    def directory(self, name: str, default: str) -> Path:
        """A directory that exists or can be made: its nearest existing ancestor is a directory."""
        path = Path(self.text(name, default)).resolve()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise SettingsError(f"{name}={str(path)!r} cannot be a directory: {existing} is a file")
        return path

    def docker_host(self) -> str | None:
        value = self.raw("DOCKER_HOST")
        if value is not None and urlsplit(value).scheme not in ("unix", "tcp", "http", "https", "ssh"):
            raise SettingsError(f"DOCKER_HOST={value!r} is not a unix://, tcp:// or ssh:// address")
        return value

    def database_url(self) -> Secret | None:
        value = self.raw("DATABASE_URL")
        if value is None:
            return None
        scheme = urlsplit(value).scheme
        if not scheme.startswith(("postgresql", "postgres", "sqlite")):
            raise SettingsError(f"DATABASE_URL has scheme {scheme or 'none'!r}: expected postgresql:// or sqlite://")
        if scheme.startswith("postgres") and not scheme.startswith("postgresql"):
            value = "postgresql" + value[len("postgres") :]  # Heroku-style alias
        return Secret(value)

    def settings(self) -> Settings:
        """Read in groups: each returns its `Settings` fields, checking the variables that go together."""
        return Settings(**self.paths(), **self.listeners(), **self.peers(), **self.limits(), **self.retry(),
                        **self.remediation())

    def paths(self) -> dict[str, Any]:
        return {"data_dir": self.directory("HEALER_DATA_DIR", "./var"),
                "assets_dir": Path(self.text("HEALER_ASSETS_DIR", str(bundled_assets_dir()))).resolve(),
                "database_url": self.database_url()}

    def listeners(self) -> dict[str, Any]:
        host, port = self.text("HEALER_HTTP_HOST", "127.0.0.1"), self.port("HEALER_HTTP_PORT", 8080)
        ops_host, ops_port = self.text("HEALER_OPS_HOST", "127.0.0.1"), self.port("HEALER_OPS_PORT", 8081)
        if port != 0 and port == ops_port and host == ops_host:
            raise SettingsError(
                f"HEALER_OPS_PORT={ops_port} is also HEALER_HTTP_PORT: the operator listener needs its own port"
            )
        rate_limit = self.integer("HEALER_PUBLIC_RATE_LIMIT_PER_MINUTE", 120, minimum=1, maximum=1_000_000)
        # Alerts link here; the operator listener serves the guide at /runbook, so the default works
        # wherever Prometheus reaches the operator port (a wildcard address names this host instead).
        runbook_host = socket.gethostname() if ops_host in ("0.0.0.0", "::", "") else ops_host
        runbook_host = f"[{runbook_host}]" if ":" in runbook_host else runbook_host
        return {"http_host": host, "http_port": port, "ops_host": ops_host, "ops_port": ops_port,
                "public_rate_limit_per_minute": rate_limit, "admin_token": self.admin_token(),
                "public_base_url": self.url("PUBLIC_BASE_URL") or f"http://{host}:{port}",
                "runbook_base_url": self.url("HEALER_RUNBOOK_BASE_URL") or f"http://{runbook_host}:{ops_port}/runbook"}

    def peers(self) -> dict[str, Any]:
        """S3, SendGrid and Stripe: each a credential checked for shape, and where to reach it."""
        access_key, secret_key = self.secret("AWS_ACCESS_KEY_ID"), self.secret("AWS_SECRET_ACCESS_KEY")
        if (access_key is None) != (secret_key is None):
            missing = "AWS_SECRET_ACCESS_KEY" if secret_key is None else "AWS_ACCESS_KEY_ID"
            raise SettingsError(f"{missing} is unset while its partner is set: set both or neither")
        bucket = self.raw("S3_BUCKET")
        if bucket is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise SettingsError(f"S3_BUCKET={bucket!r} is not a valid S3 bucket name")
        from_email = self.text("FROM_EMAIL", "posters@localhost.localdomain")
        if not _EMAIL.match(from_email):
            raise SettingsError(f"FROM_EMAIL={from_email!r} is not an email address")
        sendgrid_key = self.secret("SENDGRID_API_KEY")
        if sendgrid_key is not None and not sendgrid_key.value.startswith("SG."):
            raise SettingsError(f"SENDGRID_API_KEY={sendgrid_key.masked} does not start with 'SG.'")
        stripe_key = self.secret("STRIPE_SECRET_KEY")
        if stripe_key is not None and not stripe_key.value.startswith(("sk_", "rk_")):
            raise SettingsError(f"STRIPE_SECRET_KEY={stripe_key.masked} is not a secret key (sk_... or rk_...)")
        return {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key, "s3_bucket": bucket,
                "s3_region": self.raw("S3_REGION"), "s3_endpoint_url": self.url("S3_ENDPOINT_URL"),
                "from_email": from_email, "sendgrid_api_key": sendgrid_key,
                "sendgrid_api_base": self.url("SENDGRID_API_BASE"),
                "stripe_secret_key": stripe_key, "stripe_webhook_secret": self.secret("STRIPE_WEBHOOK_SECRET"),
                "stripe_api_base": self.url("STRIPE_API_BASE")}

    def limits(self) -> dict[str, Any]:
        """Intervals, deadlines and sizes: how often healer acts and how much one order may take."""
        return {
            "session_expiration_seconds": self.duration("SESSION_EXPIRATION", 86400),
            "check_interval_seconds": self.number("HEALER_CHECK_INTERVAL_SECONDS", 30, minimum=0.1),
            "worker_interval_seconds": self.number("HEALER_WORKER_INTERVAL_SECONDS", 2, minimum=0.05),
            "reconcile_interval_seconds": self.number("HEALER_RECONCILE_INTERVAL_SECONDS", 300, minimum=1),
            "order_sla_seconds": self.integer("HEALER_ORDER_SLA_SECONDS", 600, minimum=1),
            "lease_seconds": self.integer("HEALER_LEASE_SECONDS", 120, minimum=1),
            "workers": self.integer("HEALER_WORKERS", os.cpu_count() or 1, minimum=1),
            "delay_email_after_seconds": self.integer("HEALER_DELAY_EMAIL_AFTER_SECONDS", 0, minimum=0) or None,
            "max_photo_megapixels": self.number("HEALER_MAX_PHOTO_MEGAPIXELS", 200, minimum=1, maximum=2000),
            "render_memory_mb": self.integer("HEALER_RENDER_MEMORY_MB", DEFAULT_RENDER_MEMORY_MB,
                                             minimum=256, maximum=1024 * 1024),
            "render_timeout_seconds": self.number("HEALER_RENDER_TIMEOUT_SECONDS", DEFAULT_RENDER_TIMEOUT_SECONDS,
                                                  minimum=1, maximum=3600),
        }

    def retry(self) -> dict[str, Any]:
        retry_base = self.number("HEALER_RETRY_BASE_SECONDS", 30, minimum=0)
        retry_max = self.number("HEALER_RETRY_MAX_SECONDS", 1800, minimum=0)
        if retry_max < retry_base:
            raise SettingsError(
                f"HEALER_RETRY_MAX_SECONDS={retry_max:g} is below HEALER_RETRY_BASE_SECONDS={retry_base:g}"
            )
        return {"retry_base_seconds": retry_base, "retry_max_seconds": retry_max,
                "max_attempts": self.integer("HEALER_MAX_ATTEMPTS", 10, minimum=1),
                "refund_on_failure": self.flag("HEALER_REFUND_ON_FAILURE", False),
                "refund_grace_seconds": self.integer("HEALER_REFUND_GRACE_SECONDS", 86400, minimum=0)}

    def remediation(self) -> dict[str, Any]:
        remediation = self.text("HEALER_REMEDIATION", "on").lower()
        try:
            mode = RemediationMode(remediation)
        except ValueError:
            raise SettingsError(f"HEALER_REMEDIATION={remediation!r} must be one of off, dry-run, on") from None
        autoheal_label = self.text("HEALER_AUTOHEAL_LABEL", "healer.autoheal=true")
        if "=" not in autoheal_label or autoheal_label.startswith("="):
            raise SettingsError(f"HEALER_AUTOHEAL_LABEL={autoheal_label!r} is not a key=value label")
        docker_host = self.docker_host()
        autoheal_docker = self.flag("HEALER_AUTOHEAL_DOCKER", False)
        if autoheal_docker and docker_host is None:
            raise SettingsError(
                "HEALER_AUTOHEAL_DOCKER=on needs DOCKER_HOST (the engine whose containers it restarts)"
            )
        return {"remediation": mode, "autoheal_label": autoheal_label, "docker_host": docker_host,
                "autoheal_docker": autoheal_docker,
                "autoheal_unhealthy_seconds": self.number("HEALER_AUTOHEAL_UNHEALTHY_SECONDS", 60, minimum=0),
                "autoheal_max_restarts": self.integer("HEALER_AUTOHEAL_MAX_RESTARTS", 3, minimum=0),
                "autoheal_window_seconds": self.number("HEALER_AUTOHEAL_WINDOW_SECONDS", 3600, minimum=1),
                "compose_project": self.text("HEALER_COMPOSE_PROJECT", "healer")}
