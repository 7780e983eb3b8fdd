"""A real Prometheus (Debian's `prometheus`) scraping a running `healer run` that has completed,
failed, retried and given up on orders: every dashboard query and every alert expression is valid
PromQL and returns data, and alerts reach the firing state.

Prometheus scrapes every second and evaluates a copy of dashboards/prometheus/alerts.yml whose
`for:` durations are shortened to FAST_FOR (expressions, labels and annotations unchanged), so
the test waits seconds, not the minutes the real rules wait.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dashboards import (
    ALERTS,
    Selector,
    dashboard_queries,
    require_tool,
    selectors,
    substitute_variables,
)
from tests.e2e.daemon import RunningDaemon, healer_env, running_daemon
from tests.eventually import eventually
from tests.fakes.ports import free_port
from tests.fakes.shop_fixtures import Shop
from tests.fakes.subprocesses import terminate

FAST_FOR = "1s"

# Metrics that have no series yet in this test, with the reason. A query reading one of these is
# only required to be valid PromQL (status success), not to return data.
#
# AWAITING_WIRING: what the daemon does not export yet, as a metric name (every selector of it) or
# a selector (`healer_check_up{check="disk"}`: selectors of that metric with at least these
# matchers). When the daemon does export it, this test fails and says so: delete the entry, and
# the queries (and, for healer_check_up, the failing-check alert) are asserted for real.
AWAITING_WIRING: dict[str, str] = {
    # e.g. 'healer_check_up{check="docker"}': "the docker check is not wired into the daemon yet",
}
# NOT_EXERCISED_HERE: exported, but nothing in this test makes them count, and counters with
# labels that are not known up front only appear once they count.
NOT_EXERCISED_HERE: dict[str, str] = {
    "healer_remediations_total": "no remediation is taken in this test (the action labels appear when one is)",
    "healer_webhook_events_total": "no Stripe webhook is delivered in this test (type labels appear with the first event)",
    'healer_http_requests_total{code=~"5.."}': "no request gets a server error in this test (code labels appear "
                                              "with the first answer of that code)",
}
# What the daemon is told its runbook's base is: the alerts' runbook_url must start with it.
RUNBOOK_BASE_URL = "http://ops.shop.example:8081/runbook"


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as error:  # 400/422: a bad query, with Prometheus's reason
            body = error.read().decode(errors="replace")
            try:
                return dict(json.loads(body))
            except ValueError:  # 503 "Service Unavailable" in plain text while its storage starts
                return {"status": "error", "error": f"{error.code} {body.strip()}"}

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def value(self, expr: str) -> float | None:
        answer = self.query(expr)
        result = answer.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if answer.get("status") == "success" and result else None

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["data"]["alerts"] if a["labels"]["alertname"] == name]


def fast_rules(path: Path) -> Path:
    """alerts.yml with every `for:` shortened to FAST_FOR."""
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FAST_FOR
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@pytest.fixture
def daemon(shop_env: dict[str, str], tmp_path: Path) -> Iterator[RunningDaemon]:
    env = healer_env(
        shop_env,
        HEALER_CHECK_INTERVAL_SECONDS="1",
        HEALER_RETRY_BASE_SECONDS="0",  # a failed attempt is retried on the next worker tick
        HEALER_RETRY_MAX_SECONDS="0",
        HEALER_MAX_ATTEMPTS="3",
        HEALER_RUNBOOK_BASE_URL=RUNBOOK_BASE_URL,
        # The canary's first run comes one interval after start: after the orders below have met
        # the one failing SendGrid answer they count on, and well within the test.
        HEALER_CANARY_INTERVAL_SECONDS="20",
    )
    with running_daemon(env, tmp_path / "daemon.log") as running:
        yield running


@pytest.fixture
def prometheus(daemon: RunningDaemon, tmp_path: Path) -> Iterator[Prometheus]:
    binary = require_tool("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(fast_rules(tmp_path / "alerts_fast.yml"))],
        "scrape_configs": [{"job_name": "healer", "static_configs": [
            {"targets": [daemon.ops_url.removeprefix("http://")]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    server = Prometheus(process, f"http://127.0.0.1:{port}", log_path)

    def scraping() -> bool:
        assert process.poll() is None, f"prometheus exited:\n{log_path.read_text()}"
        try:
            return server.value('up{job="healer"}') == 1.0
        except OSError:
            return False

    eventually(scraping, timeout=30, what="Prometheus to scrape the daemon")
    yield server
    terminate(process)


_MATCHER = re.compile(r"""(\w+)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")""")


def _reads(selector: Selector, entry: str) -> bool:
    """Whether `selector` reads what an AWAITING_WIRING / NOT_EXERCISED_HERE entry names."""
    wanted = selectors(entry)[0]
    return selector.metric == wanted.metric and set(_MATCHER.findall(wanted.matchers)) <= set(
        _MATCHER.findall(selector.matchers))


def awaited(expr: str) -> list[str]:
    """The AWAITING_WIRING entries that `expr` reads."""
    return sorted({entry for entry in AWAITING_WIRING for sel in selectors(expr) if _reads(sel, entry)})


