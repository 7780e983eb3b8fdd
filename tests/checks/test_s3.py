"""The `s3` check against moto over HTTP (plain, and enforcing IAM), a closed port, and the local
store: each failure it names, and back to ok once fixed."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from checks.base import Status, run_check
from checks.s3 import HEALTH_PREFIX, LocalStoreCheck, S3Check
from fulfilment.storage import make_s3_client
from tests.fakes.ports import free_port
from tests.fakes.s3_fixtures import REGION, MotoBucket, MotoIam, moto_client, unique_bucket_name

PERMISSIONS = ("s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject")


def fresh_client(endpoint_url: str, key_id: str | None = "testing", secret: str | None = "testing") -> Any:
    """A client of the check's own kind (one attempt), not shared with other tests."""
    return make_s3_client(access_key_id=key_id, secret_access_key=secret, region=REGION,
                          endpoint_url=endpoint_url, connect_timeout=2, read_timeout=5, max_attempts=1)


def count_requests(client: Any) -> list[str]:
    sent: list[str] = []
    client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.method))
    return sent


def health_objects(s3: MotoBucket) -> list[str]:
    listing = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=HEALTH_PREFIX)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_ok_after_a_write_copy_delete_round_trip_that_leaves_nothing_behind(s3_bucket: MotoBucket) -> None:
    result = run_check(S3Check(client=fresh_client(s3_bucket.endpoint_url), bucket=s3_bucket.bucket))

    assert result.status is Status.OK, result
    assert f"bucket {s3_bucket.bucket} at {s3_bucket.endpoint_url} readable" in result.detail
    assert "write/copy/delete ok just now" in result.detail
    assert health_objects(s3_bucket) == []


def test_the_round_trip_is_throttled_to_one_cheap_read_between_round_trips(s3_bucket: MotoBucket) -> None:
    client = fresh_client(s3_bucket.endpoint_url)
    sent = count_requests(client)
    check = S3Check(client=client, bucket=s3_bucket.bucket, round_trip_every_seconds=3600)

    first = run_check(check)
    after_first = list(sent)
    second = run_check(check)

    assert first.status is second.status is Status.OK
    assert {"PUT", "DELETE"} <= set(after_first) and len(after_first) >= 6
    assert sent[len(after_first):] == ["GET"]  # one listing
    assert "write/copy/delete ok 0s ago" in second.detail


def test_without_throttling_every_probe_makes_the_round_trip(s3_bucket: MotoBucket) -> None:
    client = fresh_client(s3_bucket.endpoint_url)
    sent = count_requests(client)
    check = S3Check(client=client, bucket=s3_bucket.bucket, round_trip_every_seconds=0)

    run_check(check)
    run_check(check)

    assert sent.count("PUT") == 4  # put + server-side copy, twice


