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
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fulfilment.secrets import mask_secret, mask_url_password, url_passwords
from healer.errors import ConfigurationError
from healer.sendgrid.signature import public_key_text
from poster_assets import bundled_assets_dir

T = TypeVar("T")


class SettingsError(ConfigurationError, ValueError):
    """Configuration values missing or malformed: one problem per variable, each naming it."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__("; ".join(self.problems))


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


class LogFormat(enum.StrEnum):
    """HEALER_LOG_FORMAT: how log lines are written (healer.logs)."""

    JSON = "json"  # one object per line, for a log collector
    TEXT = "text"  # for a person at a terminal

    @classmethod
    def default(cls) -> LogFormat:
        # Decided by the stream the lines go to (stderr; stdout carries commands' output): a person
        # reads it at a terminal, anything else (a container runtime, a pipe, a file) collects it.
        return cls.TEXT if sys.stderr.isatty() else cls.JSON


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
    sendgrid_webhook_public_key: str | None  # not a secret: it verifies, it cannot sign
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
    canary_interval_seconds: float | None  # None: the scheduled canary is off (`healer canary` still runs)
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
    log_format: LogFormat

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings, or a `SettingsError` listing every problem (`read_configuration` for more)."""
        return read_configuration(env).require()

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

    @property
    def orders_in_flight(self) -> int:
        """Orders worked at once: ORDERS_PER_RENDER_PROCESS for each of the `workers` render processes."""
        return self.workers * ORDERS_PER_RENDER_PROCESS

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
        # The URL itself is not secret (it says where the database is), only its password.
        values = [v.value for v in vars(self).values() if isinstance(v, Secret) and v is not self.database_url]
        if self.database_url is not None:
            values.extend(url_passwords(self.database_url.value))
        return [v for v in values if v]


# Limits of one render process (see fulfilment.render and healer.render.pool.RenderPool).
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

# While one order renders, the others of its render process copy their uploads, upload their PDF
# and send their email: the render process then never waits on an order's I/O, which on a
# customer's 12 MP photo takes longer than the render itself (bench/completion_bench.py). Each
# order waiting for a render holds its inputs in memory (a photo, at most MAX_PHOTO_BYTES).
ORDERS_PER_RENDER_PROCESS = 3

# No setting means more than a year (of seconds, attempts or workers): a larger value is a typo.
MAX_NUMBER = 366 * 86400

# An admin token guards retries of paid orders: long enough that guessing it is hopeless.
MIN_ADMIN_TOKEN_CHARS = 32

_EMAIL = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")
_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Source(enum.StrEnum):
    """Where a variable's effective value came from, for `healer config`."""

    ENV = "env"
    DEFAULT = "default"
    EMBEDDED = "embedded"  # unset, so healer runs that peer itself (SQLite, a local store, an outbox)


@dataclass(frozen=True)
class Variable:
    """One variable as `healer config` shows it: value already masked when it is a secret."""

    name: str
    value: str
    source: Source
    problem: str = ""


@dataclass(frozen=True)
class Configuration:
    """Everything read from one environment: each variable with its source, and every problem."""

    variables: tuple[Variable, ...]
    problems: tuple[str, ...]
    settings: Settings | None  # None when there are problems

    def require(self) -> Settings:
        if self.settings is None:
            raise SettingsError(self.problems)
        return self.settings


def read_configuration(env: Mapping[str, str] | None = None) -> Configuration:
    return _Reader(os.environ if env is None else env).configuration()


# Unset, these make healer run the peer itself; what each then uses is said by `embedded_defaults`.
_EMBEDDED = frozenset({"DATABASE_URL", "S3_BUCKET", "SENDGRID_API_KEY", "STRIPE_SECRET_KEY"})


def _shown(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Secret):
        return value.masked
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


