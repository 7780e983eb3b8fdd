"""What every object store is: the protocol, and the checks both stores share.

Keys come from the shop's database, so they are validated before use: a key must never name a
file outside the local root, nor be read differently by S3 and by a file system.
"""

from __future__ import annotations

import unicodedata
from typing import Protocol, runtime_checkable

from fulfilment.errors import ErrorClass, StepError

MAX_KEY_BYTES = 1024  # S3's own limit
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 refuses presigned URLs that live longer


@runtime_checkable
class ObjectStore(Protocol):
    kind: str  # "s3" | "local"

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def get(self, key: str, max_bytes: int | None = None) -> bytes: ...

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def copy(self, src_key: str, dst_key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def download_url(self, key: str, expires_seconds: int) -> str | None: ...


def validate_key(key: str) -> str:
    """Return `key` if it is safe as both an S3 key and a relative path, else raise BAD_INPUT."""
    problem = _key_problem(key)
    if problem is not None:
        raise invalid_key(key, problem)
    return key


def invalid_key(key: object, problem: object) -> StepError:
    return StepError(ErrorClass.BAD_INPUT, f"invalid object key {clip(repr(key), 80)}: {problem}")


def _key_problem(key: object) -> str | None:
    if not isinstance(key, str) or not key:
        return "empty"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "not encodable as UTF-8"
    if size > MAX_KEY_BYTES:
        return f"longer than {MAX_KEY_BYTES} bytes"
    if key.startswith("/"):
        return "absolute"
    if "\\" in key:
        return "contains a backslash"
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        return "contains a control character"
    segments = key.split("/")
    if any(segment in (".", "..") for segment in segments):
        return "contains a '.' or '..' segment"
    # "a//b" and "a/" are distinct S3 keys but collapse onto other paths on disk.
    if "" in segments:
        return "contains an empty segment"
    return None


def check_expiry(expires_seconds: int) -> None:
    if not 0 < expires_seconds <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"expires_seconds must be in 1..{MAX_PRESIGN_SECONDS}, got {expires_seconds}")


def check_size(target: str, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise StepError(
            ErrorClass.BAD_INPUT, f"{target}: object is {size} bytes, more than the {max_bytes} allowed"
        )


def clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
