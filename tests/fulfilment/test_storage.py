"""Object storage against real peers: moto over HTTP (plain and IAM-enforcing) and a real directory."""

from __future__ import annotations

import errno
import functools
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.credentials import CredentialResolver

from fulfilment.errors import ErrorClass, StepError
from fulfilment.storage import (
    LocalStore,
    ObjectStore,
    S3Store,
    classify_os_error,
    make_s3_client,
    validate_key,
)
from tests.fakes.s3_fixtures import MotoBucket, MotoIam, moto_client, unique_bucket_name


@dataclass(frozen=True)
class Subject:
    store: ObjectStore
    stored: Callable[[], list[str]]  # every object/file the test could have written


@pytest.fixture(params=["s3", "local"])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Subject:
    if request.param == "s3":
        bucket: MotoBucket = request.getfixturevalue("s3_bucket")
        return Subject(bucket.store, lambda: _bucket_keys(bucket.client, bucket.bucket))
    # The whole tmp_path is watched, so a key escaping the root would still be seen.
    return Subject(LocalStore(tmp_path / "store"), lambda: _files_under(tmp_path))


def _bucket_keys(client: Any, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def _raises(error_class: ErrorClass, action: Callable[[], object]) -> StepError:
    with pytest.raises(StepError) as caught:
        action()
    assert caught.value.error_class is error_class, caught.value.message
    return caught.value


# --- round trips, both stores ----------------------------------------------------------------------


def test_both_stores_satisfy_the_protocol(subject: Subject) -> None:
    assert isinstance(subject.store, ObjectStore)
    assert subject.store.kind in ("s3", "local")


def test_put_then_get_exists_and_size_round_trip(subject: Subject) -> None:
    store = subject.store
    assert store.exists("temp/u1/photo.jpg") is False
    store.put("temp/u1/photo.jpg", b"\xff\xd8jpeg bytes", "image/jpeg")
    assert store.exists("temp/u1/photo.jpg") is True
    assert store.size("temp/u1/photo.jpg") == 12
    assert store.get("temp/u1/photo.jpg") == b"\xff\xd8jpeg bytes"


def test_put_overwrites_an_existing_object(subject: Subject) -> None:
    subject.store.put("a/b.txt", b"first", "text/plain")
    subject.store.put("a/b.txt", b"second!", "text/plain")
    assert subject.store.get("a/b.txt") == b"second!"
    assert subject.stored()[-1].endswith("a/b.txt") and len(subject.stored()) == 1


def test_absent_object_is_s3_missing_file_for_size_and_get(subject: Subject) -> None:
    assert "object not found" in _raises(ErrorClass.S3_MISSING_FILE, lambda: subject.store.size("no/such")).message
    _raises(ErrorClass.S3_MISSING_FILE, lambda: subject.store.get("no/such"))


def test_copy_duplicates_the_object_and_keeps_the_source(subject: Subject) -> None:
    store = subject.store
    store.put("temp/audio.mp3", b"ID3 sound", "audio/mpeg")
    assert store.copy("temp/audio.mp3", "orders/o1/audio.mp3") is True
    assert store.get("orders/o1/audio.mp3") == b"ID3 sound"
    assert store.get("temp/audio.mp3") == b"ID3 sound"


def test_second_copy_returns_false(subject: Subject) -> None:
    subject.store.put("temp/p.png", b"png", "image/png")
    assert subject.store.copy("temp/p.png", "orders/o1/p.png") is True
    assert subject.store.copy("temp/p.png", "orders/o1/p.png") is False


def test_copy_replaces_a_destination_of_another_size(subject: Subject) -> None:
    subject.store.put("temp/p.png", b"the full upload", "image/png")
    subject.store.put("orders/o1/p.png", b"torn", "image/png")
    assert subject.store.copy("temp/p.png", "orders/o1/p.png") is True
    assert subject.store.get("orders/o1/p.png") == b"the full upload"


def test_copy_of_a_missing_source_is_s3_missing_file_and_writes_nothing(subject: Subject) -> None:
    error = _raises(ErrorClass.S3_MISSING_FILE, lambda: subject.store.copy("temp/gone", "orders/o1/gone"))
    assert "source object not found" in error.message
    assert subject.stored() == []


def test_delete_removes_the_object_and_tolerates_absence(subject: Subject) -> None:
    subject.store.put("pdfs/final_o1.pdf", b"%PDF", "application/pdf")
    subject.store.delete("pdfs/final_o1.pdf")
    assert subject.store.exists("pdfs/final_o1.pdf") is False
    subject.store.delete("pdfs/final_o1.pdf")
    assert subject.stored() == []


def test_get_refuses_an_object_larger_than_max_bytes(subject: Subject) -> None:
    subject.store.put("temp/big.wav", b"x" * 100, "audio/wav")
    error = _raises(ErrorClass.BAD_INPUT, lambda: subject.store.get("temp/big.wav", max_bytes=99))
    assert "100 bytes" in error.message and "99" in error.message
    assert subject.store.get("temp/big.wav", max_bytes=100) == b"x" * 100


# --- key validation ----------------------------------------------------------------------------------

READ_TRAVERSALS = ["../x", "/etc/passwd", "a/../../b", "a\\b", "a\x00b", "..", "a/./b"]
# Writes never aim at a real system file: the absolute key points into this test's tmp_path.
WRITE_TRAVERSALS = ["../x", "ABSOLUTE", "a/../../b", "a\\b", "a\x00b", "..", "a/./b"]


def _write_key(key: str, tmp_path: Path) -> str:
    return str(tmp_path / "escaped") if key == "ABSOLUTE" else key


@pytest.mark.parametrize("key", READ_TRAVERSALS)
def test_reads_reject_traversal_keys(subject: Subject, key: str) -> None:
    store = subject.store
    for action in (
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.size(key),
        lambda: store.download_url(key, 60),
    ):
        assert "invalid object key" in _raises(ErrorClass.BAD_INPUT, action).message


@pytest.mark.parametrize("key", WRITE_TRAVERSALS)
def test_writes_reject_traversal_keys_and_write_nothing(subject: Subject, key: str, tmp_path: Path) -> None:
    store, bad = subject.store, _write_key(key, tmp_path)
    store.put("good.txt", b"good", "text/plain")
    before = subject.stored()
    _raises(ErrorClass.BAD_INPUT, lambda: store.put(bad, b"evil", "text/plain"))
    _raises(ErrorClass.BAD_INPUT, lambda: store.copy("good.txt", bad))
    _raises(ErrorClass.BAD_INPUT, lambda: store.copy(bad, "copied.txt"))
    _raises(ErrorClass.BAD_INPUT, lambda: store.delete(bad))
    assert subject.stored() == before


@pytest.mark.parametrize(
    "key",
    ["", "/abs", "a//b", "a/", ".", "tab\there", "del\x7f", "c1\x85", "x" * 1025, "é" * 513],
)
def test_validate_key_rejects(key: str) -> None:
    _raises(ErrorClass.BAD_INPUT, lambda: validate_key(key))


@pytest.mark.parametrize(
    "key", ["orders/0b8e/photo.jpg", "pdfs/final_1.pdf", "café/ü ñ.png", "a..b/c.", "x" * 1024, ".hidden"]
)
def test_validate_key_accepts(key: str) -> None:
    assert validate_key(key) == key


def test_invalid_key_message_does_not_dump_a_huge_key() -> None:
    error = _raises(ErrorClass.BAD_INPUT, lambda: validate_key("k" * 5000))
    assert len(error.message) < 200


# --- S3 specifics (plain moto) -------------------------------------------------------------------------


def test_s3_second_copy_makes_no_new_version(s3_bucket: MotoBucket) -> None:
    client, bucket, store = s3_bucket.client, s3_bucket.bucket, s3_bucket.store
    # With versioning on, every write (a copy included) adds a version: a skipped copy adds none.
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    store.put("temp/a.mp3", b"abc", "audio/mpeg")
    assert store.copy("temp/a.mp3", "orders/o1/a.mp3") is True
    assert store.copy("temp/a.mp3", "orders/o1/a.mp3") is False
    versions = client.list_object_versions(Bucket=bucket, Prefix="orders/o1/a.mp3")["Versions"]
    assert len(versions) == 1


def test_s3_copy_keeps_the_content_type(s3_bucket: MotoBucket) -> None:
    s3_bucket.store.put("temp/a.mp3", b"abc", "audio/mpeg")
    s3_bucket.store.copy("temp/a.mp3", "orders/o1/a.mp3")
    head = s3_bucket.client.head_object(Bucket=s3_bucket.bucket, Key="orders/o1/a.mp3")
    assert head["ContentType"] == "audio/mpeg"


def test_s3_presigned_url_serves_the_bytes(s3_bucket: MotoBucket) -> None:
    s3_bucket.store.put("pdfs/final_o1.pdf", b"%PDF-1.4 poster", "application/pdf")
    url = s3_bucket.store.download_url("pdfs/final_o1.pdf", 300)
    assert url is not None and "X-Amz-Signature=" in url and "X-Amz-Expires=300" in url
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.read() == b"%PDF-1.4 poster"
        assert response.headers["Content-Type"] == "application/pdf"


@pytest.mark.parametrize("seconds", [0, -1, 7 * 24 * 3600 + 1])
def test_presign_rejects_impossible_lifetimes(s3_bucket: MotoBucket, seconds: int) -> None:
    with pytest.raises(ValueError):
        s3_bucket.store.download_url("pdfs/x.pdf", seconds)


def _missing_bucket_actions(store: S3Store) -> list[Callable[[], object]]:
    return [
        lambda: store.get("k"),
        lambda: store.put("k", b"v", "text/plain"),
        lambda: store.size("k"),
        lambda: store.exists("k"),
        lambda: store.copy("k", "k2"),
        lambda: store.delete("k"),
    ]


def test_nonexistent_bucket_is_s3_auth_naming_s3_bucket(moto_server: str) -> None:
    bucket = unique_bucket_name("healer-absent")
    store = S3Store(moto_client(moto_server), bucket)
    for action in _missing_bucket_actions(store):
        error = _raises(ErrorClass.S3_AUTH, action)
        assert "bucket does not exist: check S3_BUCKET" in error.message
        assert f"s3://{bucket}/k" in error.message


def test_missing_credentials_are_s3_auth(moto_server: str) -> None:
    core = botocore.session.Session()
    core.register_component("credential_provider", CredentialResolver(providers=[]))
    client = boto3.session.Session(botocore_session=core).client(
        "s3", endpoint_url=moto_server, region_name="us-east-1", config=Config(s3={"addressing_style": "path"})
    )
    error = _raises(ErrorClass.S3_AUTH, lambda: S3Store(client, "any-bucket").get("k"))
    assert "NoCredentialsError" in error.message and "AWS_ACCESS_KEY_ID" in error.message


def test_client_factory_refuses_half_a_key_pair() -> None:
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY"):
        make_s3_client(access_key_id="AKIA", secret_access_key=None, region=None, endpoint_url=None)


def test_repr_shows_no_client() -> None:
    client = make_s3_client(
        access_key_id="AKIAEXAMPLEKEY", secret_access_key="s3cr3t", region="us-east-1", endpoint_url=None
    )
    assert repr(S3Store(client, "shop")) == "S3Store(bucket='shop')"


# --- S3 with IAM enforced ---------------------------------------------------------------------------------


def _assert_no_secrets(error: StepError, *secrets: str) -> None:
    text = f"{error.message} {error!r} {error}"
    for secret in secrets:
        assert secret not in text


def _unique(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex}"


def test_app_user_works_its_own_bucket_under_iam(moto_iam_server: MotoIam) -> None:
    store, base = moto_iam_server.store(), _unique("temp")
    store.put(f"{base}/photo.jpg", b"jpeg", "image/jpeg")
    assert store.exists(f"{base}/photo.jpg") and store.size(f"{base}/photo.jpg") == 4
    assert store.copy(f"{base}/photo.jpg", f"{base}/copy.jpg") is True
    assert store.copy(f"{base}/photo.jpg", f"{base}/copy.jpg") is False
    assert store.get(f"{base}/copy.jpg") == b"jpeg"
    store.delete(f"{base}/copy.jpg")
    assert store.exists(f"{base}/copy.jpg") is False


def test_missing_key_is_missing_not_denied_when_list_bucket_is_allowed(moto_iam_server: MotoIam) -> None:
    _raises(ErrorClass.S3_MISSING_FILE, lambda: moto_iam_server.store().size(_unique("temp")))


def test_wrong_secret_is_s3_auth_signature_mismatch(moto_iam_server: MotoIam) -> None:
    iam, key = moto_iam_server, _unique("temp")
    iam.store().put(key, b"data", "text/plain")
    wrong = "wrongSecretWrongSecretWrongSecret0000000"
    store = iam.store(secret_access_key=wrong)
    for action in (lambda: store.get(key), lambda: store.put(key, b"x", "text/plain")):
        error = _raises(ErrorClass.S3_AUTH, action)
        assert "SignatureDoesNotMatch" in error.message and "AWS_SECRET_ACCESS_KEY" in error.message
        assert f"s3://{iam.bucket}/{key}" in error.message
        _assert_no_secrets(error, wrong, iam.app_secret_access_key, iam.app_access_key_id)
    # HEAD answers carry no error code: still S3_AUTH, with the 403 explained.
    error = _raises(ErrorClass.S3_AUTH, lambda: store.size(key))
    assert "403" in error.message
    _assert_no_secrets(error, wrong, iam.app_secret_access_key, iam.app_access_key_id)


def test_unknown_access_key_is_s3_auth(moto_iam_server: MotoIam) -> None:
    iam, key_id, secret = moto_iam_server, "AKIAIOSFODNN7EXAMPLE", "notTheRealSecretAtAll000000000000000000"
    store = iam.store(access_key_id=key_id, secret_access_key=secret)
    error = _raises(ErrorClass.S3_AUTH, lambda: store.get(_unique("temp")))
    assert "InvalidAccessKeyId" in error.message and "AWS_ACCESS_KEY_ID" in error.message
    _assert_no_secrets(error, key_id, secret)


def test_missing_permission_is_s3_auth_access_denied(moto_iam_server: MotoIam) -> None:
    iam = moto_iam_server
    store = iam.store(bucket=iam.other_bucket)
    for action in (
        lambda: store.get(iam.other_key),
        lambda: store.put("temp/x", b"x", "text/plain"),
        lambda: store.delete(iam.other_key),
    ):
        error = _raises(ErrorClass.S3_AUTH, action)
        assert "AccessDenied" in error.message and "bucket policy" in error.message
        assert f"s3://{iam.other_bucket}/" in error.message
        _assert_no_secrets(error, iam.app_secret_access_key, iam.app_access_key_id)
    _raises(ErrorClass.S3_AUTH, lambda: store.exists(iam.other_key))
    assert iam.admin_client.get_object(Bucket=iam.other_bucket, Key=iam.other_key)["Body"].read()


# --- S3 unreachable, slow or failing ------------------------------------------------------------------------


FAKE_KEY_ID = "AKIAUNREACHABLE00000"
FAKE_SECRET = "unreachableSecret000000000000000000000000"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _store_at(endpoint_url: str, read_timeout: float = 30, max_attempts: int = 2) -> S3Store:
    return S3Store(_client_at(endpoint_url, read_timeout, max_attempts), "shop-uploads")


@functools.lru_cache(maxsize=16)
def _client_at(endpoint_url: str, read_timeout: float, max_attempts: int) -> Any:
    # Cached because building a client loads botocore's models, the slowest part of these tests.
    return make_s3_client(
        access_key_id=FAKE_KEY_ID,
        secret_access_key=FAKE_SECRET,
        region="us-east-1",
        endpoint_url=endpoint_url,
        read_timeout=read_timeout,
        max_attempts=max_attempts,
    )


def test_unreachable_endpoint_is_s3_unavailable_quickly() -> None:
    store = _store_at(f"http://127.0.0.1:{_free_port()}")  # nobody listens: connection refused
    started = time.monotonic()
    error = _raises(ErrorClass.S3_UNAVAILABLE, lambda: store.get("temp/a"))
    assert time.monotonic() - started < 5
    assert "unreachable" in error.message and "s3://shop-uploads/temp/a" in error.message
    _assert_no_secrets(error, FAKE_SECRET, FAKE_KEY_ID)


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """Accepts connections (the kernel's backlog does) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_read_timeout_is_s3_unavailable(silent_endpoint: str) -> None:
    store = _store_at(silent_endpoint, read_timeout=0.5, max_attempts=1)
    started = time.monotonic()
    error = _raises(ErrorClass.S3_UNAVAILABLE, lambda: store.size("temp/a"))
    assert time.monotonic() - started < 3
    assert "timed out" in error.message


class _FaultyS3(BaseHTTPRequestHandler):
    """Answers every request with the S3 error set on the server (status, code)."""

    server: Any

    def _fail(self) -> None:
        status, code = self.server.fault
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{code} from the fake</Message><RequestId>r1</RequestId></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = _fail

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def faulty_s3() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FaultyS3)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "status, code", [(503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable"), (502, "BadGateway")]
)
def test_server_errors_and_throttling_are_s3_unavailable(
    faulty_s3: ThreadingHTTPServer, status: int, code: str
) -> None:
    faulty_s3.fault = (status, code)  # type: ignore[attr-defined]
    store = _store_at(f"http://127.0.0.1:{faulty_s3.server_address[1]}", max_attempts=1)
    error = _raises(ErrorClass.S3_UNAVAILABLE, lambda: store.get("temp/a"))
    assert code in error.message and str(status) in error.message
    _raises(ErrorClass.S3_UNAVAILABLE, lambda: store.size("temp/a"))


# --- local specifics ---------------------------------------------------------------------------------------


def test_local_put_creates_parents_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put("orders/o1/deep/photo.jpg", b"jpeg", "image/jpeg")
    store.put("orders/o1/deep/photo.jpg", b"jpeg2", "image/jpeg")
    assert _files_under(tmp_path) == ["store/orders/o1/deep/photo.jpg"]
    assert store.path("orders/o1/deep/photo.jpg") == tmp_path / "store/orders/o1/deep/photo.jpg"


def test_local_copy_links_instead_of_rewriting_and_skips_when_present(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put("temp/a.wav", b"RIFF", "audio/wav")
    assert store.copy("temp/a.wav", "orders/o1/a.wav") is True
    dst = store.path("orders/o1/a.wav").stat()
    assert dst.st_ino == store.path("temp/a.wav").stat().st_ino
    assert store.copy("temp/a.wav", "orders/o1/a.wav") is False
    again = store.path("orders/o1/a.wav").stat()
    assert (again.st_ino, again.st_mtime_ns) == (dst.st_ino, dst.st_mtime_ns)
    assert _files_under(tmp_path) == ["store/orders/o1/a.wav", "store/temp/a.wav"]


def test_local_overwriting_a_source_leaves_its_copy_intact(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put("temp/a.wav", b"original", "audio/wav")
    store.copy("temp/a.wav", "orders/o1/a.wav")
    store.put("temp/a.wav", b"replaced", "audio/wav")
    assert store.get("orders/o1/a.wav") == b"original"


def test_local_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "link").symlink_to(outside)
    store = LocalStore(tmp_path / "store")
    error = _raises(ErrorClass.BAD_INPUT, lambda: store.put("link/x", b"evil", "text/plain"))
    assert "resolves outside" in error.message
    assert list(outside.iterdir()) == []


def test_local_directory_is_not_an_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put("orders/o1/a.wav", b"RIFF", "audio/wav")
    assert store.exists("orders/o1") is False
    _raises(ErrorClass.S3_MISSING_FILE, lambda: store.get("orders/o1"))
    _raises(ErrorClass.S3_MISSING_FILE, lambda: store.size("orders/o1"))


def test_local_download_url_is_served_by_the_app(tmp_path: Path) -> None:
    assert LocalStore(tmp_path).download_url("pdfs/final_o1.pdf", 60) is None


@pytest.mark.parametrize(
    "code, error_class",
    [
        (errno.ENOSPC, ErrorClass.RESOURCES),
        (errno.EDQUOT, ErrorClass.RESOURCES),
        (errno.EIO, ErrorClass.RESOURCES),
        (errno.EACCES, ErrorClass.S3_AUTH),
        (errno.EPERM, ErrorClass.S3_AUTH),
        (errno.EROFS, ErrorClass.S3_AUTH),
        (errno.ENOENT, ErrorClass.S3_MISSING_FILE),
    ],
)
def test_local_os_errors_are_classified(code: int, error_class: ErrorClass) -> None:
    # Root ignores file modes and a full disk cannot be made portably, so the real OSError the
    # kernel would raise is built here and classified.
    error = classify_os_error(OSError(code, "boom", "/data/store/x"), "put /data/store/x")
    assert error.error_class is error_class
    assert error.message.startswith("put /data/store/x: ") and errno.errorcode[code] in error.message
