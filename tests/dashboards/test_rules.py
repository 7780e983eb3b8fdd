"""The Prometheus alert rules: valid for promtool, unit-tested firing and quiet, annotated with a
runbook that exists in docs/operations.md, and reading only metrics the daemon exports."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from checks.registry import CHECK_NAMES
from fulfilment.errors import ErrorClass
from tests.dashboards import (  # noqa: F401 (exported is a fixture)
    ALERTMANAGER_CONFIG,
    ALERTS,
    ALERTS_TEST,
    OPERATIONS_DOC,
    RUNBOOK_PREFIX,
    PanelQuery,
    alert_rules,
    exported,
    require_tool,
    run_tool,
    selectors,
    unexported_metrics,
)

RUNBOOK_ISSUES = ("runbook-1-s3-permission-denied", "runbook-2-s3-files-missing",
                  "runbook-3-pdf-generation-failing", "runbook-4-email-sending-failing",
                  "runbook-5-database-error", "runbook-6-memory-and-resource-issues")

# What issues 5, 16 and 19 ask the rules to watch, by the alert that does it.
REQUIRED_ALERTS = {
    "HealerDown": 'up{job="healer"} == 0',
    "HealerNotScraped": 'absent(up{job="healer"})',
    "HealerDatabaseDown": 'healer_check_status{check="database", status="failing"} == 1',
    "HealerCheckFailing": 'healer_check_status{check!~"database|disk|memory|docker|orders", status="failing"} == 1',
    "HealerCheckWarning": 'healer_check_status{check!~"disk|memory|docker|orders", status="warning"} == 1',
    "HealerCompletionsFailing": "healer_order_step_failures_total",
    "HealerOrdersStuck": "healer_orders_stuck",
    "HealerOrderStuckForAnHour": "healer_oldest_stuck_order_age_seconds",
    "HealerOrdersNeedAttention": 'healer_orders{status="needs_attention"}',
    "HealerReconcileNotRun": "time() - ",
    "HealerReconcileMetricAbsent": "absent(healer_reconcile_last_success_timestamp_seconds",
    "HealerOrphanPayments": "healer_orphan_payments",
    "HealerWebhooksMissing": "healer_webhook_missed_runs_in_a_row) >= 2",  # issue 16: two runs in a row
    "HealerDiskLow": 'healer_check_status{check="disk", status=~"warning|failing"}',
    "HealerDiskFull": 'healer_check_status{check="disk", status="failing"} == 1',
    "HealerMemoryLow": 'healer_check_status{check="memory", status=~"warning|failing"}',
    "HealerMemoryExhausted": 'healer_check_status{check="memory", status="failing"} == 1',
    "HealerProcessMemoryHigh": "process_resident_memory_bytes",
    "HealerContainerRestartLoop": 'healer_check_status{check="docker", status=~"warning|failing"}',
    "HealerOrdersCheckFailing": 'healer_check_status{check="orders", status=~"warning|failing"}',
    "HealerJobNotSucceeding": "healer_job_last_success_timestamp_seconds",
    "HealerPublicServerErrors": 'healer_http_requests_total{listener="public", code=~"5.."}',
    # issue 16: twice in a row, and for three intervals, at whatever interval the shop configured
    "HealerCanaryFailing": "healer_canary_failed_runs_in_a_row) >= 2",
    "HealerCanaryNotSucceeded": "> 3 * max by (job) (last_over_time(healer_canary_interval_seconds[1d]))",
}
# Each "warning or failing" alert, and the critical alert that pages on the failure.
ESCALATIONS = {"HealerDiskLow": "HealerDiskFull", "HealerMemoryLow": "HealerMemoryExhausted"}


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def doc_anchors() -> set[str]:
    return {github_anchor(line.lstrip("#")) for line in OPERATIONS_DOC.read_text().splitlines()
            if line.startswith("#")}


def seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", duration))


def rule(name: str) -> dict[str, Any]:
    return next(r for r in alert_rules() if r["alert"] == name)


def test_promtool_check_rules_accepts_the_rules() -> None:
    result = run_tool([require_tool("promtool"), "check", "rules", str(ALERTS)])

    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = run_tool([require_tool("promtool"), "test", "rules", str(ALERTS_TEST)])

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_the_issue_asks_for_exists_and_reads_what_it_should() -> None:
    missing = {name: needle for name, needle in REQUIRED_ALERTS.items()
               if not any(r["alert"] == name and needle in r["expr"] for r in alert_rules())}

    assert missing == {}


@pytest.mark.parametrize("alert", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_has_severity_summary_description_and_runbook(alert: dict[str, Any]) -> None:
    assert alert["labels"]["severity"] in ("critical", "warning")
    assert set(alert["annotations"]) == {"summary", "description", "runbook_url"}
    assert all(value.strip() for value in alert["annotations"].values())
    assert alert["annotations"]["runbook_url"].startswith(RUNBOOK_PREFIX)


@pytest.mark.parametrize("alert", alert_rules(), ids=lambda r: r["alert"])
def test_every_runbook_url_points_at_a_heading_of_the_operations_doc(alert: dict[str, Any]) -> None:
    anchor = alert["annotations"]["runbook_url"].removeprefix(RUNBOOK_PREFIX)
    # A per-check runbook is templated on the alert's `check` label: every check needs its section.
    expanded = {anchor.replace("{{ $labels.check }}", check) for check in CHECK_NAMES}

    assert expanded - doc_anchors() == set()
    assert alert["alert"].lower() in doc_anchors(), "every alert has a section of its own too"


def test_the_runbook_base_is_unit_tested_both_exported_and_absent() -> None:
    urls = {annotation for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
            for case in test["alert_rule_test"] for alert in case.get("exp_alerts") or []
            for name, annotation in alert["exp_annotations"].items() if name == "runbook_url"}

    assert any(url.startswith("http://ops.shop.example/runbook#") for url in urls), "from healer_runbook_info"
    assert any(url.startswith("https://github.com/shop/healer/blob/main/docs/operations.md#") for url in urls)


def check_status_matchers(alert: dict[str, Any]) -> list[str]:
    """The `status` matcher of every healer_check_status selector the alert reads ("" for none)."""
    return [next(iter(re.findall(r'status\s*(=~?\s*"[^"]*")', s.matchers)), "")
            for s in selectors(alert["expr"]) if s.metric == "healer_check_status"]


def test_no_alert_reads_check_up_which_cannot_tell_a_warning_from_a_failure() -> None:
    assert [r["alert"] for r in alert_rules() if "healer_check_up" in r["expr"]] == []


@pytest.mark.parametrize("alert", [r for r in alert_rules() if "healer_check_status" in r["expr"]],
                         ids=lambda r: r["alert"])
def test_check_alerts_select_the_statuses_they_mean_and_only_failures_page(alert: dict[str, Any]) -> None:
    matchers = check_status_matchers(alert)

    assert matchers and all(matchers), "a check alert names the statuses it means"
    assert not [m for m in matchers if "disabled" in m or "skipped" in m or "ok" in m]
    if alert["labels"]["severity"] == "critical":
        assert matchers == ['="failing"']
    if "|" in "".join(matchers):  # several statuses: one series, so a change of status is no new alert
        assert alert["expr"].startswith("max without (status) (")


def test_every_warning_or_failing_alert_is_inhibited_by_the_page_for_the_failure() -> None:
    rules = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["inhibit_rules"]
    pairs = {(r["source_matchers"][0], r["target_matchers"][0]) for r in rules}

    for warning, critical in ESCALATIONS.items():
        assert (rule(warning)["labels"]["severity"], rule(critical)["labels"]["severity"]) == ("warning", "critical")
        assert (f'alertname="{critical}"', f'alertname="{warning}"') in pairs


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    cases = [case for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for case in test["alert_rule_test"]]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    names = {r["alert"] for r in alert_rules()}

    assert names - firing == set(), "alerts with no test showing them fire"
    assert names - quiet == set(), "alerts with no test showing them stay quiet"


def test_absence_alerts_wait_long_enough_to_survive_a_restart() -> None:
    absence = [r for r in alert_rules() if "absent(" in r["expr"] or " unless " in r["expr"]]

    assert {r["alert"] for r in absence} >= {"HealerNotScraped", "HealerReconcileMetricAbsent"}
    assert {r["alert"]: r["for"] for r in absence if seconds(r["for"]) < 600} == {}


def test_ratio_alerts_require_traffic_before_they_divide() -> None:
    ratios = [r for r in alert_rules() if re.search(r"\)\s*/\s*", r["expr"])]

    assert [r["alert"] for r in ratios] == ["HealerCompletionsFailing", "HealerPublicServerErrors"]
    assert re.search(r"\band\b\s*sum by \(job, step\) \(increase\(healer_order_step_duration_seconds_count\[10m\]\)\) >= 3",
                     rule("HealerCompletionsFailing")["expr"])
    assert re.search(r'\band\b\s*sum by \(job\) \(increase\(healer_http_requests_total\{listener="public"\}\[10m\]\)\) >= 10',
                     rule("HealerPublicServerErrors")["expr"])


def test_alert_expressions_read_only_metrics_the_daemon_exports(exported: set[str]) -> None:  # noqa: F811
    queries = [PanelQuery("alerts.yml", r["alert"], "expr", r["expr"]) for r in alert_rules()]

    assert unexported_metrics(queries, exported) == []


def test_the_operations_doc_covers_every_check_alert_and_runbook_issue() -> None:
    anchors = doc_anchors()
    text = OPERATIONS_DOC.read_text()
    table = text[text.index("## Error classes"):text.index("## Re-queueing orders")]

    assert {f"check-{name}" for name in CHECK_NAMES} - anchors == set()
    assert {r["alert"].lower() for r in alert_rules()} - anchors == set()
    assert set(RUNBOOK_ISSUES) - anchors == set()
    assert {c.value for c in ErrorClass} - set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE)) == set()
    assert "healer orders retry --all" in text
    for link in set(re.findall(r"\]\(#([\w-]+)\)", text)):
        assert link in anchors, f"broken link #{link}"
