"""Pytest fixtures; imported by tests/conftest.py.

S3 is moto in server mode, reached over HTTP by real boto3 clients:

- `moto_server` (session): a plain moto server in this process, no authentication.
- `s3_bucket` (function): a fresh bucket on it, with a client and an `S3Store`.
- `moto_iam_server` (session): a second moto server that enforces IAM, in its own process.

Why a separate process for IAM: moto reads `INITIAL_NO_AUTH_ACTION_COUNT` once, when
`moto.settings` is imported, and keeps it (and the count of actions seen) in module globals. In this
process it would turn on enforcement for `moto_server` too, since both servers would share the
globals and the backends. A child process started with the variable in its environment has its own.
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from fulfilment.storage import S3Store, make_s3_client

REGION = "us-east-1"  # the one region where create_bucket needs no LocationConstraint
DUMMY_KEY_ID = "testing"
DUMMY_SECRET = "testing"

_INSTALL_HINT = "install it with `.venv/bin/pip install 'moto[server]>=5'`"
_MANUAL_START = "run `.venv/bin/python -m moto.server -H 127.0.0.1 -p 5000` by hand to see why"

# The IAM server's free actions: exactly the three that create the admin (below). From the
# fourth request on, every call must be signed by a known key whose policies allow it.
_NO_AUTH_ACTIONS = 3

_IAM_SERVER_SCRIPT = """
import sys
from moto.server import ThreadedMotoServer

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # serve until the parent closes our stdin or dies; the server thread is a daemon
"""


@dataclass(frozen=True)
class MotoBucket:
    endpoint_url: str
    bucket: str
    client: Any  # boto3 S3 client with dummy credentials
    store: S3Store


@dataclass(frozen=True)
class MotoIam:
    """An IAM-enforcing moto server with an admin and an "app" user limited to `bucket`.

    Shared by the whole session: use unique keys, and do not delete the buckets.
    """

    endpoint_url: str
    region: str
    bucket: str  # the app may list it and get/put/delete its objects
    other_bucket: str  # exists, holds `other_key`; the app has no permission on it
    other_key: str
    app_access_key_id: str
    app_secret_access_key: str
    admin_access_key_id: str
    admin_secret_access_key: str
    admin_client: Any  # boto3 S3 client acting as the admin

    def client(self, access_key_id: str | None = None, secret_access_key: str | None = None) -> Any:
        """An S3 client built like production's; the app's credentials unless told otherwise."""
        return _cached_client(
            self.endpoint_url,
            access_key_id or self.app_access_key_id,
            secret_access_key or self.app_secret_access_key,
        )

    def store(self, bucket: str | None = None, **credentials: str) -> S3Store:
        return S3Store(self.client(**credentials), bucket or self.bucket)


def unique_bucket_name(prefix: str = "healer-test") -> str:
    """A valid S3 bucket name (3-63 lowercase letters, digits, hyphens), unique per call."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def moto_client(endpoint_url: str) -> Any:
    """A client built like production's, with dummy credentials (the plain server ignores them)."""
    return _cached_client(endpoint_url, DUMMY_KEY_ID, DUMMY_SECRET)


