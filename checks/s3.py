"""The `s3` check: the daemon can reach its bucket and write, copy and delete objects in it.

Every probe makes one cheap read of the bucket. A write/copy/delete round trip under
`healthcheck/` proves the permissions order completion needs, but costs six requests, so it runs
only every `round_trip_every_seconds` once it has passed (and on every probe until it passes).
`invalidate()` (a step's S3 failure, healer.health.monitor) forgets that it passed, so the next probe
makes the round trip, and so does every probe after it until one passes again.

Each failure is named, because each has its own fix: no credentials, access denied, no such
bucket, endpoint unreachable, wrong region, S3 unavailable, slow. Error mapping is
`fulfilment.storage`'s, shared with the pipeline, so a step and this check describe a fault alike.

On the embedded default (no S3_BUCKET) `LocalStoreCheck` takes the same name and proves that the
local store's directory is writable.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from checks.base import Check, CheckFailed, CheckWarning, Healthy, Runbook
from fulfilment.errors import ErrorClass, StepError
from fulfilment.storage import LocalStore, S3Store, classify_s3_error

HEALTH_PREFIX = "healthcheck/"
PERMISSIONS = "s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject"

_DENIED_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "ExpiredToken", "InvalidClientTokenId", "AllAccessDisabled", "403",
})
_REGION_CODES = frozenset({"AuthorizationHeaderMalformed", "PermanentRedirect", "301"})
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "404", "NotFound"})

T = TypeVar("T")


@dataclass
class _RoundTrips:
    """What a check remembers between probes (its fields are configuration, this is not)."""

    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    last_ok: float | None = None  # time.monotonic() of the last round trip that passed
    lock: threading.Lock = field(default_factory=threading.Lock)

    def due(self, every: float) -> bool:
        with self.lock:
            return self.last_ok is None or time.monotonic() - self.last_ok >= every

    def passed(self) -> None:
        with self.lock:
            self.last_ok = time.monotonic()

    def forget(self) -> None:
        with self.lock:
            self.last_ok = None

    def age(self) -> float:
        with self.lock:
            return time.monotonic() - self.last_ok if self.last_ok is not None else 0.0


@dataclass(frozen=True, kw_only=True)
class S3Check(Check):
    name: ClassVar[str] = "s3"
    runbook: ClassVar[Runbook] = Runbook.S3_PERMISSION

    # A client of its own (fulfilment.storage.make_s3_client), with short timeouts and one
    # attempt, so a probe reports what S3 did rather than what retries hid.
    client: Any
    bucket: str
    round_trip_every_seconds: float = 600.0
    slow_seconds: float = 2.0
    _round_trips: _RoundTrips = field(default_factory=_RoundTrips, init=False, repr=False, compare=False)

    def probe(self) -> Healthy:
        read_seconds = self._read()
        if self._round_trips.due(self.round_trip_every_seconds):
            self._round_trip()
            self._round_trips.passed()
            trip = "write/copy/delete ok just now"
        else:
            trip = f"write/copy/delete ok {self._round_trips.age():.0f}s ago"
        where = f"bucket {self.bucket} at {self._endpoint()}"
        if read_seconds > self.slow_seconds:
            raise CheckWarning(
                f"slow: listing {where} took {read_seconds * 1000:.0f} ms "
                f"(over {self.slow_seconds * 1000:.0f} ms); {trip}",
                "S3 answers slowly from here: check the network path to S3_ENDPOINT_URL / the "
                "region (S3_REGION); orders still complete, more slowly",
                {"read_seconds": read_seconds},
            )
        return Healthy(f"{where} readable in {read_seconds * 1000:.0f} ms; {trip}",
                       {"read_seconds": read_seconds})

    def invalidate(self) -> None:
        self._round_trips.forget()

    def _read(self) -> float:
        """One listing of the health prefix: the cheap probe, timed.

        A listing rather than HEAD bucket: it needs the same permission (s3:ListBucket) and costs
        the same, but its error body tells a wrong secret from a missing permission.
        """
        started = time.monotonic()
        self._call(f"list s3://{self.bucket}/{HEALTH_PREFIX}", lambda: self.client.list_objects_v2(
            Bucket=self.bucket, Prefix=HEALTH_PREFIX, MaxKeys=1))
        return time.monotonic() - started

    def _round_trip(self) -> None:
        store = S3Store(self.client, self.bucket)
        original = f"{HEALTH_PREFIX}{self._round_trips.instance}.probe"
        copy = f"{HEALTH_PREFIX}{self._round_trips.instance}.copy"
        payload = f"healer s3 check {time.time():.0f}\n".encode()
        try:
            store.put(original, payload, "text/plain")
            store.copy(original, copy)
            store.delete(copy)
            store.delete(original)
        except StepError as error:
            raise self._failure(error.__cause__, error.message) from None

    def _call(self, target: str, request: Callable[[], T]) -> T:
        try:
            return request()
        except (ClientError, BotoCoreError) as error:
            raise self._failure(error, classify_s3_error(error, target).message) from None

    def _failure(self, cause: BaseException | None, said: str) -> CheckFailed:
        kind, remedy = self._diagnose(cause)
        return CheckFailed(f"{kind}: {said}", remedy)

    def _diagnose(self, cause: BaseException | None) -> tuple[str, str]:
        if isinstance(cause, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
            return "no credentials", (
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or give the host an IAM role)")
        if isinstance(cause, (BotoConnectionError, HTTPClientError)):
            return "endpoint unreachable", (
                f"cannot reach {self._endpoint()}: check S3_ENDPOINT_URL (unset for AWS), "
                "S3_REGION, and the network, DNS and proxy path")
        if isinstance(cause, ClientError):
            return self._diagnose_code(_code(cause), _status(cause))
        return "S3 unavailable", "S3 answers with errors: check the provider's status page, then S3_ENDPOINT_URL"

    def _diagnose_code(self, code: str, status: int | None) -> tuple[str, str]:
        if code in _MISSING_BUCKET_CODES:
            return "no such bucket", (
                f"bucket {self.bucket} does not exist at {self._endpoint()}: check S3_BUCKET "
                "(and S3_REGION / S3_ENDPOINT_URL), or create the bucket")
        if code in _DENIED_CODES or status == 403:
            return "access denied", (
                "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (a matching, active pair) and "
                f"that the key's IAM or bucket policy allows {PERMISSIONS}: s3:ListBucket on "
                f"arn:aws:s3:::{self.bucket}, the others on arn:aws:s3:::{self.bucket}/*")
        if code in _REGION_CODES:
            return "wrong region", f"bucket {self.bucket} is in another region: set S3_REGION to it"
        if code == "RequestTimeTooSkewed":
            return "clock skew", "this host's clock is off: enable time synchronisation (NTP)"
        return "S3 unavailable", (
            "S3 answers with errors or throttles: usually transient; check the provider's status "
            "page if it lasts")

    def _endpoint(self) -> str:
        return str(getattr(self.client.meta, "endpoint_url", "S3"))


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int | None:
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


@dataclass(frozen=True, kw_only=True)
class LocalStoreCheck(Check):
    """The `s3` check on the embedded default: the local store's directory takes writes."""

    name: ClassVar[str] = "s3"
    runbook: ClassVar[Runbook] = Runbook.S3_PERMISSION

    root: Path

    def probe(self) -> str:
        if not self.root.parent.is_dir():
            # The data directory is made by the daemon at start; a probe that made it would hide
            # that it is the wrong one (`healer check` run from another directory, say).
            raise CheckFailed(f"local store: the data directory {self.root.parent} does not exist",
                              "set HEALER_DATA_DIR to the daemon's data directory (or set S3_BUCKET)")
        store = LocalStore(self.root)
        key = f"{HEALTH_PREFIX}probe"
        try:
            store.put(key, b"healer s3 check\n", "text/plain")
            store.delete(key)
        except StepError as error:
            raise CheckFailed(f"local store not writable: {error.message}", _local_remedy(error)) from None
        return f"local store (S3_BUCKET unset): {store.root} is writable"


def _local_remedy(error: StepError) -> str:
    if error.error_class is ErrorClass.RESOURCES:
        return "free space under HEALER_DATA_DIR (or grow its volume)"
    return ("make HEALER_DATA_DIR/store a writable directory for the daemon's user "
            "(or set S3_BUCKET to store objects in S3)")
