"""`/readyz` and `/health` latency under concurrent requests, with every peer answering and then
with the SendGrid probe hanging (a server that accepts and never answers), as ratios of the first;
then the daemon's idle CPU and RSS with every check at its default interval.

The daemon is a real `healer run` process on embedded SQLite, with SendGrid and Stripe pointed at
the wire-format servers of tests/fakes. Loopback only; request counts are bounded.

    .venv/bin/python bench/health_bench.py [--requests 2000] [--clients 16] [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.sendgrid_server import SendGridServer  # noqa: E402
from tests.fakes.stripe_server import FakeStripeServer  # noqa: E402

console = Console()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_daemon(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A `healer run` and the base URL of its operator listener (where the probes are)."""
    port = free_port()
    env = dict(env, HEALER_HTTP_PORT=str(free_port()), HEALER_OPS_PORT=str(port))
    process = subprocess.Popen([sys.executable, "-m", "healer", "--log-level", "warning", "run"],
                               env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/livez", timeout=1).read()
            return process, base
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"daemon did not start; see {log}")


def hammer(url: str, requests: int, clients: int, *, keep_alive: bool = False) -> list[float]:
    """The latency of each of `requests` GETs of `url` from `clients` threads, any status an answer.

    As each caller does it: a kubelet or load balancer probe opens a new TCP connection per request
    (the default); Prometheus keeps its connection to a target open between scrapes (`keep_alive`:
    one connection per client thread). Plain `http.client`, not `urllib`, whose per-request opener,
    proxy lookup in the environment and handler chain cost the client more than a probe costs the
    server, on the same cores, so that the figures measured the load generator."""
    parts = urllib.parse.urlsplit(url)
    host, port, target = parts.hostname or "127.0.0.1", parts.port or 80, parts.path + (
        f"?{parts.query}" if parts.query else "")
    local = threading.local()

    def connection() -> http.client.HTTPConnection:
        if not keep_alive:
            return http.client.HTTPConnection(host, port, timeout=30)
        if getattr(local, "connection", None) is None:
            local.connection = http.client.HTTPConnection(host, port, timeout=30)
            local.connection.connect()
            # As Prometheus' Go client (Go sets it on every TCP connection): without it, a request
            # written behind an unacknowledged one waits out the server's delayed ACK (40 ms).
            local.connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return local.connection  # type: ignore[no-any-return]

    def one(_: int) -> float:
        started = time.perf_counter()
        conn = connection()
        try:
            conn.request("GET", target, headers={} if keep_alive else {"Connection": "close"})
            conn.getresponse().read()
        except (http.client.HTTPException, OSError):
            conn.close()
            local.connection = None
            raise
        finally:
            if not keep_alive:
                conn.close()
        return time.perf_counter() - started

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(requests)))


def summary(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return statistics.median(ordered) * 1000, ordered[int(0.99 * (len(ordered) - 1))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--idle-seconds", type=float, default=60)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="healer-health-bench-"))
    with SendGridServer() as sendgrid, FakeStripeServer() as stripe:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HEALER_", "DATABASE_URL", "S3_"))}
        env.update(HEALER_DATA_DIR=str(data), SENDGRID_API_KEY=sendgrid.api_key, SENDGRID_API_BASE=sendgrid.url,
                   FROM_EMAIL="bench@shop.example", STRIPE_SECRET_KEY=stripe.api_key,
                   STRIPE_API_BASE=stripe.url, STRIPE_WEBHOOK_SECRET=stripe.webhook_secret)
        process, base = start_daemon(env, data / "daemon.log")
        try:
            time.sleep(3)  # every check has run once
            rows = []
            for label in ("peers answering", "sendgrid probe hanging"):
                if label.startswith("sendgrid"):
                    sendgrid.set_hang(True)
                    urllib.request.urlopen(f"{base}/livez").read()
                for path in ("/readyz", "/health"):
                    rows.append((label, path, *summary(hammer(base + path, args.requests, args.clients))))
            sendgrid.set_hang(False)
            idle = measure_idle(process.pid, args.idle_seconds)
        finally:
            process.terminate()
            process.wait(timeout=30)
    report(args, rows, idle)


def measure_idle(pid: int, seconds: float) -> tuple[float, float, float]:
    proc = psutil.Process(pid)
    family = [proc, *proc.children(recursive=True)]
    cpu_before = sum(p.cpu_times().user + p.cpu_times().system for p in family)
    time.sleep(seconds)
    cpu_after = sum(p.cpu_times().user + p.cpu_times().system for p in family)
    rss = proc.memory_info().rss
    children = sum(p.memory_info().rss for p in family[1:])
    return (cpu_after - cpu_before) / seconds * 100, rss / 2**20, children / 2**20


def report(args: argparse.Namespace, rows: list[tuple[str, str, float, float]],
           idle: tuple[float, float, float]) -> None:
    table = Table("peers", "endpoint", "p50 ms", "p99 ms", "p50 x baseline", "p99 x baseline",
                  title=f"{args.requests} requests, {args.clients} concurrent clients")
    baseline = {path: (p50, p99) for label, path, p50, p99 in rows if label == "peers answering"}
    for label, path, p50, p99 in rows:
        b50, b99 = baseline[path]
        table.add_row(label, path, f"{p50:.1f}", f"{p99:.1f}", f"{p50 / b50:.2f}", f"{p99 / b99:.2f}")
    console.print(table)
    cpu, rss, children = idle
    console.print(f"idle over {args.idle_seconds:.0f}s, every check at its default interval: "
                  f"{cpu:.2f}% of one core, RSS {rss:.0f} MiB (+{children:.0f} MiB render processes)")


if __name__ == "__main__":
    main()
