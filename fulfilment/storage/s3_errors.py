"""How an S3 failure becomes a classified `StepError`, for the store and for the `s3` check alike.

A missing object gives up on the order, a credential, bucket or region fault waits for the `s3`
check, throttling and outages are retried; every message starts with what was asked
("get s3://b/k") and ends with the hint an operator needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
from fulfilment.storage.base import clip

_CHECK_CREDENTIALS = "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
_POLICY = "the bucket policy (s3:GetObject, s3:PutObject, s3:DeleteObject, s3:ListBucket)"
MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
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


def no_such_bucket(target: str) -> StepError:
    """The error for a bucket that a listing proved missing: a configuration fault, not a lost file."""
    return StepError(ErrorClass.S3_AUTH, f"{target}: {_AUTH_HINTS['NoSuchBucket']} (NoSuchBucket)")


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def s3_errors(target: str) -> Iterator[None]:
    """Raise any boto error inside the block as the classified StepError for `target`."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise classify_s3_error(exc, target) from exc


def _from_client_error(exc: ClientError, target: str) -> StepError:
    code = error_code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    error_class, hint = _classify_code(code, status)
    message = f"{target}: {hint} ({code or 'no code'}, HTTP {status})"
    server_message = exc.response.get("Error", {}).get("Message")
    # Bare numeric codes come from HEAD, whose "message" is only the HTTP reason phrase.
    if server_message and not code.isdigit():
        message += f"; S3 said: {clip(str(server_message))}"
    return StepError(error_class, message)


def _classify_code(code: str, status: int | None) -> tuple[ErrorClass, str]:
    if code in MISSING_CODES:
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
        return StepError(ErrorClass.BAD_INPUT, f"{target}: invalid request: {clip(str(exc))}")
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return StepError(
            ErrorClass.S3_UNAVAILABLE,
            f"{target}: S3 endpoint unreachable or timed out ({type(exc).__name__}): "
            f"{clip(str(exc))}; check S3_ENDPOINT_URL and the network",
        )
    return StepError(ErrorClass.S3_UNAVAILABLE, f"{target}: {type(exc).__name__}: {clip(str(exc))}")
