"""A `healer run` in its own process for whole-daemon tests: its environment, starting it, waiting
for it to answer, talking to it over HTTP and stopping it."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.eventually import eventually
from tests.fakes.ports import free_port

HEALER = [str(Path(sys.executable).with_name("healer"))]  # the installed command, as operators run it
ADMIN = "e2e-admin-token-0123456789abcdef-0123"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningDaemon:
    process: subprocess.Popen[str]
    base_url: str  # the public listener: customers, Stripe
    ops_url: str  # the operator listener: probes, health, metrics, admin API
    log_path: Path

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """A request to the public listener."""
        return _send(method, self.base_url + path, headers)

    def ops(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """A request to the operator listener."""
        return _send(method, self.ops_url + path, headers)

    def log(self) -> str:
        return self.log_path.read_text()


def _send(method: str, url: str, headers: dict[str, str] | None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None



def healer_env(shop_env: dict[str, str], **overrides: str) -> dict[str, str]:
    """The shop's environment for one daemon: free ports for its two listeners, two workers on a
    fast tick, the admin token, text log lines; `overrides` add or replace variables."""
    return {
        **shop_env,
        "HEALER_HTTP_PORT": str(free_port()),
        "HEALER_OPS_PORT": str(free_port()),
        "HEALER_WORKER_INTERVAL_SECONDS": "0.2",
        "HEALER_WORKERS": "2",
        "HEALER_ADMIN_TOKEN": ADMIN,
        # The log read as an operator at a terminal reads it (a log file is no terminal, so the
        # default would be JSON); tests/healer/test_logs.py reads the JSON lines.
        "HEALER_LOG_FORMAT": "text",
        **overrides,
    }


def start_daemon(env: dict[str, str], log_path: Path, args: list[str] | None = None) -> RunningDaemon:
    port, ops_port = int(env["HEALER_HTTP_PORT"]), int(env["HEALER_OPS_PORT"])
    log_file = log_path.open("w")
    process = subprocess.Popen(
        HEALER + (args or ["run"]), env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )
    daemon = RunningDaemon(process, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops_port}", log_path)

    def answering() -> bool:
        assert process.poll() is None, f"daemon exited early:\n{log_path.read_text()}"
        try:
            return daemon.ops("GET", "/livez")[0] == 200
        except OSError:
            return False

    try:
        eventually(answering, timeout=60, what="the daemon to answer /livez", interval=0.2)
    except BaseException:
        process.kill()  # a daemon that never answered must not outlive the test
        process.wait()
        raise
    return daemon


@contextmanager
def running_daemon(env: dict[str, str], log_path: Path) -> Iterator[RunningDaemon]:
    """A started daemon, killed on the way out if it is still running (a test may stop it itself)."""
    running = start_daemon(env, log_path)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
