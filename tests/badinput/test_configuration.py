"""Every configuration variable, given a value it cannot take: `healer run` stops before doing
anything, with exit status 2 and one line that names the variable.

tests/healer/test_config.py pins the messages of `Settings.from_env` for a dozen variables, and
tests/e2e/test_daemon.py one whole `healer run`. Here every variable the settings reader parses is
tried through the command-line entry point (the variables are read from healer/config.py itself, so
a new one is covered the day it is added), then the values that get past parsing and fail later
(not-finite numbers, a data directory that cannot exist, an address that cannot be bound), and the
one line as a real process prints it, where no terminal sets its width.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from healer import cli, config

pytestmark = pytest.mark.timeout(120)

CONFIG_SOURCE = Path(config.__file__).read_text()
# Every `self.<parser>("NAME", ...)` in the settings reader, with the parser that reads it.
PARSED = {name: kind for kind, name in re.findall(
    r'self\.(number|integer|flag|url|duration)\(\s*"([A-Z][A-Z0-9_]+)"', CONFIG_SOURCE)}
UNPARSABLE = {"number": "soon", "integer": "2.5", "flag": "perhaps", "url": "shop.example/path",
              "duration": "a while"}
# Values of the right type that a variable must still refuse, and the variable the line names.
SPECIFIC = [
    ({"HEALER_HTTP_PORT": "65536"}, "HEALER_HTTP_PORT"),
    ({"HEALER_WORKERS": "0"}, "HEALER_WORKERS"),
    ({"HEALER_LEASE_SECONDS": "0"}, "HEALER_LEASE_SECONDS"),
    ({"HEALER_MAX_ATTEMPTS": "0"}, "HEALER_MAX_ATTEMPTS"),
    ({"HEALER_CHECK_INTERVAL_SECONDS": "0"}, "HEALER_CHECK_INTERVAL_SECONDS"),
    ({"HEALER_WORKER_INTERVAL_SECONDS": "0.001"}, "HEALER_WORKER_INTERVAL_SECONDS"),
    ({"HEALER_RETRY_BASE_SECONDS": "-1"}, "HEALER_RETRY_BASE_SECONDS"),
    ({"HEALER_RETRY_BASE_SECONDS": "60", "HEALER_RETRY_MAX_SECONDS": "10"}, "HEALER_RETRY_MAX_SECONDS"),
    ({"HEALER_DELAY_EMAIL_AFTER_SECONDS": "-5"}, "HEALER_DELAY_EMAIL_AFTER_SECONDS"),
    ({"HEALER_REFUND_GRACE_SECONDS": "-1"}, "HEALER_REFUND_GRACE_SECONDS"),
    ({"HEALER_REMEDIATION": "sometimes"}, "HEALER_REMEDIATION"),
    ({"DATABASE_URL": "mysql://shop@db/shop"}, "DATABASE_URL"),
    ({"S3_BUCKET": "Shop_Uploads"}, "S3_BUCKET"),
    ({"S3_ENDPOINT_URL": "minio:9000"}, "S3_ENDPOINT_URL"),
    ({"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE"}, "AWS_SECRET_ACCESS_KEY"),
    ({"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}, "AWS_ACCESS_KEY_ID"),
    ({"SENDGRID_API_KEY": "not-a-sendgrid-key"}, "SENDGRID_API_KEY"),
    ({"STRIPE_SECRET_KEY": "pk_live_publishable"}, "STRIPE_SECRET_KEY"),
    ({"FROM_EMAIL": "posters at the shop"}, "FROM_EMAIL"),
    ({"SESSION_EXPIRATION": "-1h"}, "SESSION_EXPIRATION"),
    ({"DOCKER_HOST": "docker.sock"}, "DOCKER_HOST"),
]
# Parse as numbers, but no daemon can run on them.
NOT_FINITE = [("HEALER_CHECK_INTERVAL_SECONDS", "nan"), ("HEALER_CHECK_INTERVAL_SECONDS", "inf"),
              ("HEALER_WORKER_INTERVAL_SECONDS", "1e999"), ("HEALER_RETRY_BASE_SECONDS", "nan"),
              ("HEALER_LEASE_SECONDS", "99999999999999999999")]


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
            env: dict[str, str]) -> tuple[int, list[str]]:
    for name in list(os.environ):
        if name.startswith(("HEALER_", "AWS_", "S3_", "STRIPE_", "SENDGRID_")) or name in (
                "DATABASE_URL", "FROM_EMAIL", "PUBLIC_BASE_URL", "SESSION_EXPIRATION", "DOCKER_HOST", "COLUMNS"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HEALER_DATA_DIR", str(tmp_path / "data"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Settings are read before any command runs; `db upgrade` is one that cannot hang this test
    # (on SQLite in tmp_path) should a value be accepted after all.
    code = cli.main(["db", "upgrade"])
    return code, capsys.readouterr().err.strip().splitlines()


def test_the_settings_reader_parses_the_variables_this_file_expects() -> None:
    assert len(PARSED) >= 15 and "HEALER_WORKERS" in PARSED and "PUBLIC_BASE_URL" in PARSED, PARSED


@pytest.mark.parametrize("name", sorted(PARSED))
def test_a_value_of_the_wrong_type_stops_the_cli_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    code, lines = run_cli(monkeypatch, capsys, tmp_path, {name: UNPARSABLE[PARSED[name]]})

    message = " ".join(lines)
    assert code == 78, lines
    assert message.startswith(f"healer: configuration error: {name}"), message
    assert not (tmp_path / "data").exists()  # stopped before creating anything


@pytest.mark.parametrize(("env", "named"), SPECIFIC, ids=[next(iter(e)) + "=" + next(iter(e.values())) for e, _ in SPECIFIC])
def test_a_value_out_of_range_stops_the_cli_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    env: dict[str, str], named: str
) -> None:
    code, lines = run_cli(monkeypatch, capsys, tmp_path, env)

    message = " ".join(lines)
    assert code == 78 and message.startswith(f"healer: configuration error: {named}"), lines
    for value in env.values():
        if "KEY" in named or "SECRET" in named:
            assert value not in message  # a secret, even a malformed one, is shown masked


def _healer_run(env: dict[str, str], tmp_path: Path, timeout: float = 20) -> tuple[int | str, str]:
    """`healer run` on the embedded defaults (but Stripe's keys); ("running", log) if it was still
    up after `timeout`."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("HEALER_", "AWS_", "S3_", "STRIPE_", "SENDGRID_", "DATABASE_URL")) and k != "COLUMNS"}
    full = {**keep, "HEALER_DATA_DIR": str(tmp_path / "data"), "HEALER_HTTP_PORT": "0", "HEALER_OPS_PORT": "0",
            # Verified payments are required of `healer run`; these values are never used to call out.
            "STRIPE_SECRET_KEY": "sk_test_configuration_tests_0123456789",
            "STRIPE_WEBHOOK_SECRET": "whsec_configuration_tests_0123456789", **env}
    process = subprocess.Popen([sys.executable, "-m", "healer", "run"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=full)
    try:
        _, stderr = process.communicate(timeout=timeout)
        return process.returncode, stderr
    except subprocess.TimeoutExpired:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
        return "running", stderr


def test_numbers_that_are_not_finite_or_too_large_stop_the_daemon_naming_the_variable(tmp_path: Path) -> None:
    outcomes = {}
    for name, value in NOT_FINITE:
        code, stderr = _healer_run({name: value}, tmp_path, timeout=10)
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        named = code == 78 and last.startswith(f"healer: configuration error: {name}")
        outcomes[f"{name}={value}"] = "stopped naming it" if named else f"exit {code}: {last[:120]}"

    assert outcomes == dict.fromkeys(outcomes, "stopped naming it")


def test_the_error_is_one_line_in_a_real_process_whatever_its_length(tmp_path: Path) -> None:
    code, stderr = _healer_run({"HEALER_DELAY_EMAIL_AFTER_SECONDS": "-5"}, tmp_path)

    assert code == 78
    assert stderr.strip().splitlines() == [
        "healer: configuration error: HEALER_DELAY_EMAIL_AFTER_SECONDS='-5' must be at least 0"]


@pytest.mark.parametrize(
    ("env", "named"),
    [({"HEALER_DATA_DIR": "/dev/null/healer"}, "HEALER_DATA_DIR"),
     ({"HEALER_HTTP_HOST": "not a host name"}, "HEALER_HTTP_HOST")],
    ids=["data-dir-under-a-file", "unresolvable-host"],
)
def test_a_value_that_fails_only_at_start_up_still_stops_with_one_line_naming_it(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    code, stderr = _healer_run(env, tmp_path)

    assert code == 78, (code, stderr[-1500:])
    assert "Traceback" not in stderr, stderr[-1500:]
    assert any(line.startswith("healer:") and named in line for line in stderr.splitlines()), stderr[-1500:]
