"""The Grafana dashboards: provisioned files on a fixed datasource uid, laid out on Grafana's grid,
and reading only metrics that the design (docs/design.md) names and the daemon's code exports."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.dashboards import (  # noqa: F401 (exported is a fixture)
    DATASOURCE_UID,
    GRAFANA_DASHBOARDS_DIR,
    PROVISIONING,
    REPO,
    Selector,
    dashboard_files,
    dashboard_queries,
    design_family,
    design_metric_names,
    exported,
    load_dashboard,
    metric_names,
    panels,
    require_tool,
    run_tool,
    selectors,
    substitute_variables,
    unexported_metrics,
)


def test_the_reader_finds_selectors_and_skips_functions_labels_and_strings() -> None:
    expr = ('sum by (step, error_class) (rate(healer_order_step_failures_total{step="a}b"}[$__rate_interval]))'
            ' / on (step) group_left sum without (le) (rate(healer_order_step_duration_seconds_count[5m]))'
            ' and label_replace(up{job="healer"}, "dst", "$1", "src", "(.*)") unless healer_orders offset 5m'
            ' > bool 1.5e3')

    assert selectors(expr) == [
        Selector("healer_order_step_failures_total", '{step="a}b"}'),
        Selector("healer_order_step_duration_seconds_count"),
        Selector("up", '{job="healer"}'),
        Selector("healer_orders"),
    ]


def test_there_is_an_overview_and_a_resources_dashboard() -> None:
    uids = {load_dashboard(path)["uid"] for path in dashboard_files()}

    assert uids == {"healer-overview", "healer-resources"}


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.stem)
def test_every_panel_and_variable_uses_the_fixed_datasource_uid(path: Path) -> None:
    board = load_dashboard(path)
    wrong = []
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        if panel.get("datasource", {}).get("uid") != DATASOURCE_UID:
            wrong.append(f"panel {panel['title']!r}")
        wrong += [f"panel {panel['title']!r} target {t['refId']}" for t in panel["targets"]
                  if t.get("datasource", {}).get("uid") != DATASOURCE_UID]
        if not panel["targets"]:
            wrong.append(f"panel {panel['title']!r} has no query")
    for variable in board["templating"]["list"]:
        if variable.get("datasource", {}).get("uid") != DATASOURCE_UID:
            wrong.append(f"variable {variable['name']}")

    assert wrong == []


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.stem)
def test_panels_have_unique_ids_and_do_not_overlap_on_the_grid(path: Path) -> None:
    board = load_dashboard(path)
    ids = [p["id"] for p in panels(board)]
    cells: dict[tuple[int, int], str] = {}
    overlaps = []
    for panel in panels(board):
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                if (x, y) in cells:
                    overlaps.append(f"{panel['title']!r} overlaps {cells[(x, y)]!r}")
                cells[(x, y)] = panel["title"]

    assert len(ids) == len(set(ids))
    assert sorted(set(overlaps)) == []
    assert all(p.get("description") for p in panels(board) if p["type"] != "row"), "every panel says what it shows"


def test_every_query_reads_only_metrics_the_design_names_and_the_daemon_exports(exported: set[str]) -> None:  # noqa: F811
    assert unexported_metrics(dashboard_queries(), exported) == []


def test_every_exported_metric_of_the_design_is_on_a_dashboard(exported: set[str]) -> None:  # noqa: F811
    design = design_metric_names()
    shown = {design_family(name, design) for query in dashboard_queries() for name in metric_names(query.expr)}
    # The design names metrics that later work adds (the canary, HTTP requests, leaders): each must
    # reach a dashboard in the change that first exports it, which is when this test sees it.
    exported_families = {design_family(name, design) for name in exported} - {None}

    assert exported_families - shown == set()


def test_the_daemon_exports_no_healer_metric_the_design_does_not_name(exported: set[str]) -> None:  # noqa: F811
    design = design_metric_names()

    # `_created` samples are the client's timestamps of counters and histograms, not metrics of ours.
    ours = {name for name in exported if name.startswith("healer_") and not name.endswith("_created")}

    assert {name for name in ours if design_family(name, design) is None} == set()


def test_the_overview_and_resources_views_show_what_the_issue_asks_for() -> None:
    by_board: dict[str, str] = {}
    for query in dashboard_queries():
        by_board[query.dashboard] = by_board.get(query.dashboard, "") + "\n" + query.expr
    overview, resources = by_board["healer-overview"], by_board["healer-resources"]

    for needle in ('healer_check_status{job="healer", instance=~"$instance", status="warning"}', "healer_check_up",
                   'sum by (code) (rate(healer_http_requests_total{job="healer", instance=~"$instance", listener="public"}',
                   "by (step, error_class) (rate(healer_order_step_failures_total",
                   "by (outcome) (rate(healer_order_completions_total", "healer_orders_stuck",
                   "healer_oldest_stuck_order_age_seconds",
                   "histogram_quantile(0.99, sum by (le) (rate(healer_order_completion_latency_seconds_bucket",
                   "healer_reconcile_runs_total", "healer_reconcile_last_success_timestamp_seconds",
                   "healer_orphan_payments", "healer_remediations_total", "healer_webhook_events_total"):
        assert needle in overview, needle
    for needle in ('check="disk", status="warning"', 'check="memory", status="warning"',
                   'check="docker", status="warning"', "process_resident_memory_bytes",
                   "rate(process_cpu_seconds_total", "process_open_fds", "process_max_fds",
                   "process_start_time_seconds"):
        assert needle in resources, needle


def test_promtool_accepts_every_query_as_promql(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard-queries", "rules": [
        {"record": f"dashboard_query_{n}", "expr": substitute_variables(q.expr)} for n, q in enumerate(queries)]}]}
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules))

    result = run_tool([promtool, "check", "rules", str(path)])

    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards_directory() -> None:
    datasources = [d for f in sorted((PROVISIONING / "datasources").glob("*.yml"))
                   for d in yaml.safe_load(f.read_text())["datasources"]]
    providers = [p for f in sorted((PROVISIONING / "dashboards").glob("*.yml"))
                 for p in yaml.safe_load(f.read_text())["providers"]]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    grafana_mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])

    prometheus = next(d for d in datasources if d["uid"] == DATASOURCE_UID)
    assert prometheus["type"] == "prometheus" and prometheus["url"] == "http://prometheus:9090"
    assert [p["options"]["path"] for p in providers] == [grafana_mounts["./dashboards/grafana/dashboards"]]
    assert grafana_mounts["./dashboards/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert GRAFANA_DASHBOARDS_DIR == REPO / "dashboards/grafana/dashboards"
