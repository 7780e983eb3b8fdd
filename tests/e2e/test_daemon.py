"""The whole daemon as operators run it: `healer run` and `healer demo` in their own processes,
over real HTTP, against PostgreSQL, moto S3 and the SendGrid and Stripe servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.shop_fixtures import Shop

HEALER = [sys.executable, "-m", "healer.cli"]
ADMIN = "e2e-admin-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningDaemon:
    process: subprocess.Popen[str]
    base_url: str
    log_path: Path

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base_url + path, method=method, headers=headers or {})
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def log(self) -> str:
        return self.log_path.read_text()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def start_daemon(env: dict[str, str], log_path: Path, args: list[str] | None = None) -> RunningDaemon:
    port = int(env["HEALER_HTTP_PORT"])
    log_file = log_path.open("w")
    process = subprocess.Popen(
        HEALER + (args or ["run"]), env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    daemon = RunningDaemon(process, f"http://127.0.0.1:{port}", log_path)

    def answering() -> bool:
        assert process.poll() is None, f"daemon exited early:\n{log_path.read_text()}"
        try:
            return daemon.request("GET", "/livez")[0] == 200
        except OSError:
            return False

    wait_for(answering, 60, "the daemon to answer /livez")
    return daemon


@pytest.fixture
def daemon_env(shop_env: dict[str, str]) -> dict[str, str]:
    return dict(
        shop_env,
        HEALER_HTTP_PORT=str(free_port()),
        HEALER_WORKER_INTERVAL_SECONDS="0.2",
        HEALER_WORKERS="2",
        HEALER_ADMIN_TOKEN=ADMIN,
        PUBLIC_BASE_URL="https://shop.example",
    )


@pytest.fixture
def daemon(daemon_env: dict[str, str], tmp_path: Path) -> Iterator[RunningDaemon]:
    running = start_daemon(daemon_env, tmp_path / "daemon.log")
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()


def test_customer_completion_through_the_running_daemon(shop: Shop, daemon: RunningDaemon, daemon_env: dict[str, str]) -> None:
    order_id = shop.paid_order(queued=False)

    status, _, body = daemon.request("POST", f"/api/orders/{order_id}/complete",
                                     {"X-Session-Token": f"sess-{order_id.hex}"})
    assert status == 202 and json.loads(body)["status"] == "paid"
    wait_for(lambda: shop.order(order_id).status == "completed", 60, "the order to complete")

    order = shop.order(order_id)
    status, headers, _ = daemon.request("GET", f"/download/{order.download_token}")
    assert status == 307 and order.final_pdf_key in headers["location"]
    assert len(shop.emails_to("ada@example.com")) == 1
    log = daemon.log()
    for line in (f"Payment succeeded: {order.stripe_payment_intent_id}",
                 f"File migration completed successfully for order {order_id}",
                 f"PDF generated: pdfs/final_{order_id}.pdf",
                 "Download email sent to a…@example.com"):
        assert line in log
    status, headers, body = daemon.request("GET", "/metrics")
    exposition = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'healer_order_completions_total{outcome="completed"} 1.0' in exposition
    assert 'healer_orders{status="completed"} 1.0' in exposition
    for name in ("AWS_SECRET_ACCESS_KEY", "SENDGRID_API_KEY", "STRIPE_SECRET_KEY", "HEALER_ADMIN_TOKEN"):
        assert daemon_env[name] not in log, name
        assert daemon_env[name] not in exposition, name


def test_sigterm_stops_the_daemon_cleanly(shop: Shop, daemon: RunningDaemon) -> None:
    order_id = shop.paid_order()
    wait_for(lambda: shop.order(order_id).status == "completed", 60, "the order to complete")

    daemon.process.send_signal(signal.SIGTERM)

    assert daemon.process.wait(timeout=30) == 0
    assert "healer stopped" in daemon.log()
    assert shop.order(order_id).lease_owner is None


def test_unknown_order_and_wrong_token_over_http(shop: Shop, daemon: RunningDaemon) -> None:
    order_id = shop.paid_order(queued=False)

    assert daemon.request("POST", f"/api/orders/{uuid.uuid4()}/complete")[0] == 404
    assert daemon.request("POST", f"/api/orders/{order_id}/complete", {"X-Session-Token": "x"})[0] == 403
    assert shop.order(order_id).status == "pending_payment"


def test_bad_configuration_stops_with_one_line_naming_the_variable(daemon_env: dict[str, str]) -> None:
    env = dict(daemon_env, HEALER_WORKERS="lots")

    result = subprocess.run(HEALER + ["run"], env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "healer: configuration error: HEALER_WORKERS='lots' is not a whole number"
    ]


def test_demo_completes_its_sample_orders(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEALER_", "DATABASE_URL", "S3_", "STRIPE_", "SENDGRID_"))}
    env.update(HEALER_DATA_DIR=str(tmp_path / "demo"), HEALER_HTTP_PORT=str(free_port()), COLUMNS="200")

    result = subprocess.run(HEALER + ["demo", "--orders", "5", "--exit-when-done"], env=env,
                            capture_output=True, text=True, timeout=240,
                            cwd=Path(__file__).resolve().parents[2])

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "payment verification is DISABLED" in output
    assert len(list((tmp_path / "demo" / "outbox").glob("*.eml"))) == 4
    assert len(list((tmp_path / "demo" / "store" / "pdfs").glob("final_*.pdf"))) == 4
    assert output.count("completed") >= 4 and "needs_attention" in output  # the corrupt photo
