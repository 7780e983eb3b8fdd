"""The health monitor: thresholds, dependencies, hung probes, the pipeline's gate, listeners,
scheduling, and `build_monitor` on embedded defaults and on real peers.

Where the behaviour under test is the monitor's own (a threshold, a hang), the checks are
stand-ins whose outcome the test sets: plug-ins written to the `Check` interface, as any extra
check is. Where it is the whole chain, the checks are the real ones against real peers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import Engine

from checks.base import Check, CheckFailed, CheckResult, CheckWarning, Status
from checks.database import DatabaseCheck
from checks.s3 import S3Check
from fulfilment.secrets import Redactor
from healer import db
from healer.config import Settings
from healer.health.monitor import HealthMonitor
from healer.jobs.scheduler import Scheduler
from healer.wiring import Services, build_monitor
from tests.eventually import eventually
from tests.fakes.ports import free_port
from tests.fakes.s3_fixtures import MotoBucket
from tests.fakes.sendgrid_server import SendGridServer
from tests.fakes.stripe_server import FakeStripeServer


@dataclass
class Peer:
    """What a stand-in check finds; a test flips it."""

    outcome: Status = Status.OK
    detail: str = "fine"
    delay: float = 0.0
    blocked: threading.Event | None = None  # while set to an unset Event, the probe hangs
    probes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, outcome: Status, detail: str = "fine") -> None:
        self.outcome, self.detail = outcome, detail


@dataclass(frozen=True, kw_only=True)
class StandIn(Check):
    name: ClassVar[str] = "stand-in"
    peer: Peer

    def probe(self) -> str:
        with self.peer.lock:
            self.peer.probes += 1
        if self.peer.blocked is not None:
            self.peer.blocked.wait(30)
        time.sleep(self.peer.delay)  # deliberate: a slow peer, as the test sets it
        if self.peer.outcome is Status.FAILING:
            raise CheckFailed(self.peer.detail, "fix the peer")
        if self.peer.outcome is Status.WARNING:
            raise CheckWarning(self.peer.detail, "look at the peer")
        return self.peer.detail


def stand_in(name: str, peer: Peer | None = None, **config: Any) -> StandIn:
    """A stand-in check called `name` (the name is a class attribute, so each gets a subclass)."""
    cls = type(f"StandIn_{name}", (StandIn,), {"name": name})
    return cls(peer=peer or Peer(), **config)  # type: ignore[no-any-return]


# -- threshold -----------------------------------------------------------------------------------


def test_one_failure_below_the_threshold_does_not_flip_a_good_status() -> None:
    peer = Peer()
    monitor = HealthMonitor([stand_in("s3", peer, failure_threshold=2)])
    monitor.run("s3")

    peer.set(Status.FAILING, "access denied: nope")
    held = monitor.run("s3")
    flipped = monitor.run("s3")
    peer.set(Status.OK)
    recovered = monitor.run("s3")

    assert held.status is Status.OK
    assert held.detail == "probe failed (1 of 2 before failing): access denied: nope"
    report = monitor.report("s3")
    assert flipped.status is Status.FAILING and flipped.detail == "access denied: nope"
    assert recovered.status is Status.OK and report.consecutive_failures == 0


def test_the_raw_result_is_kept_beside_the_reported_one() -> None:
    peer = Peer()
    monitor = HealthMonitor([stand_in("s3", peer, failure_threshold=3)])
    monitor.run("s3")
    peer.set(Status.FAILING, "boom")

    monitor.run("s3")
    report = monitor.report("s3")

    assert report.result is not None and report.raw is not None
    assert report.result.status is Status.OK and report.raw.status is Status.FAILING
    assert report.consecutive_failures == 1
    assert report.as_dict()["probe_status"] == "failing"


def test_a_first_failure_is_reported_at_once() -> None:
    monitor = HealthMonitor([stand_in("s3", Peer(Status.FAILING, "down"), failure_threshold=5)])

    assert monitor.run("s3").status is Status.FAILING


def test_last_success_is_the_last_probe_that_got_an_answer() -> None:
    peer = Peer()
    monitor = HealthMonitor([stand_in("s3", peer, failure_threshold=1)])
    ok = monitor.run("s3")
    peer.set(Status.FAILING)
    monitor.run("s3")

    assert monitor.report("s3").last_success == ok.checked_at


# -- dependencies --------------------------------------------------------------------------------


def test_dependents_are_skipped_while_the_real_database_is_down() -> None:
    engine = db.make_engine(f"postgresql://healer@127.0.0.1:{free_port()}/shop")
    orders_peer = Peer()
    monitor = HealthMonitor([
        DatabaseCheck(engine=engine, failure_threshold=1),
        stand_in("orders", orders_peer, depends_on=("database",)),
    ])

    results = monitor.run_all()

    assert results["database"].status is Status.FAILING
    assert results["database"].detail.startswith("server down: ")
    assert results["orders"].status is Status.SKIPPED
    assert results["orders"].detail == "skipped: database failing"
    assert orders_peer.probes == 0  # no second alarm, and no probe that could only fail
    engine.dispose()


def test_dependents_run_again_once_the_database_recovers() -> None:
    database = Peer(Status.FAILING, "server down")
    orders = Peer()
    monitor = HealthMonitor([stand_in("database", database, failure_threshold=1),
                             stand_in("orders", orders, depends_on=("database",))])
    monitor.run_all()

    database.set(Status.OK)
    results = monitor.run_all()

    assert results["orders"].status is Status.OK and orders.probes == 1


# -- hung probes ---------------------------------------------------------------------------------


def test_a_hung_probe_is_reported_as_hanging_and_not_started_again() -> None:
    release = threading.Event()
    peer = Peer(blocked=release)
    name = f"hangs-{uuid.uuid4().hex[:8]}"
    monitor = HealthMonitor([stand_in(name, peer, timeout_seconds=0.3)])

    def probe_threads() -> int:  # run_with_timeout names its thread after the check
        return sum(1 for thread in threading.enumerate() if thread.name == f"check-{name}")

    timed_out = monitor.run(name)
    hanging = [monitor.run(name) for _ in range(3)]
    threads_while_hanging = probe_threads()
    release.set()
    eventually(lambda: probe_threads() == 0, what="the released probe's thread to end")
    peer.blocked = None
    recovered = monitor.run(name)

    assert timed_out.status is Status.FAILING and "no answer within 0.3s (timed out)" in timed_out.detail
    assert all(r.status is Status.FAILING and r.detail.startswith("still hanging: ") for r in hanging)
    assert "not started again" in hanging[-1].detail
    assert threads_while_hanging == 1  # one abandoned probe, not four
    assert peer.probes == 2  # the hung one, then the one after it returned
    assert recovered.status is Status.OK



def test_run_all_runs_the_checks_in_parallel() -> None:
    names = ("database", "s3", "sendgrid", "stripe")
    monitor = HealthMonitor([stand_in(n, Peer(delay=0.4)) for n in names])

    started = time.monotonic()
    results = monitor.run_all()
    elapsed = time.monotonic() - started

    assert list(results) == list(names)
    assert elapsed < 1.2, f"{elapsed:.2f}s: the checks ran one after another"


# -- readiness and the gate ----------------------------------------------------------------------


def test_ready_only_when_every_critical_check_has_run_and_is_not_failing() -> None:
    s3 = Peer()
    monitor = HealthMonitor([stand_in("database"), stand_in("s3", s3, failure_threshold=1),
                             stand_in("stripe", Peer(Status.FAILING, "key rejected"), critical=False)])

    assert not monitor.ready().ready  # nothing has run yet
    monitor.run_all()
    assert monitor.ready().ready  # a non-critical failure does not count
    s3.set(Status.FAILING, "access denied")
    monitor.run("s3")

    readiness = monitor.ready()
    assert not readiness.ready
    assert [(line.name, line.ok, line.reason) for line in readiness.lines] == [
        ("database", True, "ok"), ("s3", False, "access denied")]
    assert monitor.ready(exclude=["s3", "nope"]).ready
    assert monitor.ready(exclude=["s3", "nope"]).unknown_excludes == ("nope",)


def test_the_gate_names_the_failing_check_and_lets_everything_else_through() -> None:
    s3, assets = Peer(), Peer(Status.WARNING, "slow font")
    monitor = HealthMonitor([stand_in("s3", s3, failure_threshold=2), stand_in("assets", assets)])

    assert monitor.gate(("s3",)) is None  # not run yet: no gate
    monitor.run_all()
    s3.set(Status.FAILING, "access denied: check AWS_SECRET_ACCESS_KEY")
    monitor.run("s3")
    assert monitor.gate(("s3", "assets")) is None  # within the threshold; a warning never gates
    monitor.run("s3")

    assert monitor.gate(("s3", "assets", "disk", "memory")) == (
        "s3 failing: access denied: check AWS_SECRET_ACCESS_KEY")
    assert monitor.gate(("sendgrid",)) is None  # unknown here


# -- listeners -----------------------------------------------------------------------------------


def test_listeners_see_every_result_with_the_one_before_it() -> None:
    peer = Peer()
    monitor = HealthMonitor([stand_in("sendgrid", peer, failure_threshold=1)])
    seen: list[tuple[str | None, str]] = []

    def broken(_new: CheckResult, _previous: CheckResult | None) -> None:
        raise RuntimeError("a listener's own bug")

    monitor.add_listener(broken)
    monitor.add_listener(lambda new, previous: seen.append((previous.status.value if previous else None,
                                                             new.status.value)))
    monitor.run("sendgrid")
    peer.set(Status.FAILING, "invalid key")
    monitor.run("sendgrid")
    monitor.run("sendgrid")
    peer.set(Status.OK)
    monitor.run("sendgrid")

    assert seen == [(None, "ok"), ("ok", "failing"), ("failing", "failing"), ("failing", "ok")]


def test_a_turn_to_green_is_logged_and_steady_state_is_not(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="healer.health.monitor")
    peer = Peer()
    monitor = HealthMonitor([stand_in("s3", peer, failure_threshold=1)])
    monitor.run("s3")
    monitor.run("s3")
    peer.set(Status.FAILING, "access denied")
    monitor.run("s3")
    peer.set(Status.OK, "back")
    monitor.run("s3")

    assert [r.getMessage() for r in caplog.records] == ["Check s3 is failing: access denied", "Check s3 is ok: back"]
    assert caplog.records[0].levelno == logging.WARNING


# -- scheduling ----------------------------------------------------------------------------------


def test_schedule_adds_one_job_per_check_at_its_own_interval() -> None:
    monitor = HealthMonitor([stand_in("database", interval_seconds=0.2), stand_in("s3", interval_seconds=7)])
    scheduler = Scheduler()
    monitor.schedule(scheduler)
    scheduler.start()
    try:
        eventually(lambda: len(monitor.results()) == 2, what="both checks' first results")
    finally:
        scheduler.shutdown()

    assert {(job.name, job.interval_seconds) for job in scheduler.jobs()} == {
        ("check:database", 0.2), ("check:s3", 7)}


# -- construction and redaction ------------------------------------------------------------------


def test_two_checks_of_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match="more than one check named s3"):
        HealthMonitor([stand_in("s3"), stand_in("s3")])


def test_results_come_in_display_order_whatever_the_order_given() -> None:
    monitor = HealthMonitor([stand_in("orders"), stand_in("stripe"), stand_in("database"), stand_in("zz-plugin")])

    monitor.run_all()

    assert monitor.names == list(monitor.results()) == ["database", "stripe", "orders", "zz-plugin"]


def test_a_secret_a_check_lets_slip_is_masked_by_the_monitor() -> None:
    secret = "sk_live_" + uuid.uuid4().hex
    monitor = HealthMonitor([stand_in("stripe", Peer(Status.FAILING, f"key {secret} refused"))], redact=Redactor([secret]))

    result = monitor.run("stripe")

    assert secret not in result.detail and result.detail.startswith("key sk_live_…")


def embedded_settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"HEALER_DATA_DIR": str(tmp_path / "var"), **env})


def test_build_monitor_on_embedded_defaults(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    services = Services.build(settings)
    db.upgrade(services.engine)
    extra = stand_in("scheduler")
    try:
        monitor = build_monitor(settings, services, [extra])
        results = monitor.run_all()
    finally:
        services.close()

    assert sorted(monitor.names) == sorted(["database", "s3", "sendgrid", "stripe", "disk", "memory", "assets",
                                            "docker", "orders", "scheduler"])
    assert {n: r.status for n, r in results.items()} == {
        "database": Status.OK, "s3": Status.OK, "sendgrid": Status.DISABLED, "stripe": Status.DISABLED,
        "disk": Status.OK, "memory": Status.OK, "assets": Status.OK, "docker": Status.DISABLED,
        "orders": Status.OK, "scheduler": Status.OK}
    assert results["s3"].detail.startswith("local store (S3_BUCKET unset)")
    assert str(settings.outbox_dir) in results["sendgrid"].detail
    assert monitor.check("scheduler") is extra


def test_build_monitor_intervals_follow_the_check_interval(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, S3_BUCKET="healer-intervals", AWS_ACCESS_KEY_ID="AKIAEXAMPLE0000",
                                 AWS_SECRET_ACCESS_KEY="x" * 20)
    services = Services.build(settings)
    try:
        monitor = build_monitor(settings, services)
    finally:
        services.close()

    intervals = {name: monitor.check(name).interval_seconds for name in monitor.names}
    assert intervals == {"database": 15, "s3": 30, "sendgrid": 60, "stripe": 60, "disk": 30, "memory": 30,
                         "assets": 30, "docker": 30, "orders": 30}
    s3 = monitor.check("s3")
    assert isinstance(s3, S3Check) and s3.round_trip_every_seconds == 600
    assert {n for n in monitor.names if monitor.check(n).critical} == {"database", "s3"}


@dataclass(frozen=True)
class Configured:
    settings: Settings
    secrets: tuple[str, ...]


def configured(tmp_path: Path, pg_url: str, s3: MotoBucket, sendgrid: SendGridServer,
               stripe: FakeStripeServer, **overrides: str) -> Configured:
    """Settings for every real peer, each with a secret worth leaking (the DB password included:
    the test server trusts local connections, so it is accepted and ignored)."""
    db_password = "pg-" + uuid.uuid4().hex
    aws_secret = "aws-" + uuid.uuid4().hex
    admin = "admin-" + uuid.uuid4().hex
    env = {
        "HEALER_DATA_DIR": str(tmp_path / "var"),
        "DATABASE_URL": pg_url.replace("postgres@", f"postgres:{db_password}@", 1),
        "S3_BUCKET": s3.bucket, "S3_ENDPOINT_URL": s3.endpoint_url, "S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIA" + uuid.uuid4().hex[:16].upper(), "AWS_SECRET_ACCESS_KEY": aws_secret,
        "SENDGRID_API_KEY": sendgrid.api_key, "SENDGRID_API_BASE": sendgrid.url,
        "FROM_EMAIL": "posters@shop.example",
        "STRIPE_SECRET_KEY": stripe.api_key, "STRIPE_WEBHOOK_SECRET": stripe.webhook_secret,
        "STRIPE_API_BASE": stripe.url, "HEALER_ADMIN_TOKEN": admin,
        **overrides,
    }
    secrets = (db_password, aws_secret, admin, env["AWS_ACCESS_KEY_ID"], sendgrid.api_key, stripe.api_key,
               stripe.webhook_secret)
    return Configured(Settings.from_env(env), secrets)


def test_build_monitor_on_real_peers_is_ok_and_never_shows_a_secret(
    tmp_path: Path, pg_url: str, pg_engine: Engine, s3_bucket: MotoBucket, sendgrid_server: SendGridServer,
    stripe_server: FakeStripeServer, caplog: pytest.LogCaptureFixture,
) -> None:
    # pg_engine empties the tables: the `orders` check must not see an earlier test's orders.
    # The daemon's own level for libraries (botocore's DEBUG lines carry the access key id in the
    # signed header; `healer` runs its libraries at WARNING), everything for the project's code.
    caplog.set_level(logging.INFO)
    for logger in ("checks", "healer", "fulfilment"):
        caplog.set_level(logging.DEBUG, logger=logger)
    setup = configured(tmp_path, pg_url, s3_bucket, sendgrid_server, stripe_server)
    services = Services.build(setup.settings)
    try:
        monitor = build_monitor(setup.settings, services)
        healthy = monitor.run_all()
        sendgrid_server.set_key_valid(False)
        stripe_server.revoke_key(stripe_server.api_key)
        monitor.run_all()
        broken = monitor.run_all()  # twice: past the failure threshold
    finally:
        services.close()

    expected = dict.fromkeys(healthy, Status.OK) | {"docker": Status.DISABLED}  # no DOCKER_HOST here
    assert {n: r.status for n, r in healthy.items()} == expected, healthy
    assert broken["sendgrid"].status is broken["stripe"].status is Status.FAILING
    output = json.dumps([r.as_dict() for r in monitor.reports()]) + repr(monitor.reports()) + caplog.text
    leaked = [secret for secret in setup.secrets if secret in output]
    assert leaked == []
