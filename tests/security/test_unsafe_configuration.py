"""Unsafe configurations are refused at start: `healer run` never runs without verified payments or
with a guessable admin token; only `healer demo` skips Stripe, and it says so in `/health`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from healer.config import Settings
from healer.daemon import Daemon, UnsafeConfiguration
from tests.fakes.ports import free_port

STRIPE = {"STRIPE_SECRET_KEY": "sk_test_unsafe_configuration_0123456789",
          "STRIPE_WEBHOOK_SECRET": "whsec_unsafe_configuration_0123456789"}


def healer_run(tmp_path: Path, env: dict[str, str]) -> tuple[int | str, str]:
    """`healer run` on embedded defaults plus `env`; ("running", log) if it started after all."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("HEALER_", "AWS_", "S3_", "STRIPE_", "SENDGRID_", "DATABASE_URL"))}
    full = {**keep, "HEALER_DATA_DIR": str(tmp_path / "data"), "HEALER_HTTP_PORT": str(free_port()),
            "HEALER_OPS_PORT": str(free_port()), **env}
    process = subprocess.Popen([sys.executable, "-m", "healer", "run"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=full)
    try:
        _, stderr = process.communicate(timeout=20)
        return process.returncode, stderr
    except subprocess.TimeoutExpired:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
        return "running", stderr


@pytest.mark.parametrize("missing", ["STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"])
def test_healer_run_refuses_to_start_without_stripe(tmp_path: Path, missing: str) -> None:
    env = {name: value for name, value in STRIPE.items() if name != missing}

    code, stderr = healer_run(tmp_path, env)

    assert code == 78, stderr[-2000:]
    [line] = stderr.strip().splitlines()
    assert line.startswith(f"healer: configuration error: {missing} is unset"), line
    assert "healer demo" in line
    assert not (tmp_path / "data").exists()  # refused before touching anything


@pytest.mark.parametrize("token", ["x", "a" * 31])
def test_an_admin_token_shorter_than_32_characters_is_refused(tmp_path: Path, token: str) -> None:
    code, stderr = healer_run(tmp_path, {**STRIPE, "HEALER_ADMIN_TOKEN": token})

    assert code == 78
    [line] = stderr.strip().splitlines()
    assert line.startswith("healer: configuration error: HEALER_ADMIN_TOKEN is") and "at least 32" in line
    assert token * 2 not in line


def test_the_daemon_itself_refuses_unverified_payments_outside_the_demo(tmp_path: Path) -> None:
    settings = Settings.from_env({"HEALER_DATA_DIR": str(tmp_path)})

    with pytest.raises(UnsafeConfiguration, match="STRIPE_SECRET_KEY is unset.*STRIPE_WEBHOOK_SECRET is unset"):
        Daemon(settings)


def test_the_demo_runs_without_stripe_and_says_so_in_health(tmp_path: Path) -> None:
    daemon = Daemon(Settings.from_env({"HEALER_DATA_DIR": str(tmp_path)}), demo=True)
    try:
        body = TestClient(daemon.operator_app).get("/health").json()
    finally:
        daemon.render_pool.shutdown()
        daemon.services.close()

    assert any("payment verification is DISABLED" in notice for notice in body["notices"]), body["notices"]