@functools.lru_cache(maxsize=64)
def _cached_client(endpoint_url: str, access_key_id: str, secret_access_key: str) -> Any:
    # Building a client loads botocore's service models (~0.1 s); clients are thread-safe and
    # stateless enough to share between tests. One attempt: tests want errors, not retries.
    return make_s3_client(
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        region=REGION,
        endpoint_url=endpoint_url,
        max_attempts=1,
    )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL of a plain moto server (no authentication) running in this process."""
    try:
        from moto import settings
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        pytest.fail(f"moto server is not available ({exc}): {_INSTALL_HINT}")
    if settings.INITIAL_NO_AUTH_ACTION_COUNT != float("inf"):
        pytest.fail(
            "INITIAL_NO_AUTH_ACTION_COUNT is set in the test environment, which would make the plain "
            "moto server enforce IAM: unset it (moto_iam_server sets it in its own process)"
        )
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_server: str) -> Iterator[MotoBucket]:
    """A fresh, empty bucket on the plain moto server; emptied and removed afterwards."""
    client = moto_client(moto_server)
    bucket = unique_bucket_name()
    client.create_bucket(Bucket=bucket)
    yield MotoBucket(moto_server, bucket, client, S3Store(client, bucket))
    _remove_bucket(client, bucket)


def _remove_bucket(client: Any, bucket: str) -> None:
    try:
        pages = client.get_paginator("list_object_versions").paginate(Bucket=bucket)
        for page in pages:
            for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                client.delete_object(Bucket=bucket, Key=item["Key"], VersionId=item["VersionId"])
        client.delete_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "NoSuchBucket":  # a test may have removed it
            raise


@pytest.fixture(scope="session")
def moto_iam_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoIam]:
    log_path = tmp_path_factory.mktemp("moto-iam") / "server.log"
    with log_path.open("w") as log_file:
        process = _start_iam_server(log_file)
        try:
            port = _read_port(process, log_path)
            yield _provision(f"http://127.0.0.1:{port}")
        finally:
            _stop(process)


def _start_iam_server(log_file: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(_NO_AUTH_ACTIONS))
    return subprocess.Popen(
        [sys.executable, "-c", _IAM_SERVER_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log_file,
        env=env,
        text=True,
    )


def _read_port(process: subprocess.Popen[str], log_path: Path, timeout: float = 30) -> int:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout)
    line = process.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        exit_code = _exit_code(process)
        what = f"exited with code {exit_code}" if exit_code is not None else f"gave no port in {timeout}s"
        _stop(process)
        pytest.fail(
            f"IAM-enforcing moto server {what}: {_INSTALL_HINT}, or {_MANUAL_START}.\n"
            f"Its output:\n{log_path.read_text()[-2000:]}"
        )
    return int(line)


def _exit_code(process: subprocess.Popen[str]) -> int | None:
    try:
        return process.wait(timeout=1)  # it closed stdout: it is most likely exiting
    except subprocess.TimeoutExpired:
        return None


def _stop(process: subprocess.Popen[str]) -> None:
    if process.stdin is not None and not process.stdin.closed:
        process.stdin.close()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _setup_client(service: str, endpoint_url: str, key_id: str, secret: str) -> Any:
    # One attempt only: a retried request would count twice against the free actions.
    config = Config(retries={"mode": "standard", "total_max_attempts": 1}, s3={"addressing_style": "path"})
    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=config,
    )


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _provision(endpoint_url: str) -> MotoIam:
    admin_key_id, admin_secret = _create_admin(endpoint_url)
    _require_enforcement(endpoint_url)
    admin_iam = _setup_client("iam", endpoint_url, admin_key_id, admin_secret)
    admin_s3 = _setup_client("s3", endpoint_url, admin_key_id, admin_secret)
    bucket, other_bucket = unique_bucket_name("healer-app"), unique_bucket_name("healer-other")
    admin_s3.create_bucket(Bucket=bucket)
    admin_s3.create_bucket(Bucket=other_bucket)
    admin_s3.put_object(Bucket=other_bucket, Key="private.txt", Body=b"not for the app")
    app_key_id, app_secret = _create_app_user(admin_iam, bucket)
    return MotoIam(
        endpoint_url=endpoint_url,
        region=REGION,
        bucket=bucket,
        other_bucket=other_bucket,
        other_key="private.txt",
        app_access_key_id=app_key_id,
        app_secret_access_key=app_secret,
        admin_access_key_id=admin_key_id,
        admin_secret_access_key=admin_secret,
        admin_client=admin_s3,
    )


def _create_admin(endpoint_url: str) -> tuple[str, str]:
    """The free, unauthenticated actions: exactly `_NO_AUTH_ACTIONS` requests."""
    iam = _setup_client("iam", endpoint_url, DUMMY_KEY_ID, DUMMY_SECRET)
    iam.create_user(UserName="admin")
    everything = {"Effect": "Allow", "Action": "*", "Resource": "*"}
    iam.put_user_policy(UserName="admin", PolicyName="admin", PolicyDocument=_policy(everything))
    key = iam.create_access_key(UserName="admin")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def _require_enforcement(endpoint_url: str) -> None:
    stranger = _setup_client("s3", endpoint_url, "AKIAUNKNOWNKEY000000", DUMMY_SECRET)
    try:
        stranger.list_buckets()
    except ClientError:
        return
    pytest.fail(
        f"moto did not enforce IAM after {_NO_AUTH_ACTIONS} unauthenticated actions: "
        "the setup's action count no longer matches moto's INITIAL_NO_AUTH_ACTION_COUNT semantics"
    )


def _create_app_user(admin_iam: Any, bucket: str) -> tuple[str, str]:
    admin_iam.create_user(UserName="app")
    # s3:ListBucket matters: without it S3 answers 403, not 404, for a missing key.
    admin_iam.put_user_policy(
        UserName="app",
        PolicyName="app-bucket-only",
        PolicyDocument=_policy(
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}"},
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                "Resource": f"arn:aws:s3:::{bucket}/*",
            },
        ),
    )
    key = admin_iam.create_access_key(UserName="app")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]
