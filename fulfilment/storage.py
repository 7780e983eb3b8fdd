"""Object storage for order files: S3 in production, a local directory on a bare machine.

Both stores speak one small protocol and raise nothing but `StepError`, classified so the pipeline
knows what to do next: wait for the `s3` check (credentials, bucket, endpoint), give up on the
order (a file is missing) or wait for disk space (local ENOSPC). Copies never move bytes through
the daemon: S3 copies server-side, the local store hard-links.

Keys come from the shop's database, so they are validated before use: a key must never name a
file outside the local root, nor be read differently by S3 and by a file system.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from fulfilment.errors import ErrorClass, StepError

log = logging.getLogger(__name__)

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


# --- keys ----------------------------------------------------------------------------------------


def validate_key(key: str) -> str:
    """Return `key` if it is safe as both an S3 key and a relative path, else raise BAD_INPUT."""
    problem = _key_problem(key)
    if problem is not None:
        raise StepError(ErrorClass.BAD_INPUT, f"invalid object key {_shown(key)}: {problem}")
    return key


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


def _shown(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_expiry(expires_seconds: int) -> None:
    if not 0 < expires_seconds <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"expires_seconds must be in 1..{MAX_PRESIGN_SECONDS}, got {expires_seconds}")


# --- S3 --------------------------------------------------------------------------------------------

_CHECK_CREDENTIALS = "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
_POLICY = "the bucket policy (s3:GetObject, s3:PutObject, s3:DeleteObject, s3:ListBucket)"
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_AUTH_HINTS: dict[str, str] = {
    "InvalidAccessKeyId": f"unknown access key id: {_CHECK_CREDENTIALS}",
    "SignatureDoesNotMatch": "signature does not match: check AWS_SECRET_ACCESS_KEY",
    "AccessDenied": f"access denied: {_CHECK_CREDENTIALS} and {_POLICY}",
    # HEAD responses have no body, so a 403 there cannot say which of the two it is. Without
    # s3:ListBucket, S3 also answers 403 instead of 404 for a key that does not exist.
    "403": f"access denied or bad credentials (no detail on HEAD): {_CHECK_CREDENTIALS} and {_POLICY}",
    "NoSuchBucket": "bucket does not exist: check S3_BUCKET",
    "InvalidBucketName": "invalid bucket name: check S3_BUCKET",
    "AllAccessDisabled": "all access to this bucket is disabled: check S3_BUCKET",
    "InvalidToken": f"security token rejected: {_CHECK_CREDENTIALS}",
    "ExpiredToken": f"security token expired: {_CHECK_CREDENTIALS}",
    "InvalidClientTokenId": f"security token rejected: {_CHECK_CREDENTIALS}",
    "RequestTimeTooSkewed": "request time too skewed: fix this host's clock (NTP)",
    "AuthorizationHeaderMalformed": "request signed for the wrong region: check S3_REGION",
    "PermanentRedirect": "bucket is in another region: check S3_REGION and S3_ENDPOINT_URL",
    "301": "bucket is in another region: check S3_REGION and S3_ENDPOINT_URL",
}
_UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
    }
)
_BAD_INPUT_CODES = frozenset({"KeyTooLongError", "EntityTooLarge"})


def classify_s3_error(exc: ClientError | BotoCoreError, target: str) -> StepError:
    """Turn a boto error into a StepError whose message starts with `target` ("get s3://b/k")."""
    if isinstance(exc, ClientError):
        return _from_client_error(exc, target)
    return _from_botocore_error(exc, target)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _from_client_error(exc: ClientError, target: str) -> StepError:
    code = _error_code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    error_class, hint = _classify_code(code, status)
    message = f"{target}: {hint} ({code or 'no code'}, HTTP {status})"
    server_message = exc.response.get("Error", {}).get("Message")
    # Bare numeric codes come from HEAD, whose "message" is only the HTTP reason phrase.
    if server_message and not code.isdigit():
        message += f"; S3 said: {_clip(str(server_message))}"
    return StepError(error_class, message)


def _classify_code(code: str, status: int | None) -> tuple[ErrorClass, str]:
    if code in _MISSING_CODES:
        return ErrorClass.S3_MISSING_FILE, "object not found"
    if code in _AUTH_HINTS:
        return ErrorClass.S3_AUTH, _AUTH_HINTS[code]
    if code in _BAD_INPUT_CODES:
        return ErrorClass.BAD_INPUT, "request refused as invalid"
    if code in _UNAVAILABLE_CODES or (status is not None and status >= 500):
        return ErrorClass.S3_UNAVAILABLE, "S3 is unavailable or throttling; retry later"
    if status == 403:
        return ErrorClass.S3_AUTH, _AUTH_HINTS["AccessDenied"]
    # Unknown: let the pipeline retry a bounded number of times rather than drop the order.
    return ErrorClass.S3_UNAVAILABLE, "unexpected S3 error"


def _from_botocore_error(exc: BotoCoreError, target: str) -> StepError:
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
        return StepError(
            ErrorClass.S3_AUTH,
            f"{target}: no usable AWS credentials ({type(exc).__name__}): "
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        )
    if isinstance(exc, ParamValidationError):
        return StepError(ErrorClass.BAD_INPUT, f"{target}: invalid request: {_clip(str(exc))}")
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return StepError(
            ErrorClass.S3_UNAVAILABLE,
            f"{target}: S3 endpoint unreachable or timed out ({type(exc).__name__}): "
            f"{_clip(str(exc))}; check S3_ENDPOINT_URL and the network",
        )
    return StepError(ErrorClass.S3_UNAVAILABLE, f"{target}: {type(exc).__name__}: {_clip(str(exc))}")


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def _s3_errors(target: str) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise classify_s3_error(exc, target) from exc


class S3Store:
    """Objects in one S3 bucket, through a boto3 client made by `make_s3_client`."""

    kind: str = "s3"

    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    def __repr__(self) -> str:
        # The client is left out on purpose: nothing here should ever print credentials.
        return f"S3Store(bucket={self.bucket!r})"

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def exists(self, key: str) -> bool:
        validate_key(key)
        return self._head(key, f"exists {self._url(key)}") is not None

    def size(self, key: str) -> int:
        validate_key(key)
        target = f"size {self._url(key)}"
        head = self._head(key, target)
        if head is None:
            raise StepError(ErrorClass.S3_MISSING_FILE, f"{target}: object not found")
        return int(head["ContentLength"])

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        validate_key(key)
        target = f"get {self._url(key)}"
        with _s3_errors(target):
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            try:
                # The length arrives with the headers, so an oversized object is refused unread.
                _check_size(target, int(response["ContentLength"]), max_bytes)
                data: bytes = body.read()
                return data
            finally:
                body.close()

    def put(self, key: str, data: bytes, content_type: str) -> None:
        validate_key(key)
        with _s3_errors(f"put {self._url(key)}"):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def copy(self, src_key: str, dst_key: str) -> bool:
        validate_key(src_key)
        validate_key(dst_key)
        target = f"copy {self._url(src_key)} -> {self._url(dst_key)}"
        src = self._head(src_key, target)
        if src is None:
            raise StepError(ErrorClass.S3_MISSING_FILE, f"{target}: source object not found")
        # The source's HEAD proved the bucket exists, so a 404 here simply means "not copied yet".
        dst = self._head_object(dst_key, target)
        if dst is not None and dst["ContentLength"] == src["ContentLength"]:
            log.debug("%s: destination already present with the same size, not copied", target)
            return False
        # copy_object is server-side and handles objects up to 5 GB, far above any upload.
        with _s3_errors(target):
            self._client.copy_object(
                Bucket=self.bucket,
                Key=dst_key,
                CopySource={"Bucket": self.bucket, "Key": src_key},
                MetadataDirective="COPY",
            )
        log.info("%s: copied %d bytes", target, int(src["ContentLength"]))
        return True

    def delete(self, key: str) -> None:
        validate_key(key)
        with _s3_errors(f"delete {self._url(key)}"):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def download_url(self, key: str, expires_seconds: int) -> str | None:
        validate_key(key)
        _check_expiry(expires_seconds)
        with _s3_errors(f"presign {self._url(key)}"):
            url: str = self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=expires_seconds,
            )
            return url

    def _head(self, key: str, target: str) -> dict[str, Any] | None:
        """HEAD the object; None when it is absent from a bucket that exists."""
        head = self._head_object(key, target)
        if head is None:
            self._require_bucket(target)
        return head

    def _head_object(self, key: str, target: str) -> dict[str, Any] | None:
        with _s3_errors(target):
            try:
                head: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=key)
                return head
            except ClientError as exc:
                if _error_code(exc) not in _MISSING_CODES:
                    raise
                return None

    def _require_bucket(self, target: str) -> None:
        # A 404 on HEAD cannot tell a missing key from a missing bucket. A missing bucket is a
        # configuration fault (retry once fixed), not a lost file (give up), so ask. A listing
        # answers with an error body and needs only s3:ListBucket, which a 404 on HEAD implies.
        with _s3_errors(target):
            try:
                self._client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            except ClientError as exc:
                if _error_code(exc) != "NoSuchBucket":
                    raise
                raise StepError(
                    ErrorClass.S3_AUTH, f"{target}: {_AUTH_HINTS['NoSuchBucket']} (NoSuchBucket)"
                ) from exc


def _check_size(target: str, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise StepError(
            ErrorClass.BAD_INPUT, f"{target}: object is {size} bytes, more than the {max_bytes} allowed"
        )


def make_s3_client(
    *,
    access_key_id: str | None,
    secret_access_key: str | None,
    region: str | None,
    endpoint_url: str | None,
    connect_timeout: float = 5,
    read_timeout: float = 30,
    max_attempts: int = 2,
) -> Any:
    """A boto3 S3 client with short timeouts: the pipeline owns retries, so boto3 barely retries.

    Without a key pair, boto3's default chain applies (instance profile, IRSA, shared config).
    """
    if (access_key_id is None) != (secret_access_key is None):
        missing = "AWS_SECRET_ACCESS_KEY" if secret_access_key is None else "AWS_ACCESS_KEY_ID"
        raise ValueError(f"{missing} is unset but its pair is set: set both or neither")
    session = boto3.session.Session(
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        region_name=region,
    )
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        signature_version="s3v4",
        # Self-hosted endpoints (MinIO, moto) rarely have wildcard DNS for virtual-hosted buckets.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


# --- local directory ------------------------------------------------------------------------------

_DATA_DIR_HINT = "check the owner and mode of the data directory (HEALER_DATA_DIR)"
_OS_CLASSES: dict[int, tuple[ErrorClass, str]] = {
    errno.ENOENT: (ErrorClass.S3_MISSING_FILE, "object not found"),
    errno.ENOTDIR: (ErrorClass.S3_MISSING_FILE, "object not found"),
    errno.ENOSPC: (ErrorClass.RESOURCES, "no space left on device: free space or grow the volume"),
    errno.EDQUOT: (ErrorClass.RESOURCES, "disk quota exceeded: free space or raise the quota"),
    errno.EACCES: (ErrorClass.S3_AUTH, f"permission denied: {_DATA_DIR_HINT}"),
    errno.EPERM: (ErrorClass.S3_AUTH, f"operation not permitted: {_DATA_DIR_HINT}"),
    errno.EROFS: (ErrorClass.S3_AUTH, f"read-only file system: {_DATA_DIR_HINT}"),
    errno.EISDIR: (ErrorClass.BAD_INPUT, "key names a directory of the store"),
    errno.EEXIST: (ErrorClass.BAD_INPUT, "key runs through a file of the store"),
    errno.ENAMETOOLONG: (ErrorClass.BAD_INPUT, "name too long for the file system"),
}


def classify_os_error(exc: OSError, target: str) -> StepError:
    """Turn a file-system error into a StepError whose message starts with `target`."""
    # Anything unlisted (EIO, EMFILE, ENOMEM) is the machine's trouble: wait for disk/memory checks.
    error_class, hint = _OS_CLASSES.get(
        exc.errno or 0, (ErrorClass.RESOURCES, f"file system error: {exc.strerror or exc}")
    )
    return StepError(error_class, f"{target}: {hint} ({errno.errorcode.get(exc.errno or 0, 'OSError')})")


@contextmanager
def _os_errors(target: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise classify_os_error(exc, target) from exc


class LocalStore:
    """Objects as files under one directory; the embedded default when S3_BUCKET is unset."""

    kind: str = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The file for `key`: validated, resolved, and inside the root even through symlinks."""
        validate_key(key)
        try:
            candidate = (self.root / key).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise StepError(ErrorClass.BAD_INPUT, f"invalid object key {_shown(key)}: {exc}") from exc
        if candidate == self.root or not candidate.is_relative_to(self.root):
            raise StepError(
                ErrorClass.BAD_INPUT, f"invalid object key {_shown(key)}: resolves outside {self.root}"
            )
        return candidate

    def exists(self, key: str) -> bool:
        path = self.path(key)
        with _os_errors(f"exists {path}"):
            return _regular_size(path) is not None

    def size(self, key: str) -> int:
        path = self.path(key)
        target = f"size {path}"
        with _os_errors(target):
            size = _regular_size(path)
        if size is None:
            raise StepError(ErrorClass.S3_MISSING_FILE, f"{target}: object not found")
        return size

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        path = self.path(key)
        target = f"get {path}"
        with _os_errors(target):
            if path.is_dir():  # S3 has no directories: "orders/1" is simply not an object
                raise StepError(ErrorClass.S3_MISSING_FILE, f"{target}: object not found")
            with path.open("rb") as handle:
                _check_size(target, os.fstat(handle.fileno()).st_size, max_bytes)
                return handle.read()

    def put(self, key: str, data: bytes, content_type: str) -> None:
        # content_type is not kept: the HTTP app serving local files derives it from the name.
        path = self.path(key)
        with _os_errors(f"put {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, data)

    def copy(self, src_key: str, dst_key: str) -> bool:
        src, dst = self.path(src_key), self.path(dst_key)
        target = f"copy {src} -> {dst}"
        with _os_errors(target):
            src_size = _regular_size(src)
            if src_size is None:
                raise StepError(ErrorClass.S3_MISSING_FILE, f"{target}: source object not found")
            if _regular_size(dst) == src_size:
                log.debug("%s: destination already present with the same size, not copied", target)
                return False
            dst.parent.mkdir(parents=True, exist_ok=True)
            _link_atomically(src, dst)
        log.info("%s: copied %d bytes", target, src_size)
        return True

    def delete(self, key: str) -> None:
        path = self.path(key)
        with _os_errors(f"delete {path}"):
            path.unlink(missing_ok=True)

    def download_url(self, key: str, expires_seconds: int) -> str | None:
        validate_key(key)
        _check_expiry(expires_seconds)
        return None  # the HTTP app streams local files itself


def _regular_size(path: Path) -> int | None:
    """Size of a regular file; None when there is none (absent, or a directory)."""
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a hidden temp file beside `path`, fsync it and rename it over `path`: readers
    see the old file or the new one, never a torn write, even across a crash. OSError is raised as is."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _link_atomically(src: Path, dst: Path) -> None:
    # A hard link shares the inode, which is safe because every write goes through os.replace:
    # rewriting either name later makes a new inode and leaves the other untouched.
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:  # across devices, or a file system without hard links
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
