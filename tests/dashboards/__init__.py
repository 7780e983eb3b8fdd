"""What the dashboard, alert-rule and compose tests share (and tests/e2e/test_prometheus.py):
where the files are, the external tools (found, or the test fails saying how to install them),
the queries in the Grafana dashboards, and a small PromQL reader that lists the series selectors
and metric names an expression reads.

The reader is not a PromQL parser: it tokenises strings, label matchers, ranges and identifiers,
and knows which identifiers are functions, aggregations and keywords. That is enough for what the
tests ask (which metrics does this expression read, with which matchers), and `promtool` checks
the syntax for real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from sqlalchemy import Engine

from checks.base import Check
from fulfilment.models import utcnow
from healer import db
from healer.health.metrics import Metrics
from healer.health.monitor import HealthMonitor
from healer.http.observe import HttpMetrics
from healer.jobs.canary_results import CanaryRun, CanaryState, Phase, PhaseOutcome, PhaseResult
from healer.jobs.scheduler import JobState

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
GRAFANA_DASHBOARDS_DIR = DASHBOARDS / "grafana" / "dashboards"
PROVISIONING = DASHBOARDS / "grafana" / "provisioning"
PROMETHEUS_DIR = DASHBOARDS / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTMANAGER_CONFIG = DASHBOARDS / "alertmanager" / "alertmanager.yml"
OPERATIONS_DOC = REPO / "docs" / "operations.md"
DESIGN = REPO / "docs" / "design.md"  # the project's copy of the design contract

DATASOURCE_UID = "healer-prometheus"
# Every alert's runbook_url: the base the daemons export (HEALER_RUNBOOK_BASE_URL), else the
# repository's copy of the document, then `#` and the anchor of a heading of docs/operations.md.
RUNBOOK_QUERY = "max by (base_url) (last_over_time(healer_runbook_info[1d]))"
RUNBOOK_FALLBACK = "https://github.com/shop/healer/blob/main/docs/operations.md"
RUNBOOK_PREFIX = (f'{{{{ with query "{RUNBOOK_QUERY}" }}}}{{{{ (. | first).Labels.base_url }}}}'
                  f"{{{{ else }}}}{RUNBOOK_FALLBACK}{{{{ end }}}}#")

# Series Prometheus makes itself for every target; dashboards may read them beside the daemon's.
PROMETHEUS_SYNTHETIC = frozenset({"up"})

# What Grafana puts in place of its variables, for running a panel's query outside Grafana.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$instance": ".*",
}

_INSTALL = {
    "promtool": "apt-get install prometheus",
    "prometheus": "apt-get install prometheus",
    "amtool": "apt-get install prometheus-alertmanager",
    "prometheus-alertmanager": "apt-get install prometheus-alertmanager",
    "docker-compose": "apt-get install docker-compose",
    "haproxy": "apt-get install haproxy",
}


def require_tool(name: str) -> str:
    """The tool's path; the test fails (not skips) with how to install it when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: install it with `{_INSTALL.get(name, name)}` "
                    f"(bash scripts/test.sh installs everything the tests need)", pytrace=False)
    assert path is not None  # pytest.fail raised; this tells the type checker
    return path


def run_tool(
    args: list[str], timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False, env=env)


# -- the compose stack -------------------------------------------------------------------------

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"


def compose_command() -> list[str]:
    """`docker compose` (the v2 plugin) when the docker CLI has it, else `docker-compose` (v1)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    return [require_tool("docker-compose")]


def compose_variables() -> set[str]:
    """Every variable docker-compose.yml interpolates (`${NAME...}`; `$$` is a literal dollar)."""
    text = COMPOSE_FILE.read_text().replace("$$", "")
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def required_compose_variables() -> set[str]:
    """The variables docker-compose.yml refuses to run without (`${NAME:?message}`)."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", COMPOSE_FILE.read_text().replace("$$", "")))


def compose_env(**overrides: str | None) -> dict[str, str]:
    """The environment for `compose config`: this process's, less every variable the file reads
    (the machine's own must not decide the test), plus a stand-in for each required one. An
    override of None leaves that variable unset."""
    env = {k: v for k, v in os.environ.items() if k not in compose_variables()}
    values: dict[str, str | None] = {name: f"{name.lower().replace('_', '-')}-test-value"
                                     for name in required_compose_variables()}
    values.update(overrides)
    env.update({k: v for k, v in values.items() if v is not None})
    return env


