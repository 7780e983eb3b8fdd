"""Objects in one S3 bucket (`S3Store`), and the boto3 client it is given (`make_s3_client`).

Every failure is raised as the `StepError` that `fulfilment.storage.s3_errors` classifies.
"""

from __future__ import annotations

import logging
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from fulfilment.errors import ErrorClass, StepError
from fulfilment.storage.base import check_expiry, check_size, validate_key
from fulfilment.storage.s3_errors import MISSING_CODES, error_code, no_such_bucket, s3_errors

log = logging.getLogger(__name__)


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
        with s3_errors(target):
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            try:
                # The length arrives with the headers, so an oversized object is refused unread.
                check_size(target, int(response["ContentLength"]), max_bytes)
                data: bytes = body.read()
                return data
            finally:
                body.close()

    def put(self, key: str, data: bytes, content_type: str) -> None:
        validate_key(key)
        with s3_errors(f"put {self._url(key)}"):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def copy(self, src_key: str, dst_key: str) -> bool:
        validate_key(src_key)
        validate_key(dst_key)
        target = f"copy {self._url(src_key)} -> {self._url(dst_key)}"
        # Two requests on a first attempt, not three: the destination's HEAD (absent, as a rule),
        # then the copy, which names a missing source or bucket in its error body (HEAD has no
        # body to tell them apart). The source is HEADed only when the destination exists, to
        # tell a copy already made (same size: not made again) from a torn one.
        dst = self._head_object(dst_key, target)
        if dst is not None:
            src = self._head_object(src_key, target)
            if src is None:
                raise StepError(ErrorClass.S3_MISSING_FILE, f"{target}: source object not found")
            if dst["ContentLength"] == src["ContentLength"]:
                log.debug("%s: destination already present with the same size, not copied", target)
                return False
        # copy_object is server-side and handles objects up to 5 GB, far above any upload.
        with s3_errors(target):
            try:
                self._client.copy_object(
                    Bucket=self.bucket,
                    Key=dst_key,
                    CopySource={"Bucket": self.bucket, "Key": src_key},
                    MetadataDirective="COPY",
                )
            except ClientError as exc:
                if error_code(exc) not in MISSING_CODES:
                    raise  # NoSuchBucket among them: classified by s3_errors as the configuration fault it is
                raise StepError(ErrorClass.S3_MISSING_FILE, f"{target}: source object not found") from exc
        log.info("%s: copied", target)
        return True

    def delete(self, key: str) -> None:
        validate_key(key)
        with s3_errors(f"delete {self._url(key)}"):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def download_url(self, key: str, expires_seconds: int) -> str | None:
        validate_key(key)
        check_expiry(expires_seconds)
        with s3_errors(f"presign {self._url(key)}"):
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
        with s3_errors(target):
            try:
                head: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=key)
                return head
            except ClientError as exc:
                if error_code(exc) not in MISSING_CODES:
                    raise
                return None

    def _require_bucket(self, target: str) -> None:
        # A 404 on HEAD cannot tell a missing key from a missing bucket. A missing bucket is a
        # configuration fault (retry once fixed), not a lost file (give up), so ask. A listing
        # answers with an error body and needs only s3:ListBucket, which a 404 on HEAD implies.
        with s3_errors(target):
            try:
                self._client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            except ClientError as exc:
                if error_code(exc) != "NoSuchBucket":
                    raise
                raise no_such_bucket(target) from exc


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
