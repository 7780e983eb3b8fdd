"""Masking of secrets for logs, health output, metrics and reprs.

A mask keeps just enough to tell two credentials apart (which kind of key, and which one of them)
without giving anything usable away: `AKIAIOSFODNN7EXAMPLE` -> `AKIA…MPLE`,
`sk_test_51Hx…9a1234` -> `sk_test_…1234`, `whsec_…wxyz`, `SG.…abcd`.
"""

from __future__ import annotations

import re

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
