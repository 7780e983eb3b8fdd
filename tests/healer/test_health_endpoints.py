"""`/readyz`, `/health` and `/health/{check}` over ASGI, on the real app with a real monitor.

They answer from the monitor's cache: a probe that hangs on its peer never holds them up.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from checks.base import Status
from checks.sendgrid import SendGridCheck
from healer import db
from healer.config import Settings
from healer.health.monitor import HealthMonitor
from healer.wiring import Services, build_monitor
from tests.eventually import eventually
from tests.fakes.http_fixtures import operator_client
from tests.fakes.s3_fixtures import MotoBucket
from tests.fakes.sendgrid_server import SendGridServer
from tests.fakes.stripe_server import FakeStripeServer
from tests.healer.test_health import Peer, configured, stand_in


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    services = Services.build(Settings.from_env({"HEALER_DATA_DIR": str(tmp_path / "var")}))
    db.upgrade(services.engine)
    yield services
    services.close()


def client_for(services: Services, monitor: HealthMonitor | None) -> TestClient:
    return operator_client(services.sessions, services.pipeline(lambda _inputs: b""), health=monitor)


@pytest.fixture
def s3() -> Peer:
    return Peer()


@pytest.fixture
def monitor(s3: Peer) -> HealthMonitor:
    return HealthMonitor([
        stand_in("database"),
        stand_in("s3", s3, failure_threshold=1),
        stand_in("stripe", Peer(Status.FAILING, "key rejected: sk_test_…abcd"), critical=False),
    ])


# -- /readyz ---------------------------------------------------------------------------------------


def test_readyz_is_503_until_the_checks_have_run(services: Services, monitor: HealthMonitor) -> None:
    client = client_for(services, monitor)

    before = client.get("/readyz")
    monitor.run_all()
    after = client.get("/readyz")

    assert before.status_code == 503
    assert before.text == "[-]database failed: not checked yet\n[-]s3 failed: not checked yet\nreadyz check failed\n"
    assert (after.status_code, after.text) == (200, "ok")


def test_readyz_verbose_lists_the_critical_checks_kubernetes_style(services: Services, monitor: HealthMonitor) -> None:
    monitor.run_all()

    response = client_for(services, monitor).get("/readyz?verbose")

    assert response.status_code == 200
    assert response.text == "[+]database ok\n[+]s3 ok\nreadyz check passed\n"  # stripe is not critical
    assert response.headers["cache-control"] == "no-store"


def test_readyz_fails_with_the_reason_when_a_critical_check_fails(
    services: Services, monitor: HealthMonitor, s3: Peer
) -> None:
    monitor.run_all()
    s3.set(Status.FAILING, "access denied: list s3://shop/healthcheck/")
    monitor.run("s3")

    response = client_for(services, monitor).get("/readyz")

    assert response.status_code == 503
    assert response.text == (
        "[+]database ok\n[-]s3 failed: access denied: list s3://shop/healthcheck/\nreadyz check failed\n")


def test_readyz_exclude_may_be_repeated_and_warns_about_checks_that_gate_nothing(
    services: Services, monitor: HealthMonitor, s3: Peer
) -> None:
    s3.set(Status.FAILING, "no such bucket")
    monitor.run_all()
    client = client_for(services, monitor)

    plain = client.get("/readyz", params=[("exclude", "s3")])
    verbose = client.get("/readyz", params=[("verbose", ""), ("exclude", "s3"), ("exclude", "stripe")])

    assert (plain.status_code, plain.text) == (200, "ok")
    assert verbose.status_code == 200
    assert verbose.text == ('[+]database ok\n[+]s3 excluded: ok\n'
                            'warn: some health checks cannot be excluded: no matches for "stripe"\n'
                            'readyz check passed\n')


def test_readyz_without_a_monitor_is_ready_and_livez_is_unchanged(services: Services, monitor: HealthMonitor) -> None:
    bare, monitored = client_for(services, None), client_for(services, monitor)

    assert (bare.get("/readyz").status_code, bare.get("/readyz").text) == (200, "ok")
    for client in (bare, monitored):
        assert (client.get("/livez").status_code, client.get("/livez").text) == (200, "ok")
        assert client.get("/livez?verbose").text == "[+]scheduler ok\nlivez check passed\n"


# -- /health ---------------------------------------------------------------------------------------


def test_health_reports_every_check_with_its_last_success_and_remedy(services: Services, monitor: HealthMonitor) -> None:
    monitor.run("database")
    monitor.run("stripe")

    response = client_for(services, monitor).get("/health")

    body = response.json()
    assert response.status_code == 200  # no critical check fails: s3 has not run yet, stripe is not critical
    assert body["status"] == "failing"  # stripe's failure, as `healer check` would say
    assert list(body["checks"]) == ["database", "s3", "stripe"]
    database, s3, stripe = (body["checks"][n] for n in ("database", "s3", "stripe"))
    assert database["status"] == "ok" and database["last_success"] == database["checked_at"]
    assert database["latency_seconds"] >= 0 and database["critical"] is True
    assert s3["status"] == "pending" and s3["detail"] == "not run yet" and s3["last_success"] is None
    assert stripe["status"] == "failing" and stripe["remedy"] == "fix the peer"
    assert stripe["runbook"] == "-" and stripe["last_success"] is None and stripe["critical"] is False


def test_health_status_is_failing_when_a_non_critical_check_fails_as_healer_check_says(
    services: Services, monitor: HealthMonitor
) -> None:
    monitor.run_all()

    response = client_for(services, monitor).get("/health")

    assert (response.status_code, response.json()["status"]) == (200, "failing")
    assert response.json()["checks"]["stripe"]["critical"] is False


def test_health_is_503_with_the_same_report_while_a_critical_check_fails(
    services: Services, monitor: HealthMonitor, s3: Peer
) -> None:
    monitor.run_all()
    client = client_for(services, monitor)
    s3.set(Status.FAILING, "access denied: list s3://shop/healthcheck/")
    monitor.run("s3")

    failing = client.get("/health")
    head = client.head("/health")
    readyz = client.get("/readyz")
    s3.set(Status.OK, "fine")
    monitor.run("s3")
    recovered = client.get("/health")

    assert failing.status_code == 503 and head.status_code == 503 and readyz.status_code == 503
    assert failing.headers["cache-control"] == "no-store"
    body = failing.json()
    assert body["status"] == "failing" and set(body) == {"status", "checks", "notices"}
    assert body["checks"]["s3"]["status"] == "failing" and body["checks"]["s3"]["critical"] is True
    assert body["checks"]["s3"]["detail"] == "access denied: list s3://shop/healthcheck/"
    assert recovered.status_code == 200 and recovered.json()["checks"]["s3"]["status"] == "ok"


def test_health_shows_each_new_result_at_once_though_it_keeps_its_body_between_them(
    services: Services, monitor: HealthMonitor, s3: Peer
) -> None:
    # /health keeps its rendered body until the monitor records a result: no answer may be one
    # result behind, whichever way the status goes, nor keep a probe's earlier figures.
    monitor.run_all()
    client = client_for(services, monitor)

    def after_run(name: str) -> tuple[dict[str, Any], int, dict[str, Any]]:
        """Run one check; what the monitor then reports of it, and the /health answered next."""
        monitor.run(name)
        reported = json.loads(json.dumps(monitor.report(name).as_dict()))  # as the body has it
        response = client.get("/health")
        return reported, response.status_code, response.json()

    steady = client.get("/health").json()
    s3.set(Status.FAILING, "access denied: list s3://shop/healthcheck/")
    failing, failing_code, failing_body = after_run("s3")  # failure_threshold=1: failing at once
    s3.set(Status.OK, "fine")
    recovered, recovered_code, recovered_body = after_run("s3")
    stripe, _, stripe_body = after_run("stripe")  # failing again (not critical): one more failure in a row

    assert steady["checks"]["s3"]["status"] == "ok"
    assert failing["status"] == "failing" and failing["consecutive_failures"] == 1
    assert (failing_code, failing_body["status"], failing_body["checks"]["s3"]) == (503, "failing", failing)
    assert recovered["status"] == "ok" and recovered["consecutive_failures"] == 0
    assert (recovered_code, recovered_body["checks"]["s3"]) == (200, recovered)
    assert (stripe["status"], stripe["consecutive_failures"]) == ("failing", 2)
    assert stripe_body["checks"] == {**recovered_body["checks"], "stripe": stripe}


def test_health_answers_like_readyz_on_critical_failures_but_not_before_the_first_run(
    services: Services, monitor: HealthMonitor, s3: Peer
) -> None:
    client = client_for(services, monitor)
    s3.set(Status.FAILING, "no such bucket")

    before = client.get("/health")  # not checked yet: not ready, but nothing is failing
    monitor.run_all()
    after = client.get("/health")
    excluded = client.get("/readyz", params=[("exclude", "s3")])

    assert before.status_code == 200 and before.json()["checks"]["s3"]["status"] == "pending"
    assert client.get("/readyz").status_code == 503
    assert after.status_code == 503
    assert excluded.status_code == 200  # /readyz can be told to look away; /health reports everything


def test_health_of_one_check_and_404_for_unknown_names(services: Services, monitor: HealthMonitor) -> None:
    monitor.run_all()
    client = client_for(services, monitor)

    one = client.get("/health/s3")
    unknown = client.get("/health/docker")

    assert one.status_code == 200 and one.json()["name"] == "s3" and one.json()["status"] == "ok"
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == "unknown check 'docker'; checks here: database, s3, stripe"


def test_health_without_a_monitor_is_empty(services: Services) -> None:
    assert client_for(services, None).get("/health").json() == {"status": "ok", "checks": {}, "notices": []}


# -- a hung peer -----------------------------------------------------------------------------------


def test_a_hung_probe_does_not_delay_readyz_or_health(services: Services, sendgrid_server: SendGridServer) -> None:
    check = SendGridCheck(api_key=sendgrid_server.api_key, from_email="posters@shop.example",
                          api_base=sendgrid_server.url, timeout_seconds=2.0, critical=True)
    monitor = HealthMonitor([check])
    assert monitor.run("sendgrid").status is Status.OK
    client = client_for(services, monitor)
    sendgrid_server.set_hang(True)
    probe = threading.Thread(target=monitor.run, args=("sendgrid",))
    probe_started = time.monotonic()
    probe.start()
    eventually(lambda: sendgrid_server.held == 1, what="the probe's request to be held by the hung server")

    timings = []
    for path in ("/readyz", "/readyz?verbose", "/health", "/health/sendgrid") * 5:
        started = time.monotonic()
        response = client.get(path)
        timings.append(time.monotonic() - started)
        assert response.status_code == 200, (path, response.text)
    answered_by = time.monotonic() - probe_started
    probe.join(10)
    sendgrid_server.set_hang(False)

    assert probe.is_alive() is False and time.monotonic() - probe_started >= 2.0
    assert answered_by < 2.0, "an endpoint waited for the probe"
    assert max(timings) < 0.5, f"slowest answer {max(timings):.3f}s while the probe hung"
    report = monitor.report("sendgrid")
    assert report.raw is not None and "no answer within 2s" in report.raw.detail
    assert report.result is not None and report.result.status is Status.OK  # one blip: held


# -- secrets ---------------------------------------------------------------------------------------


def test_no_configured_secret_appears_in_any_health_body(
    tmp_path: Path, pg_url: str, s3_bucket: MotoBucket, sendgrid_server: SendGridServer,
    stripe_server: FakeStripeServer,
) -> None:
    setup = configured(tmp_path, pg_url, s3_bucket, sendgrid_server, stripe_server)
    services = Services.build(setup.settings)
    try:
        monitor = build_monitor(setup.settings, services)
        client = client_for(services, monitor)
        bodies = []
        for broken in (False, True):
            if broken:
                sendgrid_server.set_key_valid(False)
                stripe_server.revoke_key(stripe_server.api_key)
                monitor.run_all()
            monitor.run_all()
            paths = ["/health", "/readyz?verbose", "/readyz", *[f"/health/{n}" for n in monitor.names]]
            bodies += [client.get(path).text for path in paths]
    finally:
        services.close()

    assert '"sendgrid":{"name":"sendgrid","status":"failing"' in bodies[-len(paths)]
    leaked = [secret for secret in setup.secrets if any(secret in body for body in bodies)]
    assert leaked == []


@pytest.mark.parametrize("forged", ["\n[+]fake ok", "s3\n[+]fake ok", 'nope"\n[+]x ok', "[+]s3", "nope", "S3", ""])
def test_readyz_refuses_an_exclude_that_is_no_check_name_and_forges_no_line(
    services: Services, monitor: HealthMonitor, forged: str
) -> None:
    monitor.run_all()

    response = client_for(services, monitor).get("/readyz", params=[("verbose", ""), ("exclude", forged)])

    assert response.status_code == 422 and response.headers["content-type"] == "application/json"
    assert not [line for line in response.text.splitlines() if line.startswith("[")]  # no probe line at all
    assert "not a check of this daemon; its checks: database, s3, stripe" in response.text


def test_readyz_refuses_verbose_given_twice(services: Services, monitor: HealthMonitor) -> None:
    response = client_for(services, monitor).get("/readyz", params=[("verbose", "1"), ("verbose", "\n[+]x")])

    assert response.status_code == 422