def run_compose_config(env: dict[str, str], env_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`compose config` on docker-compose.yml. `env_file` replaces the `.env` beside it (a
    developer's real one must not decide the test): by default an empty one."""
    with tempfile.TemporaryDirectory(prefix="healer-compose-") as empty:
        if env_file is None:
            env_file = Path(empty) / "empty.env"
            env_file.write_text("")
        return run_tool(compose_command() + ["--file", str(COMPOSE_FILE), "--env-file", str(env_file), "config"],
                        env=env)


# -- dashboards --------------------------------------------------------------------------------

@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}: {self.expr}"


def dashboard_files() -> list[Path]:
    return sorted(GRAFANA_DASHBOARDS_DIR.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[PanelQuery]:
    """Every panel target's expression and every query variable's series, in every dashboard."""
    queries = []
    for path in dashboard_files():
        board = load_dashboard(path)
        for panel in panels(board):
            for target in panel.get("targets", []):
                queries.append(PanelQuery(board["uid"], panel["title"], target["refId"], target["expr"]))
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
                queries.append(PanelQuery(board["uid"], f"variable ${variable['name']}", "query",
                                          label_values_series(query)))
    return queries


def label_values_series(query: str) -> str:
    """`label_values(selector, label)` -> `selector`: the series the variable is read from."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.DOTALL)
    assert match, f"variable query {query!r} is not label_values(selector, label)"
    return match.group(1)


def substitute_variables(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


# -- alert rules -------------------------------------------------------------------------------

def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def design_metric_names() -> set[str]:
    """The metric names the design's Metrics paragraph makes public (some of them come with
    issues not done yet: see `test_every_exported_metric_of_the_design_is_on_a_dashboard`)."""
    text = DESIGN.read_text()
    paragraph = text[text.index("Metrics (prefix"):]
    paragraph = paragraph[: paragraph.index("\n\n")]
    return set(re.findall(r"`(healer_[a-z_]+)", paragraph))


# -- what the daemon exports ---------------------------------------------------------------------

HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


@dataclass(frozen=True)
class _PassingCheck(Check):
    name: ClassVar[str] = "database"

    def probe(self) -> str:
        return "ok"


@pytest.fixture
def exported(sqlite_engine: Engine) -> set[str]:
    """Every sample name the daemon's Metrics can expose, each collector fed the way the daemon
    feeds it (checks through a HealthMonitor that has run once), with the listeners' request
    counts that healer.wiring.build_apps adds to the same registry."""
    metrics = Metrics(runbook_base_url="http://127.0.0.1:8081/runbook")
    HttpMetrics(metrics.registry)
    monitor = HealthMonitor([_PassingCheck()])
    monitor.run(_PassingCheck.name)
    metrics.watch_checks(monitor.reports)
    metrics.watch_jobs(lambda: [JobState("worker", 2.0, time.time(), None, 1, 0)])
    metrics.watch_leadership(lambda: {"reconcile": True})
    metrics.watch_orders(db.make_session_factory(sqlite_engine), sla_seconds=600)
    now = utcnow()
    canary = CanaryRun(uuid.uuid4(), now, now, tuple(PhaseResult(p, PhaseOutcome.OK, 0.5, "ok") for p in Phase))
    metrics.watch_canary(lambda: CanaryState(canary, canary.finished_at), interval_seconds=60)
    names: set[str] = set()
    for family in metrics.registry.collect():
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in HISTOGRAM_SUFFIXES)
        elif family.type == "counter":
            names.add(family.name + "_total")
        else:
            names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def design_family(name: str, design: set[str]) -> str | None:
    candidates = [name] + [name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)]
    return next((c for c in candidates if c in design), None)


def unexported_metrics(queries: list[PanelQuery], exported: set[str]) -> list[str]:
    design = design_metric_names()
    problems = []
    for query in queries:
        for name in sorted(metric_names(query.expr)):
            if name in PROMETHEUS_SYNTHETIC:
                continue
            if name.startswith("healer_") and design_family(name, design) is None:
                problems.append(f"{name} is not a metric of DESIGN.md ({query})")
            elif not name.startswith(("healer_", "process_")):
                problems.append(f"{name} is neither healer_* nor the client's process_* ({query})")
            if name not in exported:
                problems.append(f"{name} is not exported by healer.metrics.Metrics ({query})")
    return problems


# -- reading PromQL ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: str = ""  # "{...}" as written, or ""

    def __str__(self) -> str:
        return self.metric + self.matchers


_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)"""
    r"""|(?P<range>\[[^\]]*\])"""
    r"""|(?P<number>\d[\w.]*(?:[eE][+-]?\d+)?)"""
    r"""|(?P<variable>\$\{[^}]*\}|\$\w+)"""
    r"""|(?P<ident>[A-Za-z_:][\w:]*)"""
    r"""|(?P<space>\s+)"""
    r"""|(?P<other>.)""",
    re.DOTALL,
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        if expr[pos] == "{":
            end = _closing_brace(expr, pos)
            tokens.append(("braces", expr[pos:end + 1]))
            pos = end + 1
            continue
        match = _TOKEN.match(expr, pos)
        assert match is not None
        kind = match.lastgroup or "other"
        if kind != "space":
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


def _closing_brace(expr: str, start: int) -> int:
    quote = None
    i = start + 1
    while i < len(expr):
        char = expr[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = None
        elif char in "\"'`":
            quote = char
        elif char == "}":
            return i
        i += 1
    raise ValueError(f"unbalanced braces in {expr!r}")


def selectors(expr: str) -> list[Selector]:
    """The series selectors an expression reads, in order (duplicates kept)."""
    tokens = _tokens(expr)
    found: list[Selector] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "ident" and text.lower() in _LABEL_LISTS:
            if following == ("other", "("):  # a label list: skip past its ")"
                while i < len(tokens) and tokens[i] != ("other", ")"):
                    i += 1
            i += 1
            continue
        if kind == "ident":
            is_call = following == ("other", "(")
            is_aggregation = following[0] == "ident" and following[1].lower() in ("by", "without")
            if not (is_call or is_aggregation or text.lower() in _KEYWORDS):
                matchers = following[1] if following[0] == "braces" else ""
                found.append(Selector(text, matchers))
        elif kind == "braces" and (i == 0 or tokens[i - 1][0] != "ident"):
            name = re.search(r"""__name__\s*=\s*["']([^"']+)["']""", text)
            found.append(Selector(name.group(1) if name else "", text))
        i += 1
    return found


def metric_names(expr: str) -> set[str]:
    return {selector.metric for selector in selectors(expr)}


@cache
def compose_config() -> dict[str, Any]:
    """docker-compose.yml as compose reads it, the required secrets stood in for."""
    result = run_compose_config(compose_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(yaml.safe_load(result.stdout))


def services() -> dict[str, Any]:
    return dict(compose_config()["services"])
