"""Log lines as a log collector and an operator read them (HEALER_LOG_FORMAT): JSON from a real
`healer run` completing a real order against the peers, one object per line with the order's, the
step's, the check's and the request's fields and no secret; text at a terminal or when asked; and a
bad value stopping the command with one line."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.daemon import HEALER, REPO, RunningDaemon, healer_env, running_daemon
from tests.eventually import eventually
from tests.fakes.ports import free_port
from tests.fakes.shop_fixtures import Shop

SECRETS = ("AWS_SECRET_ACCESS_KEY", "SENDGRID_API_KEY", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET",
           "HEALER_ADMIN_TOKEN")
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+[\w.]+: ")


@pytest.fixture
def daemon_env(shop_env: dict[str, str]) -> dict[str, str]:
    # A docker check against an engine that is not there: a check that logs (failing) at once.
    # Tracing off, whatever the caller's environment says (test_tracing.py reads the trace fields).
    env = healer_env(shop_env, HEALER_LOG_FORMAT="json", HEALER_RETRY_BASE_SECONDS="0",
                     DOCKER_HOST=f"tcp://127.0.0.1:{free_port()}", HEALER_CHECK_INTERVAL_SECONDS="1")
    return {k: v for k, v in env.items() if not k.startswith("OTEL_")}


@pytest.fixture
def daemon(daemon_env: dict[str, str], tmp_path: Path) -> Iterator[RunningDaemon]:
    with running_daemon(daemon_env, tmp_path / "daemon.log") as running:
        yield running


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as the JSON object it must be (a line that is not one fails here)."""
    lines = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        lines.append(record)
    return lines


def one(records: list[dict[str, Any]], msg_start: str) -> dict[str, Any]:
    found = [r for r in records if r["msg"].startswith(msg_start)]
    assert len(found) == 1, (msg_start, found)
    return found[0]


def test_a_running_daemon_writes_one_json_object_per_line_with_the_fields_that_apply(
    shop: Shop, daemon: RunningDaemon, daemon_env: dict[str, str]
) -> None:
    shop.sendgrid.fail_next(500, path="/v3/mail/send")  # the order's first email attempt fails
    order_id = shop.paid_order()
    eventually(lambda: shop.order(order_id).status == "completed", timeout=60, what="the order to complete")
    token = shop.order(order_id).download_token
    assert daemon.request("GET", f"/download/{token}")[0] == 307
    eventually(lambda: '"route": "/download/{token}"' in daemon.log() and "Check docker is" in daemon.log(),
               what="the download's access line and a check's line")

    text = daemon.log()
    records = json_lines(text)
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= set(record), record
        assert list(record)[:4] == ["ts", "level", "logger", "msg"], record
        assert record["ts"].endswith("Z") and datetime.fromisoformat(record["ts"]).tzinfo == UTC, record
        assert record["level"] in ("debug", "info", "warning", "error", "critical"), record
    # A step's line: the order, the step and which attempt.
    migrated = one(records, f"File migration completed successfully for order {order_id}")
    assert (migrated["order_id"], migrated["step"], migrated["attempt"]) == (str(order_id), "migrate_files", 1)
    assert migrated["logger"] == "fulfilment.steps" and "check" not in migrated and "trace_id" not in migrated
    # A failed step's line names its error class; the retry is the next attempt.
    failed = one(records, f"Step email failed for order {order_id}")
    assert (failed["step"], failed["attempt"], failed["error_class"], failed["level"]) == (
        "email", 1, "email_transient", "warning")
    sent = one(records, "Download email sent to a…@example.com")
    assert (sent["order_id"], sent["step"], sent["attempt"]) == (str(order_id), "email", 2)
    assert "error_class" not in sent  # bound for the failure's lines only
    # A check's line.
    docker = next(r for r in records if r["msg"].startswith("Check docker is failing"))
    assert docker["check"] == "docker" and docker["logger"] == "healer.health.monitor" and "order_id" not in docker
    # The download's access line: the request's fields, never the link's token.
    [download] = [r for r in records if r["logger"] == "healer.http.access" and r.get("route") == "/download/{token}"]
    assert {k: download[k] for k in ("listener", "method", "status")} == {
        "listener": "public", "method": "GET", "status": 307}
    assert download["client"] == "127.0.0.1" and download["duration_ms"] >= 0 and download["response_bytes"] >= 0
    assert '"GET /download/…" 307' in download["msg"]
    assert token is not None and token not in text
    for name in SECRETS:
        assert daemon_env[name] not in text, name


def healer_command(tmp_path: Path, *args: str, stderr: Any = subprocess.PIPE, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HEALER_", "DATABASE_URL", "OTEL_"))}
    return subprocess.run([*HEALER, *args], env={**base, "HEALER_DATA_DIR": str(tmp_path / "var"), **env},
                          stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=120, cwd=REPO)


def test_json_is_the_default_when_the_log_is_not_a_terminal(tmp_path: Path) -> None:
    done = healer_command(tmp_path, "db", "upgrade")

    assert done.returncode == 0, done.stderr
    upgrades = [r for r in json_lines(done.stderr) if r["msg"].startswith("Running upgrade")]
    assert upgrades and all(r["logger"] == "alembic.runtime.migration" for r in upgrades)


def test_text_lines_when_asked_for_or_at_a_terminal(tmp_path: Path) -> None:
    asked = healer_command(tmp_path, "db", "upgrade", HEALER_LOG_FORMAT="text")
    parent, child = pty.openpty()  # stderr a terminal, as an operator's shell gives it
    try:
        at_terminal = healer_command(tmp_path / "tty", "db", "upgrade", stderr=child)
        os.close(child)
        output = _read_all(parent)
    finally:
        os.close(parent)

    assert asked.returncode == 0 and at_terminal.returncode == 0, asked.stderr
    for lines in (asked.stderr.splitlines(), output.splitlines()):
        assert lines and all(TEXT_LINE.match(line) for line in lines), lines
        assert any(" INFO    alembic.runtime.migration: Running upgrade " in line for line in lines), lines


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_a_bad_log_format_is_one_configuration_error_line(tmp_path: Path) -> None:
    done = healer_command(tmp_path, "db", "upgrade", HEALER_LOG_FORMAT="yaml")

    assert done.returncode == 78
    assert done.stderr.splitlines() == ["healer: configuration error: HEALER_LOG_FORMAT='yaml' must be json or text"]
    assert not (tmp_path / "var").exists()


def test_a_traceback_is_one_json_line_and_carries_no_secret(tmp_path: Path) -> None:
    """`--debug` logs the traceback of a failed command: one line still, the password masked."""
    password = f"pw-{uuid.uuid4().hex}"
    done = healer_command(tmp_path, "--debug", "orders", "list",
                          DATABASE_URL=f"postgresql://shop:{password}@127.0.0.1:{free_port()}/shop")

    assert done.returncode == 1, done.stderr
    *logged, said = done.stderr.splitlines()
    records = json_lines("\n".join(logged))
    [failed] = [r for r in records if "exception" in r]
    assert failed["level"] == "error" and failed["logger"] == "healer.cli"
    assert failed["exception"].startswith("Traceback (most recent call last):")
    assert password not in done.stderr and said.startswith("healer: ")
