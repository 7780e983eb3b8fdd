"""`healer check` as an operator runs it: its own process, real peers, a table or JSON, and an
exit code that says the worst status (0 ok, 1 warning, 2 failing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import Engine

from tests.fakes.ports import free_port
from tests.fakes.s3_fixtures import MotoBucket
from tests.fakes.sendgrid_server import SendGridServer
from tests.fakes.stripe_server import FakeStripeServer

HEALER = [sys.executable, "-m", "healer"]  # as the `healer` command runs
REPO = Path(__file__).resolve().parents[2]
# Everything Settings reads, so the caller's environment cannot leak into a test's configuration.
_CONFIG_PREFIXES = ("HEALER_", "AWS_", "S3_", "SENDGRID_", "STRIPE_", "DATABASE_URL", "FROM_EMAIL",
                    "PUBLIC_BASE_URL", "SESSION_EXPIRATION")


def healer(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_PREFIXES)}
    full_env = {**base, "HEALER_DATA_DIR": str(tmp_path / "var"), "COLUMNS": "250",
                "AWS_EC2_METADATA_DISABLED": "true", **env}
    return subprocess.run([*HEALER, *args], env=full_env, cwd=REPO, capture_output=True, text=True, timeout=120)


def healer_check(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return healer(tmp_path, "check", *args, **env)


def test_embedded_defaults_are_all_ok_or_disabled(tmp_path: Path) -> None:
    assert healer(tmp_path, "db", "upgrade").returncode == 0  # as `healer run` does at start
    done = healer_check(tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name, status in (("database", "ok"), ("s3", "ok"), ("sendgrid", "disabled"), ("stripe", "disabled")):
        assert any(f"│ {name} " in line and f"│ {status} " in line for line in lines), (name, done.stdout)
    assert "local store (S3_BUCKET unset)" in done.stdout
    assert "9 check(s); status: ok" in done.stdout


def test_json_output_has_every_named_check_in_display_order(tmp_path: Path) -> None:
    assert healer(tmp_path, "db", "upgrade").returncode == 0
    done = healer_check(tmp_path, "stripe", "database", "--json")

    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["status"] == "ok"
    assert list(body["checks"]) == ["database", "stripe"]
    assert body["checks"]["stripe"]["status"] == "disabled"
    assert set(body["checks"]["database"]) >= {"status", "latency_seconds", "detail", "remedy", "runbook"}


def test_a_failing_check_exits_2_and_names_the_fix(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"

    done = healer_check(tmp_path, "s3", "--json", S3_BUCKET="healer-shop", S3_ENDPOINT_URL=endpoint,
                        AWS_ACCESS_KEY_ID="AKIAEXAMPLE00000000", AWS_SECRET_ACCESS_KEY="x" * 40)

    assert done.returncode == 2, done.stdout + done.stderr
    s3 = json.loads(done.stdout)["checks"]["s3"]
    assert s3["status"] == "failing" and s3["detail"].startswith("endpoint unreachable: ")
    assert "S3_ENDPOINT_URL" in s3["remedy"]


def test_a_warning_exits_1(tmp_path: Path, stripe_server: FakeStripeServer) -> None:
    done = healer_check(tmp_path, "stripe", STRIPE_SECRET_KEY=stripe_server.api_key, STRIPE_API_BASE=stripe_server.url)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "│ warning " in done.stdout and "webhook secret not set" in done.stdout


def test_an_unknown_name_is_a_usage_error_naming_the_valid_ones(tmp_path: Path) -> None:
    done = healer_check(tmp_path, "s3", "nope")

    assert done.returncode == 64
    assert "healer: unknown check 'nope'; valid checks: database, s3, sendgrid, stripe" in done.stderr
    assert done.stdout == ""


def test_every_check_on_real_peers_ok_then_failing_and_never_a_secret(
    tmp_path: Path, pg_url: str, pg_engine: Engine, s3_bucket: MotoBucket, sendgrid_server: SendGridServer,
    stripe_server: FakeStripeServer,
) -> None:
    # pg_engine empties the tables: the `orders` check must not see an earlier test's orders.
    db_password, aws_secret = "pg-" + uuid.uuid4().hex, "aws-" + uuid.uuid4().hex
    env = {
        "DATABASE_URL": pg_url.replace("postgres@", f"postgres:{db_password}@", 1),
        "S3_BUCKET": s3_bucket.bucket, "S3_ENDPOINT_URL": s3_bucket.endpoint_url, "S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIA" + uuid.uuid4().hex[:16].upper(), "AWS_SECRET_ACCESS_KEY": aws_secret,
        "SENDGRID_API_KEY": sendgrid_server.api_key, "SENDGRID_API_BASE": sendgrid_server.url,
        "FROM_EMAIL": "posters@shop.example",
        "STRIPE_SECRET_KEY": stripe_server.api_key, "STRIPE_WEBHOOK_SECRET": stripe_server.webhook_secret,
        "STRIPE_API_BASE": stripe_server.url,
    }
    healthy = healer_check(tmp_path, **env)
    sendgrid_server.set_key_valid(False)
    failing = healer_check(tmp_path, "--json", **env)

    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "9 check(s); status: ok" in healthy.stdout
    assert failing.returncode == 2
    sendgrid = json.loads(failing.stdout)["checks"]["sendgrid"]
    assert sendgrid["status"] == "failing" and sendgrid["detail"].startswith("invalid key: SG.…")
    secrets = [db_password, aws_secret, env["AWS_ACCESS_KEY_ID"], sendgrid_server.api_key, stripe_server.api_key,
               stripe_server.webhook_secret]
    output = healthy.stdout + healthy.stderr + failing.stdout + failing.stderr
    assert [secret for secret in secrets if secret in output] == []


def test_run_from_the_wrong_directory_it_says_so_and_creates_nothing(tmp_path: Path) -> None:
    done = healer_check(tmp_path, "--json")

    assert done.returncode == 2, done.stdout + done.stderr  # failing: no database here, never "ok"
    body = json.loads(done.stdout)
    assert body["status"] == "failing" and body["database"].endswith("/var/healer.sqlite3")
    assert body["checks"]["database"]["status"] == "failing"
    assert "does not exist" in body["checks"]["s3"]["detail"]
    assert f"HEALER_DATA_DIR={tmp_path / 'var'} does not exist" in done.stderr
    assert not (tmp_path / "var").exists()


def test_only_disabled_or_skipped_checks_are_unknown_exit_3(tmp_path: Path) -> None:
    done = healer_check(tmp_path, "stripe", "sendgrid", "--json")

    assert done.returncode == 3, done.stdout + done.stderr
    assert json.loads(done.stdout)["status"] == "unknown"
