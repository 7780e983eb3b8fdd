"""Alertmanager's inhibition rules match the dependencies the code declares: while a dependency's
alert fires, every alert of what depends on it (a check, a scheduled job) is inhibited, and nothing
else is. Checked in a real Alertmanager (Debian's `prometheus-alertmanager`) running
dashboards/alertmanager/alertmanager.yml: alerts are posted to its API and their `inhibitedBy` read
back. The dependencies are read from a daemon built as `healer run` builds it."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from healer.config import Settings
from healer.daemon import Daemon
from tests.dashboards import ALERTMANAGER_CONFIG, require_tool
from tests.eventually import Unmet, eventually
from tests.fakes.ports import free_port

# Per-daemon alerts carry an instance; fleet-wide ones (max by job) only the job. Each dependency is
# tried in a scope of its own (a job and an instance label), because Alertmanager names only the
# first alert that inhibits another, and the scheduler check, say, depends on two.
DAEMON = "daemon"  # placeholder for the scope's instance
# The alert a failing check raises, by check (alerts.yml); any other check: HealerCheckFailing.
CHECK_ALERTS = {"database": "HealerDatabaseDown", "orders": "HealerOrdersCheckFailing", "disk": "HealerDiskFull",
                "memory": "HealerMemoryExhausted", "docker": "HealerContainerRestartLoop"}
# Alerts about one job besides HealerJobNotSucceeding: per daemon, or over the fleet.
JOB_ALERTS = {"worker": [{"alertname": "HealerJobNeverSucceeded", "instance": DAEMON}],
              "reconcile": [{"alertname": "HealerReconcileNotRun"}],
              "canary": [{"alertname": "HealerCanaryFailing", "instance": DAEMON}, {"alertname": "HealerCanaryNotSucceeded"}]}


def check_alert(check: str) -> dict[str, str]:
    return {"alertname": CHECK_ALERTS.get(check, "HealerCheckFailing"), "check": check, "instance": DAEMON}


def job_alerts(job: str) -> list[dict[str, str]]:
    return [{"alertname": "HealerJobNotSucceeding", "exported_job": job, "instance": DAEMON}, *JOB_ALERTS.get(job, [])]


def scoped(alert: dict[str, str], scope: str) -> dict[str, str]:
    return {**alert, "job": f"healer-{scope}", **({"instance": f"{scope}:8081"} if "instance" in alert else {})}


def declared_dependencies(tmp_path: Path) -> dict[str, list[dict[str, str]]]:
    """dependency check -> the alerts of its dependents, from a daemon as `healer run` builds it
    (with Stripe, so that reconciliation is scheduled)."""
    daemon = Daemon(Settings.from_env({"HEALER_DATA_DIR": str(tmp_path), "STRIPE_SECRET_KEY": "sk_test_inhibit",
                                       "STRIPE_WEBHOOK_SECRET": "whsec_inhibit"}))
    try:
        checks = {name: daemon.health.check(name).depends_on for name in daemon.health.names}
        jobs = {job.name: job.depends_on for job in daemon.scheduler.jobs() if not job.name.startswith("check:")}
    finally:
        daemon.shutdown()
    assert jobs.keys() == {"worker", "stuck", "reconcile", "canary"} and checks["orders"] == ("database",)
    # The scheduler check reports the jobs it watches as waiting: it depends on what they depend on.
    checks["scheduler"] = tuple(dict.fromkeys(d for deps in jobs.values() for d in deps))
    dependents: dict[str, list[dict[str, str]]] = {}
    for name, deps in checks.items():
        for dependency in deps:
            dependents.setdefault(dependency, []).append(check_alert(name))
    for name, deps in jobs.items():
        for dependency in deps:
            dependents.setdefault(dependency, []).extend(job_alerts(name))
    return dependents


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on the repository's configuration, alone (no cluster)."""
    port = free_port()
    process = subprocess.Popen(
        [require_tool("prometheus-alertmanager"), f"--config.file={ALERTMANAGER_CONFIG}",
         f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: _ready(url, process), timeout=30, interval=0.1, what="Alertmanager to be ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _ready(url: str, process: subprocess.Popen[str]) -> bool:
    assert process.poll() is None, f"Alertmanager exited: {process.stderr.read() if process.stderr else ''}"
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def post(url: str, alerts: list[dict[str, str]]) -> None:
    now = datetime.now(UTC)
    body = [{"labels": {"severity": "critical", **labels},
             "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat()} for labels in alerts]
    request = urllib.request.Request(f"{url}/api/v2/alerts", json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def held(url: str, count: int) -> dict[str, Any] | Unmet:
    """Every alert Alertmanager holds, by its labels (as a sorted JSON key), once it holds `count`."""
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
        alerts = json.loads(response.read())
    if len(alerts) < count:
        return Unmet(len(alerts))
    return {_key(a["labels"]): a for a in alerts}


def _key(labels: dict[str, str]) -> str:
    return json.dumps({k: v for k, v in labels.items() if k != "severity"}, sort_keys=True)


def test_a_dependencys_alert_inhibits_exactly_the_alerts_of_its_dependents(alertmanager: str, tmp_path: Path) -> None:
    dependents = declared_dependencies(tmp_path)
    # The canary depends on what every step does, and on the database.
    assert set(dependents) == {"database", "stripe", "s3", "assets", "disk", "memory", "sendgrid"}
    # In each dependency's scope: its alert, its dependents' alerts, and the alert of a check that
    # is nobody's dependency (not to be inhibited); in a control scope, every dependent without a source.
    unrelated = [check_alert("docker")]
    every_dependent = [a for alerts in dependents.values() for a in alerts]
    scopes = {dependency: [check_alert(dependency), *alerts, *unrelated] for dependency, alerts in dependents.items()}
    scopes["control"] = every_dependent
    posted = {_key(scoped(a, scope)): scoped(a, scope) for scope, alerts in scopes.items() for a in alerts}
    post(alertmanager, list(posted.values()))

    alerts = eventually(lambda: held(alertmanager, len(posted)), timeout=20, what="the posted alerts")
    assert isinstance(alerts, dict)

    def inhibitors(alert: dict[str, str], scope: str) -> list[str]:
        return list(alerts[_key(scoped(alert, scope))]["status"]["inhibitedBy"])

    for dependency, alerts_of_dependents in dependents.items():
        source = alerts[_key(scoped(check_alert(dependency), dependency))]["fingerprint"]
        assert inhibitors(check_alert(dependency), dependency) == [], f"{dependency}'s alert is the one alarm"
        for alert in alerts_of_dependents:
            assert inhibitors(alert, dependency) == [source], f"{alert} is not inhibited by {dependency}'s alert"
        for alert in unrelated:
            assert inhibitors(alert, dependency) == [], f"{alert} does not depend on {dependency}"
    for alert in every_dependent:
        assert inhibitors(alert, "control") == [], f"{alert} inhibited with no dependency failing"


def test_a_page_for_a_failure_silences_the_warning_that_said_it_first_and_customers_errors_of_a_db_outage(
    alertmanager: str,
) -> None:
    # In one scope the failures page; in a control scope only the warnings and the errors fire.
    failures = [{"alertname": "HealerDiskFull", "check": "disk", "status": "failing", "instance": DAEMON},
                {"alertname": "HealerMemoryExhausted", "check": "memory", "status": "failing", "instance": DAEMON},
                {"alertname": "HealerDatabaseDown", "check": "database", "status": "failing", "instance": DAEMON}]
    followers = [{"alertname": "HealerDiskLow", "check": "disk", "instance": DAEMON},
                 {"alertname": "HealerMemoryLow", "check": "memory", "instance": DAEMON},
                 {"alertname": "HealerPublicServerErrors"}]  # fleet-wide: no instance
    unrelated = [{"alertname": "HealerCheckWarning", "check": "stripe", "status": "warning", "instance": DAEMON}]
    scopes = {"failing": failures + followers + unrelated, "control": followers + unrelated}
    posted = [scoped(a, scope) for scope, alerts in scopes.items() for a in alerts]
    post(alertmanager, posted)

    alerts = eventually(lambda: held(alertmanager, len(posted)), timeout=20, what="the posted alerts")
    assert isinstance(alerts, dict)

    def inhibitors(alert: dict[str, str], scope: str) -> list[str]:
        return list(alerts[_key(scoped(alert, scope))]["status"]["inhibitedBy"])

    sources = [alerts[_key(scoped(alert, "failing"))]["fingerprint"] for alert in failures]
    assert [inhibitors(alert, "failing") for alert in followers] == [[source] for source in sources]
    assert [inhibitors(alert, "failing") for alert in failures + unrelated] == [[], [], [], []]
    assert [inhibitors(alert, "control") for alert in followers + unrelated] == [[], [], [], []]
