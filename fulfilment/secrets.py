"""Masking of secrets for logs, health output, metrics and reprs.

A mask keeps just enough to tell two credentials apart (which kind of key, and which one of them)
without giving anything usable away: `AKIAIOSFODNN7EXAMPLE` -> `AKIA…MPLE`,
`sk_test_51Hx…9a1234` -> `sk_test_…1234`, `whsec_…wxyz`, `SG.…abcd`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

ELLIPSIS = "…"

# A key-kind prefix is a few short, separator-terminated words: `sk_test_`, `rk_live_`, `whsec_`,
# `SG.`. Longer words are key material, not a kind, so they are never shown.
_PREFIX_WORD = re.compile(r"[A-Za-z0-9]{1,5}[_.\-]")
_MODE_WORD = re.compile(r"(?:test|live)_")
_PLAIN_PREFIX_CHARS = 4
_SUFFIX_CHARS = 4
# Below this length, prefix and suffix would reveal too large a share of the secret.
_MIN_REVEALING_LENGTH = 16


def mask_secret(value: str) -> str:
    """`value` with everything but a short kind-prefix and the last 4 characters replaced by `…`.

    Values too short to mask safely become `…` alone; an empty value stays empty, so "not set"
    remains visible to an operator.
    """
    if not value:
        return ""
    prefix = _prefix(value)
    shown = len(prefix) + _SUFFIX_CHARS
    if len(value) < _MIN_REVEALING_LENGTH or shown * 2 > len(value):
        return ELLIPSIS
    return f"{prefix}{ELLIPSIS}{value[-_SUFFIX_CHARS:]}"


def _prefix(value: str) -> str:
    first = _PREFIX_WORD.match(value)
    if first is None:
        return value[:_PLAIN_PREFIX_CHARS]
    # A second word is shown only when it names a mode (`sk_test_`): in keys like SendGrid's,
    # whose body is URL-safe base64, a short word ending in `-` or `_` is key material.
    mode = _MODE_WORD.match(value, first.end())
    return value[: mode.end() if mode else first.end()]


# A password in a connection string that some driver or pool message echoes: userinfo
# (`scheme://user:PASSWORD@host`) or a query parameter (`?password=PASSWORD`), whatever the value.
_URL_USERINFO_PASSWORD = re.compile(r"(?P<keep>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(?=@)", re.IGNORECASE)
_PASSWORD_PARAMETER = re.compile(r"(?P<keep>\b(?:password|passwd|pass|sslpassword)=)[^&\s'\"]+", re.IGNORECASE)
# Shorter values would mangle ordinary words; no real secret is this short.
MIN_REDACTED_LENGTH = 6


class Redactor:
    """Masks every known secret value, and any password in a URL, in a piece of text.

    One instance holds the configuration's secrets; every output boundary (logs, health, HTTP
    error bodies, the CLI) passes text through it. Known values are replaced longest first, so a
    secret that contains another is masked whole.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_REDACTED_LENGTH}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, mask_secret(secret))
        text = _URL_USERINFO_PASSWORD.sub(r"\g<keep>***", text)
        return _PASSWORD_PARAMETER.sub(r"\g<keep>***", text)


class RedactingFilter(logging.Filter):
    """A logging filter that formats a record's message and arguments once, redacted: attach it to
    a handler so that no line that handler writes can carry a secret (tracebacks included)."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


# Query parameters that carry a password in a database URL (libpq's and the drivers' names).
_PASSWORD_PARAMS = ("password", "pass", "passwd", "sslpassword")


def url_passwords(url: str) -> list[str]:
    """The passwords a database URL carries: in its userinfo and in its query string."""
    parts = urlsplit(url)
    found = [parts.password] if parts.password else []
    found.extend(value for name, value in parse_qsl(parts.query, keep_blank_values=False)
                 if name.lower() in _PASSWORD_PARAMS)
    return [unquote(p) for p in found] + found


def mask_url_password(url: str) -> str:
    """The URL with every password (userinfo, `?password=`) replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None and not parts.query:
        return url  # as it was: urlunsplit would turn sqlite:///path into sqlite:/path
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@")
    query = "&".join(
        f"{name}=***" if name.lower() in _PASSWORD_PARAMS else f"{name}={value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return parts._replace(netloc=netloc, query=query).geturl()
