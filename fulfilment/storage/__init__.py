"""Object storage for order files: S3 in production, a local directory on a bare machine.

Both stores speak one small protocol and raise nothing but `StepError`, classified so the pipeline
knows what to do next: wait for the `s3` check (credentials, bucket, endpoint), give up on the
order (a file is missing) or wait for disk space (local ENOSPC). Copies never move bytes through
the daemon: S3 copies server-side, the local store hard-links.

Keys come from the shop's database, so they are validated before use: a key must never name a
file outside the local root, nor be read differently by S3 and by a file system.

This package re-exports its public API, so callers import from `fulfilment.storage` alone:
- `base`: the `ObjectStore` protocol, key validation and the limits both stores enforce;
- `s3_errors`: how a boto error becomes a classified `StepError` (shared with `checks.s3`);
- `s3`: `S3Store` and `make_s3_client`;
- `local`: `LocalStore`, its file-system error classification and `write_atomically`.
"""

from fulfilment.storage.base import MAX_KEY_BYTES, MAX_PRESIGN_SECONDS, ObjectStore, validate_key
from fulfilment.storage.local import LocalStore, classify_os_error, write_atomically
from fulfilment.storage.s3 import S3Store, make_s3_client
from fulfilment.storage.s3_errors import classify_s3_error

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_PRESIGN_SECONDS",
    "LocalStore",
    "ObjectStore",
    "S3Store",
    "classify_os_error",
    "classify_s3_error",
    "make_s3_client",
    "validate_key",
    "write_atomically",
]