def pending_reason(expr: str) -> str | None:
    for entry, reason in (AWAITING_WIRING | NOT_EXERCISED_HERE).items():
        if any(_reads(selector, entry) for selector in selectors(expr)):
            return f"{entry}: {reason}"
    return None


def problems_with(prometheus: Prometheus, label: str, expr: str, *, data_due: bool = True) -> list[str]:
    """Why `expr` fails: not valid, or no data where data is due; also stale AWAITING_WIRING entries."""
    answer = prometheus.query(expr)
    if answer.get("status") != "success":
        return [f"{label}: {answer.get('error')} in {expr}"]
    has_data = bool(answer["data"]["result"])
    waiting = awaited(expr)
    if has_data and waiting:
        return [f"{label}: {waiting} now has data: remove it from AWAITING_WIRING in {__name__}"]
    if data_due and not has_data and pending_reason(expr) is None:
        return [f"{label}: no data for {expr}"]
    return []


@pytest.mark.slow  # ~30 s: waits on Prometheus' scrapes and alert evaluation
def test_every_dashboard_query_and_alert_expression_works_against_a_live_daemon(
    shop: Shop, daemon: RunningDaemon, prometheus: Prometheus
) -> None:
    # Completed orders; one email that fails once (503) and succeeds on retry; one order with a
    # corrupt photo, which is not retryable and ends in needs_attention.
    shop.sendgrid.fail_next(503, path="/v3/mail/send")  # not the sendgrid check's requests
    completed = [shop.paid_order() for _ in range(3)]
    corrupt = shop.paid_order(photo=b"\xff\xd8\xff this is not really a JPEG")

    eventually(lambda: all(shop.order(o).status == "completed" for o in completed),
               timeout=60, what="the orders to complete")
    eventually(lambda: shop.order(corrupt).status == "needs_attention", timeout=30, what="the corrupt order to give up")
    # Customers look at their orders and follow their download links: the public listener's counts.
    for order_id in completed:
        order = shop.order(order_id)
        assert daemon.request("GET", f"/api/orders/{order_id}", {"X-Session-Token": str(order.session_token)})[0] == 200
        assert daemon.request("GET", f"/download/{order.download_token}")[0] == 307
    # Order figures are cached for up to 15 s in the daemon; the counters are current at once.
    eventually(lambda: prometheus.value('healer_orders{status="needs_attention"}') == 1.0
               and prometheus.value('healer_order_completions_total{outcome="completed"}') == 3.0
               and (prometheus.value('sum(healer_order_step_failures_total{error_class="email_transient"})') or 0) >= 1,
               timeout=40, what="Prometheus to see the orders' outcomes")

    eventually(lambda: prometheus.value("healer_canary_last_success_timestamp_seconds") is not None,
               timeout=60, what="Prometheus to see the canary pass")

    problems = []
    for query in dashboard_queries():
        problems += problems_with(prometheus, str(query), substitute_variables(query.expr))
    for rule in yaml.safe_load(ALERTS.read_text())["groups"]:
        for alert in rule["rules"]:
            # A quiet alert's expression has no result: it must be valid, and every series it reads
            # must exist, with the labels it selects on.
            problems += problems_with(prometheus, f"alert {alert['alert']}", alert["expr"], data_due=False)
            for selector in selectors(alert["expr"]):
                problems += problems_with(prometheus, f"alert {alert['alert']} reads", str(selector))
    assert problems == [], "\n".join(problems)
    # Every check that has run has a series per status, exactly one of them 1.
    assert prometheus.query('count by (instance, check) (healer_check_status{job="healer"}) != 5')["data"]["result"] == []
    assert prometheus.query('sum by (instance, check) (healer_check_status{job="healer"}) != 1')["data"]["result"] == []

    # Alerts evaluate against the live data and reach the firing state, annotations rendered.
    eventually(lambda: any(a["state"] == "firing" for a in prometheus.alerts("HealerOrdersNeedAttention")),
               timeout=20, what="HealerOrdersNeedAttention to fire")
    firing = prometheus.alerts("HealerOrdersNeedAttention")[0]
    assert firing["labels"]["severity"] == "warning"
    assert firing["annotations"]["summary"] == "1 order(s) need an operator"
    # The link's base is what the daemon was configured with, read from healer_runbook_info.
    assert firing["annotations"]["runbook_url"] == f"{RUNBOOK_BASE_URL}#healerordersneedattention"
    rules = {r["name"]: r for g in prometheus.api("rules")["data"]["groups"] for r in g["rules"]}
    assert {name: r["health"] for name, r in rules.items() if r["health"] != "ok"} == {}

    if "healer_check_up" in AWAITING_WIRING:
        return  # the failing-check alert below needs the checks wired into the daemon
    shop.sendgrid.set_key_valid(False)  # the key is revoked: the sendgrid check fails
    eventually(lambda: any(a["state"] == "firing" and a["labels"].get("check") == "sendgrid"
                           for a in prometheus.alerts("HealerCheckFailing")),
               timeout=30, what="HealerCheckFailing for the sendgrid check to fire")
    [sendgrid] = [a for a in prometheus.alerts("HealerCheckFailing") if a["labels"].get("check") == "sendgrid"]
    assert sendgrid["annotations"]["runbook_url"] == f"{RUNBOOK_BASE_URL}#check-sendgrid"