def test_wrong_secret_is_access_denied_naming_variables_and_permissions(
    moto_iam_server: MotoIam, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wRoNg" + uuid.uuid4().hex + "SECRET"
    failing = run_check(S3Check(client=moto_iam_server.client(secret_access_key=wrong), bucket=moto_iam_server.bucket))
    fixed = run_check(S3Check(client=moto_iam_server.client(), bucket=moto_iam_server.bucket))

    assert failing.status is Status.FAILING
    assert failing.detail.startswith("access denied: ")
    assert "SignatureDoesNotMatch" in failing.detail
    assert "AWS_ACCESS_KEY_ID" in failing.remedy and "AWS_SECRET_ACCESS_KEY" in failing.remedy
    assert all(permission in failing.remedy for permission in PERMISSIONS)
    assert f"arn:aws:s3:::{moto_iam_server.bucket}/*" in failing.remedy
    shown = f"{failing.detail} {failing.remedy} {caplog.text}"
    assert wrong not in shown and moto_iam_server.app_secret_access_key not in shown
    assert fixed.status is Status.OK, fixed


def test_a_bucket_the_key_may_not_list_is_access_denied(moto_iam_server: MotoIam) -> None:
    result = run_check(S3Check(client=moto_iam_server.client(), bucket=moto_iam_server.other_bucket))

    assert result.status is Status.FAILING
    assert result.detail.startswith("access denied: ") and "AccessDenied" in result.detail


def test_a_key_that_may_list_but_not_write_fails_the_round_trip_on_every_probe(moto_iam_server: MotoIam) -> None:
    key_id, secret = _list_only_user(moto_iam_server)
    check = S3Check(client=moto_iam_server.client(key_id, secret), bucket=moto_iam_server.bucket,
                    round_trip_every_seconds=3600)

    first, second = run_check(check), run_check(check)

    for result in (first, second):  # a failed round trip is retried, not throttled into "ok"
        assert result.status is Status.FAILING
        assert result.detail.startswith("access denied: put s3://")
        assert "s3:PutObject" in result.remedy


def _list_only_user(iam_server: MotoIam) -> tuple[str, str]:
    iam = boto3.client("iam", endpoint_url=iam_server.endpoint_url, region_name=REGION,
                       aws_access_key_id=iam_server.admin_access_key_id,
                       aws_secret_access_key=iam_server.admin_secret_access_key)
    user = f"list-only-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{iam_server.bucket}"}]}
    iam.put_user_policy(UserName=user, PolicyName="list-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def test_a_missing_bucket_is_named_then_ok_once_created(moto_server: str) -> None:
    bucket = unique_bucket_name()
    check = S3Check(client=fresh_client(moto_server), bucket=bucket)

    failing = run_check(check)
    moto_client(moto_server).create_bucket(Bucket=bucket)
    fixed = run_check(check)
    moto_client(moto_server).delete_bucket(Bucket=bucket)

    assert failing.status is Status.FAILING
    assert failing.detail.startswith("no such bucket: ") and "NoSuchBucket" in failing.detail
    assert "S3_BUCKET" in failing.remedy and bucket in failing.remedy
    assert fixed.status is Status.OK, fixed


def test_an_unreachable_endpoint_is_named() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"

    result = run_check(S3Check(client=fresh_client(endpoint), bucket="healer-nowhere"))

    assert result.status is Status.FAILING
    assert result.detail.startswith("endpoint unreachable: ")
    assert "S3_ENDPOINT_URL" in result.remedy and endpoint in result.remedy


def test_no_credentials_names_the_variables(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # boto3 looks for credentials beyond what it is given; make sure it finds none here either.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    result = run_check(S3Check(client=fresh_client(moto_server, None, None), bucket="healer-any"))

    assert result.status is Status.FAILING
    assert result.detail.startswith("no credentials: ")
    assert "AWS_ACCESS_KEY_ID" in result.remedy and "AWS_SECRET_ACCESS_KEY" in result.remedy


def test_a_read_slower_than_the_threshold_is_a_warning(s3_bucket: MotoBucket) -> None:
    result = run_check(S3Check(client=fresh_client(s3_bucket.endpoint_url), bucket=s3_bucket.bucket,
                               slow_seconds=0.0))

    assert result.status is Status.WARNING
    assert result.detail.startswith(f"slow: listing bucket {s3_bucket.bucket}")
    assert "write/copy/delete ok just now" in result.detail


def test_local_store_is_ok_when_writable_and_says_it_is_the_local_store(tmp_path: Path) -> None:
    result = run_check(LocalStoreCheck(root=tmp_path / "store"))

    assert result.status is Status.OK, result
    assert result.detail == f"local store (S3_BUCKET unset): {tmp_path / 'store'} is writable"
    assert list((tmp_path / "store" / "healthcheck").iterdir()) == []


def test_local_store_that_cannot_take_writes_fails_then_ok_once_fixed(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    (root / "healthcheck").write_text("a file where the check's directory must go")
    check = LocalStoreCheck(root=root)

    failing = run_check(check)
    (root / "healthcheck").unlink()
    fixed = run_check(check)

    assert failing.status is Status.FAILING
    assert failing.detail.startswith("local store not writable: put ")
    assert "HEALER_DATA_DIR" in failing.remedy
    assert fixed.status is Status.OK