class _Reader:
    """Parses one variable at a time, each error naming its variable; collects every error rather
    than stopping at the first, so one run of `healer config` lists them all."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.variables: dict[str, Variable] = {}
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def value(self, name: str, default: T, parse: Callable[[str], T], *, secret: bool = False) -> T:
        """`parse` the variable if set (a `SettingsError` is noted, and the default used so reading
        goes on), else `default`; either way the variable is recorded with its source."""
        raw = self.raw(name)
        if raw is None:
            source = Source.EMBEDDED if name in _EMBEDDED else Source.DEFAULT
            self.variables[name] = Variable(name, _shown(default), source)
            return default
        shown = mask_url_password(raw) if name == "DATABASE_URL" else mask_secret(raw) if secret else raw
        try:
            parsed = parse(raw)
        except SettingsError as error:
            self.problem(str(error))
            self.variables[name] = Variable(name, shown, Source.ENV, str(error))
            return default
        self.variables[name] = Variable(name, shown if secret or name == "DATABASE_URL" else _shown(parsed), Source.ENV)
        return parsed

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def text(self, name: str, default: str) -> str:
        return self.value(name, default, str)

    def flag(self, name: str, default: bool) -> bool:
        def parse(value: str) -> bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise SettingsError(f"{name}={value!r} must be on or off")

        return self.value(name, default, parse)

    def secret(self, name: str, check: Callable[[Secret], None] = lambda _: None) -> Secret | None:
        def parse(value: str) -> Secret:
            secret = Secret(value)
            check(secret)
            return secret

        return self.value(name, None, parse, secret=True)

    def number(
        self, name: str, default: float, *, minimum: float, maximum: float = MAX_NUMBER, integer: bool = False
    ) -> float:
        def parse(value: str) -> float:
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

        return self.value(name, default, parse)

    def integer(self, name: str, default: int, *, minimum: int, maximum: int = MAX_NUMBER) -> int:
        return int(self.number(name, default, minimum=minimum, maximum=maximum, integer=True))

    def port(self, name: str, default: int) -> int:
        return self.integer(name, default, minimum=0, maximum=65535)

    def admin_token(self) -> Secret | None:
        def long_enough(token: Secret) -> None:
            if len(token.value) < MIN_ADMIN_TOKEN_CHARS:
                raise SettingsError(
                    f"HEALER_ADMIN_TOKEN is {len(token.value)} characters: it must be at least "
                    f"{MIN_ADMIN_TOKEN_CHARS} (e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )

        return self.secret("HEALER_ADMIN_TOKEN", long_enough)

    def url(self, name: str, default: str | None = None) -> str | None:
        def parse(value: str) -> str:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise SettingsError(f"{name}={value!r} is not an http(s) URL")
            return value.rstrip("/")

        return self.value(name, default, parse)

    def duration(self, name: str, default: int) -> int:
        def parse(value: str) -> int:
            match = _DURATION.match(value.lower())
            if not match:
                raise SettingsError(f"{name}={value!r} is not a duration (seconds, or e.g. 30m, 24h, 7d)")
            return int(match.group(1)) * _DURATION_UNITS[match.group(2)]

        return self.value(name, default, parse)

    def directory(self, name: str, default: str) -> Path:
        """A directory that exists or can be made: its nearest existing ancestor is a directory."""
        def parse(value: str) -> Path:
            path = Path(value).resolve()
            existing = next(p for p in (path, *path.parents) if p.exists())
            if not existing.is_dir():
                raise SettingsError(f"{name}={str(path)!r} cannot be a directory: {existing} is a file")
            return path

        return self.value(name, Path(default).resolve(), parse)

    def docker_host(self) -> str | None:
        def parse(value: str) -> str:
            if urlsplit(value).scheme not in ("unix", "tcp", "http", "https", "ssh"):
                raise SettingsError(f"DOCKER_HOST={value!r} is not a unix://, tcp:// or ssh:// address")
            return value

        return self.value("DOCKER_HOST", None, parse)

    def database_url(self) -> Secret | None:
        def parse(value: str) -> Secret:
            scheme = urlsplit(value).scheme
            if not scheme.startswith(("postgresql", "postgres", "sqlite")):
                raise SettingsError(
                    f"DATABASE_URL has scheme {scheme or 'none'!r}: expected postgresql:// or sqlite://")
            if scheme.startswith("postgres") and not scheme.startswith("postgresql"):
                value = "postgresql" + value[len("postgres") :]  # Heroku-style alias
            return Secret(value)

        return self.value("DATABASE_URL", None, parse)

    def configuration(self) -> Configuration:
        values = self.settings_fields()
        settings = None if self.problems else Settings(**values)
        if settings is not None and settings.database_url is None:  # say what the embedded default is
            self.variables["DATABASE_URL"] = Variable("DATABASE_URL", settings.effective_database_url,
                                                      Source.EMBEDDED)
        return Configuration(tuple(self.variables.values()), tuple(self.problems), settings)

    def settings_fields(self) -> dict[str, Any]:
        """Read in groups: each returns its `Settings` fields, checking the variables that go together."""
        return {**self.paths(), **self.listeners(), **self.peers(), **self.limits(), **self.retry(),
                **self.remediation(),
                "log_format": self.value("HEALER_LOG_FORMAT", LogFormat.default(), _log_format)}

    def paths(self) -> dict[str, Any]:
        return {"data_dir": self.directory("HEALER_DATA_DIR", "./var"),
                "assets_dir": Path(self.text("HEALER_ASSETS_DIR", str(bundled_assets_dir()))).resolve(),
                "database_url": self.database_url()}

    def listeners(self) -> dict[str, Any]:
        host, port = self.text("HEALER_HTTP_HOST", "127.0.0.1"), self.port("HEALER_HTTP_PORT", 8080)
        ops_host, ops_port = self.text("HEALER_OPS_HOST", "127.0.0.1"), self.port("HEALER_OPS_PORT", 8081)
        if port != 0 and port == ops_port and host == ops_host:
            self.problem(
                f"HEALER_OPS_PORT={ops_port} is also HEALER_HTTP_PORT: the operator listener needs its own port"
            )
        rate_limit = self.integer("HEALER_PUBLIC_RATE_LIMIT_PER_MINUTE", 120, minimum=1, maximum=1_000_000)
        # Alerts link here; the operator listener serves the guide at /runbook, so the default works
        # wherever Prometheus reaches the operator port (a wildcard address names this host instead).
        runbook_host = socket.gethostname() if ops_host in ("0.0.0.0", "::", "") else ops_host
        runbook_host = f"[{runbook_host}]" if ":" in runbook_host else runbook_host
        return {"http_host": host, "http_port": port, "ops_host": ops_host, "ops_port": ops_port,
                "public_rate_limit_per_minute": rate_limit, "admin_token": self.admin_token(),
                "public_base_url": self.url("PUBLIC_BASE_URL", f"http://{host}:{port}"),
                "runbook_base_url": self.url("HEALER_RUNBOOK_BASE_URL", f"http://{runbook_host}:{ops_port}/runbook")}

    def peers(self) -> dict[str, Any]:
        """S3, SendGrid and Stripe: each a credential checked for shape, and where to reach it."""
        access_key, secret_key = self.secret("AWS_ACCESS_KEY_ID"), self.secret("AWS_SECRET_ACCESS_KEY")
        if (self.raw("AWS_ACCESS_KEY_ID") is None) != (self.raw("AWS_SECRET_ACCESS_KEY") is None):
            missing = "AWS_SECRET_ACCESS_KEY" if secret_key is None else "AWS_ACCESS_KEY_ID"
            self.problem(f"{missing} is unset while its partner is set: set both or neither")
        return {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key,
                "s3_bucket": self.value("S3_BUCKET", None, _bucket), "s3_region": self.value("S3_REGION", None, str),
                "s3_endpoint_url": self.url("S3_ENDPOINT_URL"),
                "from_email": self.value("FROM_EMAIL", "posters@localhost.localdomain", _email),
                "sendgrid_api_key": self.secret("SENDGRID_API_KEY", _sendgrid_key),
                "sendgrid_api_base": self.url("SENDGRID_API_BASE"),
                "sendgrid_webhook_public_key": self.value("SENDGRID_WEBHOOK_PUBLIC_KEY", None,
                                                          _sendgrid_public_key),
                "stripe_secret_key": self.secret("STRIPE_SECRET_KEY", _stripe_key),
                "stripe_webhook_secret": self.secret("STRIPE_WEBHOOK_SECRET"),
                "stripe_api_base": self.url("STRIPE_API_BASE")}

    def limits(self) -> dict[str, Any]:
        """Intervals, deadlines and sizes: how often healer acts and how much one order may take."""
        return {
            "session_expiration_seconds": self.duration("SESSION_EXPIRATION", 86400),
            "check_interval_seconds": self.number("HEALER_CHECK_INTERVAL_SECONDS", 30, minimum=0.1),
            "worker_interval_seconds": self.number("HEALER_WORKER_INTERVAL_SECONDS", 2, minimum=0.05),
            "reconcile_interval_seconds": self.number("HEALER_RECONCILE_INTERVAL_SECONDS", 300, minimum=1),
            # 0 turns the scheduled canary off; anything else is how often it runs.
            "canary_interval_seconds": self.number("HEALER_CANARY_INTERVAL_SECONDS", 900, minimum=0) or None,
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
            self.problem(
                f"HEALER_RETRY_MAX_SECONDS={retry_max:g} is below HEALER_RETRY_BASE_SECONDS={retry_base:g}"
            )
        return {"retry_base_seconds": retry_base, "retry_max_seconds": retry_max,
                "max_attempts": self.integer("HEALER_MAX_ATTEMPTS", 10, minimum=1),
                "refund_on_failure": self.flag("HEALER_REFUND_ON_FAILURE", False),
                "refund_grace_seconds": self.integer("HEALER_REFUND_GRACE_SECONDS", 86400, minimum=0)}

    def remediation(self) -> dict[str, Any]:
        docker_host = self.docker_host()
        autoheal_docker = self.flag("HEALER_AUTOHEAL_DOCKER", False)
        if autoheal_docker and docker_host is None:
            self.problem("HEALER_AUTOHEAL_DOCKER=on needs DOCKER_HOST (the engine whose containers it restarts)")
        return {"remediation": self.value("HEALER_REMEDIATION", RemediationMode.ON, _remediation_mode),
                "autoheal_label": self.value("HEALER_AUTOHEAL_LABEL", "healer.autoheal=true", _label),
                "docker_host": docker_host, "autoheal_docker": autoheal_docker,
                "autoheal_unhealthy_seconds": self.number("HEALER_AUTOHEAL_UNHEALTHY_SECONDS", 60, minimum=0),
                "autoheal_max_restarts": self.integer("HEALER_AUTOHEAL_MAX_RESTARTS", 3, minimum=0),
                "autoheal_window_seconds": self.number("HEALER_AUTOHEAL_WINDOW_SECONDS", 3600, minimum=1),
                "compose_project": self.text("HEALER_COMPOSE_PROJECT", "healer")}


# -- parsers of one variable each: the value, or a SettingsError naming the variable ---------------


def _bucket(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
        raise SettingsError(f"S3_BUCKET={value!r} is not a valid S3 bucket name")
    return value


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise SettingsError(f"FROM_EMAIL={value!r} is not an email address")
    return value


def _sendgrid_key(key: Secret) -> None:
    if not key.value.startswith("SG."):
        raise SettingsError(f"SENDGRID_API_KEY={key.masked} does not start with 'SG.'")


def _sendgrid_public_key(value: str) -> str:
    try:
        return public_key_text(value)
    except ValueError as error:
        raise SettingsError(
            f"SENDGRID_WEBHOOK_PUBLIC_KEY is not SendGrid's verification key: {error} (copy it from "
            "SendGrid: Settings > Mail Settings > Event Webhook, Signature Verification)") from None


def _stripe_key(key: Secret) -> None:
    if not key.value.startswith(("sk_", "rk_")):
        raise SettingsError(f"STRIPE_SECRET_KEY={key.masked} is not a secret key (sk_... or rk_...)")


def _remediation_mode(value: str) -> RemediationMode:
    try:
        return RemediationMode(value.lower())
    except ValueError:
        raise SettingsError(f"HEALER_REMEDIATION={value!r} must be one of off, dry-run, on") from None


def _log_format(value: str) -> LogFormat:
    try:
        return LogFormat(value.lower())
    except ValueError:
        raise SettingsError(f"HEALER_LOG_FORMAT={value!r} must be json or text") from None


def _label(value: str) -> str:
    if "=" not in value or value.startswith("="):
        raise SettingsError(f"HEALER_AUTOHEAL_LABEL={value!r} is not a key=value label")
    return value
