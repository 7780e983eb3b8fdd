"""A peer's outage, as a running `healer run` meets it: one alarm for one cause, and a daemon that
stays alive. The daemon reaches PostgreSQL, S3 (moto) and SendGrid through cuttable TCP proxies
(tests/fakes/tcp_proxy.py), so each outage is real to it while the peers themselves keep serving
everyone else; its checks and jobs run every second or two, and /livez, /readyz and /health are
polled throughout."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.daemon import RunningDaemon, healer_env, running_daemon
from tests.eventually import Unmet, eventually
from tests.fakes.shop_fixtures import Shop
from tests.fakes.tcp_proxy import TcpProxy

# Far longer than every job's interval (1 s) and than liveness's 30 s grace: before issue 21 the
# daemon's /livez turned 503 within it.
DATABASE_OUTAGE_SECONDS = 45.0
SHORT_OUTAGE_SECONDS = 8.0  # several intervals of the S3 (1 s) and SendGrid (2 s) checks


@dataclass
class Peers:
    database: TcpProxy
    s3: TcpProxy
    sendgrid: TcpProxy

    def __getitem__(self, name: str) -> TcpProxy:
        return {"database": self.database, "s3": self.s3, "sendgrid": self.sendgrid}[name]


@dataclass
class Watch:
    """What the operator listener said on each poll during an outage."""

    livez: list[tuple[int, str]] = field(default_factory=list)
    readyz: list[tuple[int, str]] = field(default_factory=list)
    failing: list[frozenset[str]] = field(default_factory=list)
    details: dict[str, set[str]] = field(default_factory=dict)  # check -> its details while not ok

    def poll(self, daemon: RunningDaemon) -> None:
        status, _, body = daemon.ops("GET", "/livez?verbose")
        self.livez.append((status, body.decode()))
        status, _, body = daemon.ops("GET", "/readyz?verbose")
        self.readyz.append((status, body.decode()))
        checks = json.loads(daemon.ops("GET", "/health")[2])["checks"]
        self.failing.append(frozenset(name for name, c in checks.items() if c["status"] == "failing"))
        for name, check in checks.items():
            if check["status"] not in ("ok", "disabled"):
                self.details.setdefault(name, set()).add(check["detail"])

    def ever_failing(self) -> set[str]:
        return set().union(*self.failing)


@pytest.fixture
def peers(shop: Shop, pg_proxy: TcpProxy, tcp_proxy: Callable[[int], TcpProxy]) -> Peers:
    return Peers(pg_proxy, tcp_proxy(urlsplit(shop.s3.endpoint_url).port or 80),
                 tcp_proxy(urlsplit(shop.sendgrid.url).port or 80))


@pytest.fixture
def daemon(shop_env: dict[str, str], peers: Peers, tmp_path: Path) -> Iterator[RunningDaemon]:
    env = healer_env(
        shop_env,
        DATABASE_URL=peers.database.replace_port(shop_env["DATABASE_URL"]),
        S3_ENDPOINT_URL=peers.s3.replace_port(shop_env["S3_ENDPOINT_URL"]),
        SENDGRID_API_BASE=peers.sendgrid.replace_port(shop_env["SENDGRID_API_BASE"]),
        HEALER_CHECK_INTERVAL_SECONDS="1",  # database every 0.5 s, SendGrid and Stripe every 2 s
        HEALER_RECONCILE_INTERVAL_SECONDS="1",
        HEALER_ORDER_SLA_SECONDS="2",  # the stuck sweep every second
    )
    with running_daemon(env, tmp_path / "daemon.log") as running:
        eventually(lambda: all_green(running), timeout=60, what="every check green before the outage")
        yield running


def all_green(daemon: RunningDaemon) -> dict[str, str] | Unmet:
    checks = json.loads(daemon.ops("GET", "/health")[2])["checks"]
    statuses = {name: c["status"] for name, c in checks.items()}
    return statuses if set(statuses.values()) <= {"ok", "disabled"} else Unmet(statuses)


def watch(daemon: RunningDaemon, seconds: float, until: Callable[[Watch], bool] = lambda _w: True) -> Watch:
    """Poll the daemon for `seconds` (and until `until` holds): the outage's length is the test's
    choice, so this polls for a duration rather than waiting for a state."""
    seen = Watch()
    ends = time.monotonic() + seconds
    eventually(lambda: time.monotonic() >= ends and until(seen), step=lambda: seen.poll(daemon),
               timeout=seconds + 60, interval=0.5, what=f"{seconds:g} s of watching")
    return seen


def scheduler_lines(log: str, level: str) -> list[str]:
    return re.findall(rf"^\S+ \S+ {level}\s+healer\.jobs\.scheduler: (.*)$", log, re.MULTILINE)


@pytest.mark.slow
def test_a_database_outage_is_one_alarm_and_never_fails_liveness(daemon: RunningDaemon, peers: Peers) -> None:
    peers.database.cut()
    during = watch(daemon, DATABASE_OUTAGE_SECONDS,
                   until=lambda w: "orders" in w.details and "scheduler" in w.details)
    peers.database.restore()
    recovery = watch(daemon, 10.0)  # jobs that waited run again at once: none looks late meanwhile
    after = eventually(lambda: all_green(daemon), timeout=60, what="every check green after the outage")

    assert [s for s in during.livez + recovery.livez if s[0] != 200] == [], "/livez must stay 200 throughout"
    assert during.ever_failing() == {"database"}, during.details
    assert recovery.ever_failing() <= {"database"}, recovery.details
    assert {f for f in during.failing if f} == {frozenset({"database"})}
    assert any(code == 503 and "[-]database failed: server" in body for code, body in during.readyz), during.readyz
    assert {d.split(" (")[0] for d in during.details["orders"]} == {"skipped: database failing"}
    assert any(d.startswith("skipped: database failing (jobs ") for d in during.details["scheduler"])
    assert after["scheduler"] == "ok"

    log = daemon.log()
    assert "Traceback" not in log
    assert scheduler_lines(log, "ERROR") == []
    for job in ("worker", "stuck", "reconcile"):  # at most one line each that it could not run
        assert len([line for line in scheduler_lines(log, "WARNING") if line.startswith(f"Job {job} ")]) <= 1


@pytest.mark.slow
@pytest.mark.parametrize(("peer", "critical"), [("s3", True), ("sendgrid", False)])
def test_an_s3_or_sendgrid_outage_is_one_failing_check(
    daemon: RunningDaemon, peers: Peers, peer: str, critical: bool
) -> None:
    peers[peer].cut()
    during = watch(daemon, SHORT_OUTAGE_SECONDS, until=lambda w: peer in w.ever_failing())
    peers[peer].restore()
    eventually(lambda: all_green(daemon), timeout=60, what=f"every check green after the {peer} outage")

    assert during.ever_failing() == {peer}, during.details
    assert [s for s in during.livez if s[0] != 200] == []
    readiness = {code for code, body in during.readyz if peer in body or code == 200}
    assert (503 in readiness) is critical  # only s3 of the two takes the daemon out of readiness
    assert "Traceback" not in daemon.log()
