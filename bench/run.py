"""healer's benchmarks, in one command: a table per section, a summary with the goals of issue 17
beside the figures, and the numbers as JSON: all of them in bench/results/<timestamp>.json, the
headline ones in bench/results/latest.json (kept in the repository, so a change's effect shows in
its diff).

    .venv/bin/python bench/run.py --quick          # a few minutes
    .venv/bin/python bench/run.py                  # the long run (3,000 orders under faults)
    .venv/bin/python bench/run.py --only faults --fault-orders 600

Sections, each with the baseline its figures are a ratio of, measured in the same run:
- completion (bench/completion_bench.py): customer-sized uploads (a 12 MP phone JPEG of about
  4 MB, the same photo as PNG with fewer orders, a 3-minute song and its waveform), orders queued
  at once, at 1 and 2 workers: orders/s against rendering alone and against I/O alone (the same
  S3 copies, input reads, PDF upload and email without the render), the floor being the slower of
  the two; 2 workers against 1; each order's time split into queue wait, verify, S3 copies, S3
  reads, render (waiting for a slot, in the pool), PDF upload, email, database statements, commits
  and the rest of its transactions. Then paid orders arriving one at a time with the worker asked
  every 2 s as the daemon does: paid-to-emailed p50/p99.
- faults: the fault run of tests/faults (two servers on one PostgreSQL while S3, SendGrid, Stripe,
  PostgreSQL, the assets, the disk and the servers themselves fail) with `healer run`, then with the
  shop's synchronous way (bench/baseline.py) under the same seeded faults: completed, lost, time to
  completion, against the baseline.
- footprint: idle CPU and RSS of `healer run` with every check at its default interval, against the
  baseline server idle.
- endpoints: /readyz, /health and /metrics under 16 concurrent clients with 100,000 orders in the
  database, against /livez (bench/health_bench.py's client); then /readyz under 50 clients while
  the SendGrid probe hangs (its peer a tarpit, bench/tarpit.py), against /livez under the same.
- scale: the worker's claim, the /metrics order figures and `healer orders list --stuck` with
  1,000,000 orders in PostgreSQL, against the same with 100,000 (bench/scale_bench.py).
- reconcile: 10,000 PaymentIntents, first run and steady state (bench/reconcile_bench.py), against
  the first run.
- observability: completion throughput with the daemon's JSON logs at INFO, tracing off, against
  the same runs with logging silenced (bench/observability_bench.py), alternating.

bench/results/latest.json is one object per section, each holding that section's headline
figures; a section not run in this invocation has every key null:

    {"run": {"started_at": ..., "command": ..., "quick": ..., "results": "<timestamp>.json",
             "disturbed": [what disturbed the figures from outside: PostgreSQL restarted, database errors]},
     "completion": {"e2e_over_render_1w", "e2e_over_floor_1w", "speedup_2w_over_1w",
                    "p99_paid_to_emailed_s"},
     "footprint": {"idle_cpu_pct", "idle_pss_mib"},
     "endpoints": {"readyz_p99_ms", "metrics_p99_ms", "health_p99_ms", "readyz_p99_hanging_probe_ms",
                   "readyz_p99_page_loaded_over_alone"},
     "scale": {"claim_1m_over_100k", "metrics_1m_over_100k", "stuck_list_1m_over_100k"},
     "reconcile": {"steady_requests"}}

The completion figures are those of the 12 MP JPEG: end to end over rendering alone and over the
floor at 1 worker, orders/s at 2 workers over 1, and the paced run's paid-to-emailed p99 (s).

Peers are real and local: PostgreSQL on 127.0.0.1:5432 (scratch databases, dropped afterwards),
moto's S3 server, the SendGrid and Stripe servers of tests/fakes. The faults section mounts a small
tmpfs and restarts PostgreSQL (the machine's shared server), so it needs root and a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

import completion_bench  # noqa: E402
import health_bench  # noqa: E402
import observability_bench  # noqa: E402
import psutil  # noqa: E402
import reconcile_bench  # noqa: E402
import scale_bench  # noqa: E402
from baseline import COMMAND as BASELINE_COMMAND  # noqa: E402
from baseline import BaselineTarget  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from scratch_db import (  # noqa: E402
    PG,
    bulk_insert_orders,
    scratch_database,
)
from sqlalchemy import Engine, create_engine  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402
from tarpit import Tarpit  # noqa: E402

from fulfilment.storage import make_s3_client  # noqa: E402
from healer.render.pool import IDLE_SECONDS  # noqa: E402
from tests.fakes.db_fixtures import restart_postgresql  # noqa: E402
from tests.fakes.render_fixtures import copy_assets, render_processes  # noqa: E402
from tests.fakes.stripe_server import FakeStripeServer  # noqa: E402
from tests.faults.healer_target import HealerTarget  # noqa: E402
from tests.faults.ledger import Verdict, judge  # noqa: E402
from tests.faults.processes import HEALER_RUN, Slot, http, wait_until_answering  # noqa: E402
from tests.faults.scenario import FaultPlan, Peers, Scenario, Shop, count_by_status, peer_env  # noqa: E402
from tests.faults.sendgrid_tap import TappedSendGrid  # noqa: E402

SECTIONS = ("completion", "faults", "footprint", "endpoints", "scale", "reconcile", "observability")
# Wide enough for the tables when the output is a file or a pipe (no terminal to ask).
console = Console(width=int(os.environ.get("COLUMNS", "160")))
Row = dict[str, Any]


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
    args = _parser().parse_args()
    started = datetime.now(UTC)
    report: dict[str, Any] = {"started_at": started.isoformat(timespec="seconds"), "quick": args.quick,
                              "command": " ".join(["bench/run.py", *sys.argv[1:]]), "machine": _machine(),
                              "sections": {}}
    runners: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "completion": completion, "faults": faults, "footprint": footprint, "endpoints": endpoints,
        "scale": scale, "reconcile": reconcile, "observability": observability}
    for name in args.only or SECTIONS:
        console.rule(f"[bold]{name}")
        section_started, load_before, postgres_before = time.perf_counter(), os.getloadavg(), _postgres_started_at()
        try:
            section = runners[name](args)
        except Exception as error:  # e.g. the shared PostgreSQL restarted under it: keep the other sections
            console.print_exception(max_frames=4)
            section = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"}
        report["sections"][name] = section
        section["seconds"] = round(time.perf_counter() - section_started, 1)
        # The machine and its PostgreSQL may be shared: others' load, and their restarts of the
        # server (the faults section's own aside), are in the figures; say so beside them.
        section["load_average"] = {"before": load_before, "after": os.getloadavg()}
        section["postgres_restarted"] = name != "faults" and postgres_before != _postgres_started_at()
    summary(report)
    console.print("load average (1, 5, 15 min) before and after each section: " + "; ".join(
        f"{name} {_loads(section['load_average']['before'])} → {_loads(section['load_average']['after'])}"
        for name, section in report["sections"].items()))
    for line in disturbances(report):
        console.print(f"[bold yellow]disturbed:[/] {line}")
    path = _write(report, started)
    latest = _write_latest(report, path)
    console.print(f"wrote {path.relative_to(ROOT)} and {latest.relative_to(ROOT)}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs: a few minutes in all")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run these sections only")
    parser.add_argument("--fault-orders", type=int,
                        default=int(os.environ.get("HEALER_FAULT_ORDERS", "0")) or None,
                        help="orders in the fault run (default 150 with --quick, else 3000; or HEALER_FAULT_ORDERS)")
    return parser


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


# -- completion -------------------------------------------------------------------------------------


def completion(args: argparse.Namespace) -> dict[str, Any]:
    orders = {completion_bench.JPEG: 20 if args.quick else 100,
              completion_bench.PNG: 4 if args.quick else 12}  # a PNG renders ~15x slower: fewer of them
    measured = completion_bench.measure(orders, (1, 2), paced_orders=10 if args.quick else 30, log=console.log)
    for table in completion_bench.tables(measured):
        console.print(table)
    return measured


def headline_completion(section: dict[str, Any]) -> dict[str, float | None]:
    """The 12 MP JPEG's figures, as latest.json and the summary show them."""
    rows = {r["workers"]: r for r in section["rows"] if r["upload"] == completion_bench.JPEG}
    one, two, paced = rows.get(1), rows.get(2), section.get("paced")
    return {"e2e_over_render_1w": one["e2e_over_render"] if one else None,
            "e2e_over_floor_1w": one["e2e_over_floor"] if one else None,
            "speedup_2w_over_1w": two["orders_per_second"] / one["orders_per_second"] if one and two else None,
            "p99_paid_to_emailed_s": paced["paid_to_emailed_p99_s"] if paced else None}


# -- faults -----------------------------------------------------------------------------------------


def faults(args: argparse.Namespace) -> dict[str, Any]:
    orders = args.fault_orders or (150 if args.quick else 3000)
    plan = FaultPlan.sized(orders, cycle_seconds=40.0 if args.quick else 60.0)
    verdicts: list[Verdict] = []
    for target in (HealerTarget, BaselineTarget):
        with scratch_peers(f"faults-{target.name}") as (peers, engine):
            record = Scenario(plan, peers, target, log=lambda line: console.log(line)).run()
            verdicts.append(judge(record, peers, engine))
    healer, baseline = verdicts
    table = Table("", "healer", "baseline", "healer ÷ baseline",
                  title=f"Under faults: {orders} orders ({plan.bad_orders} with a bad payment), two servers, "
                        f"{plan.cycles} fault cycle(s) of {plan.cycle_seconds:.0f} s")
    for label, key, fmt in (("paid orders completed", "completed", "{:.0f}"), ("lost (paid, not completed)", "lost_n", "{:.0f}"),
                            ("  of which emailed, not recorded", "emailed_not_completed_n", "{:.0f}"),
                            ("bad payments fulfilled", "bad_fulfilled_n", "{:.0f}"),
                            ("emails", "emails", "{:.0f}"), ("duplicate emails", "duplicates", "{:.0f}"),
                            ("answers 500 to customers", "http_500s", "{:.0f}"),
                            ("time to completion p50 s", "latency_p50", "{:.1f}"),
                            ("time to completion p99 s", "latency_p99", "{:.1f}"),
                            ("last order completed after s", "makespan", "{:.1f}"), ("SIGKILLs", "kills", "{:.0f}")):
        a, b = _figure(healer, key), _figure(baseline, key)
        table.add_row(label, fmt.format(a) if a is not None else "-", fmt.format(b) if b is not None else "-",
                      f"{a / b:.2f}" if a is not None and b else "-")
    console.print(table)
    return {"plan": asdict(plan), "healer": healer.as_dict(), "baseline": baseline.as_dict()}


def _figure(verdict: Verdict, key: str) -> float | None:
    if key == "lost_n":
        return float(len(verdict.lost))
    if key == "bad_fulfilled_n":
        return float(len(verdict.bad_fulfilled))
    if key == "emailed_not_completed_n":
        return float(len(verdict.emailed_not_completed))
    value = getattr(verdict, key)
    return None if value is None else float(value)


@contextmanager
def scratch_peers(label: str) -> Iterator[tuple[Peers, Engine]]:
    work = Path(tempfile.mkdtemp(prefix=f"healer-bench-{label}-"))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    moto_url = f"http://{host}:{port}"
    bucket = f"healer-bench-{uuid.uuid4().hex[:12]}"
    make_s3_client(access_key_id="bench", secret_access_key="bench", region="us-east-1",
                   endpoint_url=moto_url).create_bucket(Bucket=bucket)
    try:
        with scratch_database(label) as (url, engine), TappedSendGrid() as sendgrid, FakeStripeServer() as stripe:
            peers = Peers(db_url=url, moto_url=moto_url, bucket=bucket, sendgrid=sendgrid, stripe=stripe,
                          assets_dir=_assets_copy(work), work_dir=work, restart_database=restart_postgresql)
            yield peers, engine
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)


def _assets_copy(work: Path) -> Path:
    return copy_assets(work / "assets")


# -- footprint --------------------------------------------------------------------------------------


def footprint(args: argparse.Namespace) -> dict[str, Any]:
    seconds = 30.0 if args.quick else 60.0
    rows: list[Row] = []
    with scratch_peers("footprint") as (peers, engine):
        shop = Shop(peers, engine)
        for name, command in (("healer run", HEALER_RUN), ("baseline server", BASELINE_COMMAND)):
            env = peer_env(peers, peers.moto_url, peers.work_dir / name.replace(" ", "-"), peers.sendgrid.api_key)
            slot = Slot(name.replace(" ", "-"), command, env, peers.work_dir)
            incarnation = slot.start()
            try:
                if not wait_until_answering(incarnation):
                    raise SystemExit(f"{name} did not start: see {incarnation.log_path}")
                daemon = command is HEALER_RUN
                _warm_up(shop, engine, incarnation.base_url, daemon=daemon)
                # Warm: just after the orders, render processes still up (a burst's state).
                warm = _proportional_mib(incarnation.pid)
                retired = _wait_for_retirement(incarnation.pid) if daemon else 0.0
                cpu, rss, children = health_bench.measure_idle(incarnation.pid, seconds)
                pss = _proportional_mib(incarnation.pid)
            finally:
                slot.stop()
            rows.append({"process": name, "cpu_percent": cpu, "rss_mib": rss, "children_rss_mib": children,
                         "pss_mib": pss, "pss_warm_mib": warm, "retired_after_seconds": retired})
    healer, baseline = rows
    table = Table("process", "idle CPU % of a core", "RSS MiB", "+ children MiB", "PSS MiB, all",
                  "PSS MiB, warm", "CPU ÷ baseline", "RSS ÷ baseline", "PSS ÷ baseline",
                  title=f"Idle: {seconds:.0f} s measured once no render process is left (healer retires them "
                        f"{IDLE_SECONDS:.0f} s after the last render), after completing 2 orders, every check "
                        "at its default interval (docker check off: no engine)")
    for r in rows:
        table.add_row(r["process"], f"{r['cpu_percent']:.2f}", f"{r['rss_mib']:.0f}", f"{r['children_rss_mib']:.0f}",
                      f"{r['pss_mib']:.0f}", f"{r['pss_warm_mib']:.0f}",
                      f"{r['cpu_percent'] / max(baseline['cpu_percent'], 1e-6):.1f}",
                      f"{(r['rss_mib'] + r['children_rss_mib']) / (baseline['rss_mib'] + baseline['children_rss_mib']):.2f}",
                      f"{r['pss_mib'] / baseline['pss_mib']:.2f}")
    console.print(table)
    console.print("RSS counts the pages processes share (libraries) once per process; PSS splits each shared "
                  "page between its sharers, so the tree's PSS is the memory it takes. Warm: the tree's PSS "
                  "right after the orders, render processes still up.")
    return {"seconds": seconds, "idle": "after render processes retired", "rows": rows}


def _proportional_mib(pid: int) -> float:
    parent = psutil.Process(pid)
    return float(sum(p.memory_full_info().pss for p in (parent, *parent.children(recursive=True)))) / 2**20


def _wait_for_retirement(pid: int) -> float:
    """Seconds until the daemon holds no render process (retired IDLE_SECONDS after its last render):
    its steady idle state, the one that lasts."""
    started = time.monotonic()
    while render_processes(pid):
        if time.monotonic() - started > IDLE_SECONDS + 60:
            raise SystemExit(f"render processes were not retired within {IDLE_SECONDS + 60:.0f} s")
        time.sleep(1)
    return time.monotonic() - started


def _warm_up(shop: Shop, engine: Engine, base_url: str, *, daemon: bool) -> None:
    """Two orders first, so what idles is a server that has worked (render processes started)."""
    rng = random.Random(5)
    orders = [shop.place(rng, None, "queued" if daemon else "customer", queued=daemon) for _ in range(2)]
    for order in orders:
        if not daemon:
            http("POST", f"{base_url}/api/orders/{order.id}/complete", b"", {"X-Session-Token": f"sess-{order.id.hex}"},
                 timeout=60)
    deadline = time.monotonic() + 60
    while count_by_status(engine, [o.id for o in orders]).get("completed", 0) < len(orders):
        if time.monotonic() > deadline:
            raise SystemExit("the warm-up orders did not complete")
        time.sleep(0.5)
    time.sleep(5)  # what follows a completion (metrics, probes due now) is not idling


# -- endpoints --------------------------------------------------------------------------------------



HANGING_CLIENTS = 50  # issue 17: /readyz under 50 clients while one probe hangs


def endpoints(args: argparse.Namespace) -> dict[str, Any]:
    requests, clients, orders = (400 if args.quick else 2000), 16, 100_000
    with scratch_peers("endpoints") as (peers, engine):
        insert_seconds = bulk_insert_orders(engine, orders)
        env = peer_env(peers, peers.moto_url, peers.work_dir / "data", peers.sendgrid.api_key)
        slot = Slot("healer", HEALER_RUN, env, peers.work_dir)
        incarnation = slot.start()
        try:
            _wait_ready(incarnation.ops_url)
            cold = _timed(lambda: http("GET", incarnation.ops_url + "/metrics", timeout=60))
            health_bench.hammer(incarnation.ops_url + "/livez", 100, clients)  # warm: not the baseline's cost
            # Probes and HTTP monitors open a connection per request; Prometheus keeps its own.
            rows = [_hammered(incarnation.ops_url, path, requests, clients, keep_alive=path == "/metrics")
                    for path in ("/livez", "/readyz", "/health", "/metrics")]
            page = readyz_while_the_page_loads(incarnation.ops_url, requests, clients)
        finally:
            slot.stop()
        hanging = readyz_with_a_hanging_probe(peers, requests)
    base = rows[0]
    table = Table("endpoint", "p50 ms", "p99 ms", "req/s", "p50 ÷ /livez", "p99 ÷ /livez",
                  title=f"{requests} requests per endpoint, {clients} concurrent clients, {orders:,} orders in PostgreSQL")
    for r in rows:
        table.add_row(r["endpoint"], f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['requests_per_second']:.0f}",
                      f"{r['p50_ms'] / base['p50_ms']:.2f}", f"{r['p99_ms'] / base['p99_ms']:.2f}")
    console.print(table)
    console.print(f"first /metrics (counts the orders): {cold * 1000:.0f} ms; "
                  f"{orders:,} orders inserted with one COPY in {insert_seconds:.1f} s")
    hang_base, hang_readyz = hanging["rows"]
    table = Table("endpoint", "p50 ms", "p99 ms", "req/s", "p50 ÷ /livez", "p99 ÷ /livez",
                  title=f"{requests} requests per endpoint, {HANGING_CLIENTS} concurrent clients, {orders:,} orders, "
                        "the SendGrid probe hanging (its peer a tarpit)")
    for r in hanging["rows"]:
        table.add_row(r["endpoint"], f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['requests_per_second']:.0f}",
                      f"{r['p50_ms'] / hang_base['p50_ms']:.2f}", f"{r['p99_ms'] / hang_base['p99_ms']:.2f}")
    console.print(table)
    console.print(f"the probe hung throughout: {hanging['probe_hung_throughout']} (tarpit connections held before "
                  f"/ after: {hanging['held_before']} / {hanging['held_after']}); /readyz answered "
                  f"{hanging['readyz_status']}; /health/sendgrid said: {hanging['sendgrid_detail']}")
    console.print(f"/readyz while an operator's browser reloads the status page without pause "
                  f"({page['page_loads']} loads, {page['page_p50_ms']:.0f} ms each at p50): p99 "
                  f"{page['readyz']['p99_ms']:.1f} ms, {page['readyz_p99_over_alone']:.2f}x /readyz alone")
    return {"orders": orders, "requests": requests, "clients": clients, "rows": rows,
            "cold_metrics_ms": cold * 1000, "insert_seconds": insert_seconds, "hanging_probe": hanging,
            "status_page": page}


def readyz_while_the_page_loads(ops_url: str, requests: int, clients: int) -> dict[str, Any]:
    """/readyz under the same clients while one more client reloads the status page (`/`, every
    section of it, with the 100,000 orders) back to back: what the page costs the probe a load
    balancer and the kubelet lean on. Against /readyz alone, measured just before and after (their
    mean, so a drift of the machine between the two does not read as the page's cost)."""
    before = _hammered(ops_url, "/readyz", requests, clients)
    stop = threading.Event()
    page_latencies: list[float] = []

    def reload_the_page() -> None:
        while not stop.is_set():
            page_latencies.extend(health_bench.hammer(ops_url + "/", 1, 1))

    reloader = threading.Thread(target=reload_the_page, name="status-page-reloader")
    reloader.start()
    try:
        loaded = _hammered(ops_url, "/readyz", requests, clients)
    finally:
        stop.set()
        reloader.join()
    after = _hammered(ops_url, "/readyz", requests, clients)
    alone_p99 = (before["p99_ms"] + after["p99_ms"]) / 2
    page_p50, _ = health_bench.summary(page_latencies)
    return {"readyz": loaded, "readyz_alone_p99_ms": alone_p99, "readyz_p99_over_alone": loaded["p99_ms"] / alone_p99,
            "page_loads": len(page_latencies), "page_p50_ms": page_p50}


def _hammered(base_url: str, path: str, requests: int, clients: int, *, keep_alive: bool = False) -> Row:
    started = time.perf_counter()
    latencies = health_bench.hammer(base_url + path, requests, clients, keep_alive=keep_alive)
    wall = time.perf_counter() - started
    p50, p99 = health_bench.summary(latencies)
    return {"endpoint": path, "p50_ms": p50, "p99_ms": p99, "requests_per_second": requests / wall,
            "connection": "keep-alive" if keep_alive else "new"}


def readyz_with_a_hanging_probe(peers: Peers, requests: int) -> dict[str, Any]:
    """A second `healer run` on the same database whose SendGrid is a tarpit: its sendgrid probe
    starts at start-up and hangs for as long as the tarpit runs. The measuring starts once the
    monitor has given up waiting on it and says so (its timeout), the probe's thread still stuck.
    /livez under the same clients is the baseline; the tarpit's held connections, before and after,
    show the probe hung throughout."""
    with Tarpit() as tarpit:
        env = peer_env(peers, peers.moto_url, peers.work_dir / "data-hanging", peers.sendgrid.api_key)
        env["SENDGRID_API_BASE"] = tarpit.url
        slot = Slot("healer-hanging-probe", HEALER_RUN, env, peers.work_dir)
        incarnation = slot.start()
        try:
            _wait_ready(incarnation.ops_url)  # sendgrid is not a critical check: ready all the same
            _wait_for(lambda: tarpit.holding > 0, 30, "the SendGrid probe to reach the tarpit")
            _wait_for(lambda: _check_status(incarnation.ops_url, "sendgrid") == "failing", 60,
                      "the monitor to report the SendGrid probe as hanging")
            health_bench.hammer(incarnation.ops_url + "/livez", 100, HANGING_CLIENTS)  # warm
            held_before = tarpit.holding
            rows = [_hammered(incarnation.ops_url, path, requests, HANGING_CLIENTS) for path in ("/livez", "/readyz")]
            held_after = tarpit.holding
            readyz_status = http("GET", incarnation.ops_url + "/readyz", timeout=10)[0]
            sendgrid = json.loads(http("GET", incarnation.ops_url + "/health/sendgrid", timeout=10)[1])
        finally:
            slot.stop()
    return {"clients": HANGING_CLIENTS, "rows": rows, "held_before": held_before, "held_after": held_after,
            "probe_hung_throughout": held_before > 0 and held_after > 0 and tarpit.accepted == 1,
            "tarpit_connections": tarpit.accepted, "readyz_status": readyz_status,
            "sendgrid_detail": f"{sendgrid.get('status')}: {sendgrid.get('detail')}"}


def _check_status(ops_url: str, check: str) -> str | None:
    status = json.loads(http("GET", f"{ops_url}/health/{check}", timeout=10)[1]).get("status")
    return None if status is None else str(status)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def _wait_ready(base: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http("GET", base + "/readyz", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{base} did not become ready in {timeout:.0f}s")


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


# -- scale ------------------------------------------------------------------------------------------


def scale(args: argparse.Namespace) -> dict[str, Any]:
    """The per-tick order queries at 100,000 and 1,000,000 orders (bench/scale_bench.py)."""
    result = scale_bench.measure()
    for table in scale_bench.tables(result):
        console.print(table)
    return result


# -- reconcile --------------------------------------------------------------------------------------


def reconcile(args: argparse.Namespace) -> dict[str, Any]:
    payments, steady_runs = 10_000, 3
    with scratch_database("reconcile") as (url, _engine), FakeStripeServer() as stripe:
        measured = reconcile_bench._run(url, stripe, payments, steady_runs, reconcile_bench.Mix())
    first = measured[0]
    rows: list[Row] = [{"run": m.name, "payments_read": m.report.payments_read, "stripe_requests": m.stripe_requests,
             "db_statements": m.statements, "wall_s": m.wall, "repaired": m.report.orders_repaired,
             "orphans": m.report.orphans_found} for m in measured]
    table = Table("run", "payments read", "Stripe requests", "DB statements", "wall s", "repaired", "orphans",
                  "wall ÷ first run", title=f"Reconciling {payments:,} PaymentIntents (3-day window)")
    for r in rows:
        table.add_row(r["run"], f"{r['payments_read']:,}", str(r["stripe_requests"]), str(r["db_statements"]),
                      f"{r['wall_s']:.2f}", str(r["repaired"]), str(r["orphans"]), f"{r['wall_s'] / first.wall:.3f}")
    console.print(table)
    return {"payments": payments, "rows": rows}


# -- summary and JSON -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """One of issue 17's goals: printed beside its figure as met or not, never asserted."""

    text: str
    limit: float
    at_most: bool = True

    def met(self, value: float | None) -> str:
        if value is None:
            return "-"
        return "met" if (value <= self.limit if self.at_most else value >= self.limit) else "not met"


GOALS: dict[tuple[str, str], Goal] = {
    ("completion", "e2e_over_floor_1w"): Goal("≤ 1.15x the floor", 1.15),
    ("completion", "speedup_2w_over_1w"): Goal("≥ 1.8x 1 worker", 1.8, at_most=False),
    ("completion", "p99_paid_to_emailed_s"): Goal("p99 ≤ 5 s", 5.0),
    ("footprint", "idle_cpu_pct"): Goal("≤ 1 % of a core", 1.0),
    ("footprint", "idle_pss_mib"): Goal("≤ 150 MiB", 150.0),
    ("endpoints", "metrics_p99_ms"): Goal("p99 ≤ 50 ms", 50.0),
    ("endpoints", "health_p99_ms"): Goal("p99 ≤ 20 ms", 20.0),
    ("endpoints", "readyz_p99_hanging_probe_ms"): Goal("p99 ≤ 10 ms", 10.0),
    ("scale", "claim_1m_over_100k"): Goal("≤ 2x", 2.0),
    ("scale", "metrics_1m_over_100k"): Goal("≤ 2x", 2.0),
    ("scale", "stuck_list_1m_over_100k"): Goal("≤ 2x", 2.0),
}
HEADLINE_KEYS: dict[str, tuple[str, ...]] = {
    "completion": ("e2e_over_render_1w", "e2e_over_floor_1w", "speedup_2w_over_1w", "p99_paid_to_emailed_s"),
    "footprint": ("idle_cpu_pct", "idle_pss_mib"),
    "endpoints": ("readyz_p99_ms", "metrics_p99_ms", "health_p99_ms", "readyz_p99_hanging_probe_ms",
                  "readyz_p99_page_loaded_over_alone"),
    "scale": ("claim_1m_over_100k", "metrics_1m_over_100k", "stuck_list_1m_over_100k"),
    "reconcile": ("steady_requests",),
    "observability": ("json_logs_over_silent",),
}


def headlines(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The figures latest.json keeps, by section; None for every key of a section not run (or failed)."""
    s = _completed(report)
    out: dict[str, dict[str, Any]] = {name: dict.fromkeys(keys) for name, keys in HEADLINE_KEYS.items()}
    if "completion" in s:
        out["completion"] = headline_completion(s["completion"])
    if "footprint" in s:
        healer = s["footprint"]["rows"][0]
        out["footprint"] = {"idle_cpu_pct": healer["cpu_percent"], "idle_pss_mib": healer["pss_mib"]}
    if "endpoints" in s:
        p99 = {r["endpoint"]: r["p99_ms"] for r in s["endpoints"]["rows"]}
        hanging = {r["endpoint"]: r["p99_ms"] for r in s["endpoints"]["hanging_probe"]["rows"]}
        out["endpoints"] = {"readyz_p99_ms": p99["/readyz"], "metrics_p99_ms": p99["/metrics"],
                            "health_p99_ms": p99["/health"], "readyz_p99_hanging_probe_ms": hanging["/readyz"],
                            "readyz_p99_page_loaded_over_alone": s["endpoints"]["status_page"]["readyz_p99_over_alone"]}
    if "scale" in s:
        out["scale"] = {key: s["scale"]["ratios"][key] for key in HEADLINE_KEYS["scale"]}
    if "reconcile" in s:
        out["reconcile"] = {"steady_requests": s["reconcile"]["rows"][-1]["stripe_requests"]}
    if "observability" in s:
        out["observability"] = {"json_logs_over_silent": s["observability"]["json_over_silent"]}
    return out


def _completed(report: dict[str, Any]) -> dict[str, Any]:
    return {name: section for name, section in report["sections"].items() if "error" not in section}


def summary(report: dict[str, Any]) -> None:
    s = _completed(report)
    heads = headlines(report)
    table = Table("figure", "value", "baseline (same run)", "ratio", "goal", "met?",
                  title=f"healer benchmarks — {report['command']}")

    def add(figure: str, value: str, baseline: str = "", ratio: str = "", goal: tuple[str, str] | None = None) -> None:
        if goal is None:
            table.add_row(figure, value, baseline, ratio, "", "")
            return
        section, key = goal
        table.add_row(figure, value, baseline, ratio, GOALS[goal].text, GOALS[goal].met(heads[section][key]))

    if "completion" in s:
        _summarise_completion(s["completion"], add)
    if "faults" in s:
        h, b = s["faults"]["healer"], s["faults"]["baseline"]
        add("under faults: paid orders completed", f"{h['completed']} of {h['good']}",
            f"{b['completed']} of {b['good']}", f"{h['completed'] / max(b['completed'], 1):.2f}")
        add("under faults: lost", str(len(h["lost"])), str(len(b["lost"])))
        add("under faults: time to completion p50 / p99 s", _pair(h["latency_p50"], h["latency_p99"]),
            _pair(b["latency_p50"], b["latency_p99"]))
        add("under faults: duplicate emails (all after a kill)", str(h["duplicates"]), str(b["duplicates"]))
    if "footprint" in s:
        h, b = s["footprint"]["rows"]
        add("idle CPU % of a core", f"{h['cpu_percent']:.2f}", f"{b['cpu_percent']:.2f}",
            f"{h['cpu_percent'] / max(b['cpu_percent'], 1e-6):.1f}", ("footprint", "idle_cpu_pct"))
        add("idle RSS MiB (with children)", f"{h['rss_mib'] + h['children_rss_mib']:.0f}",
            f"{b['rss_mib'] + b['children_rss_mib']:.0f}",
            f"{(h['rss_mib'] + h['children_rss_mib']) / (b['rss_mib'] + b['children_rss_mib']):.2f}")
        add("idle memory MiB (PSS, process tree)", f"{h['pss_mib']:.0f}", f"{b['pss_mib']:.0f}",
            f"{h['pss_mib'] / b['pss_mib']:.2f}", ("footprint", "idle_pss_mib"))
    if "endpoints" in s:
        _summarise_endpoints(s["endpoints"], add)
    if "scale" in s:
        small, large = s["scale"]["sizes"][0], s["scale"]["sizes"][-1]
        for query, figure in (("claim", "claim query"), ("metrics", "/metrics order figures (tally and stuck orders)"),
                              ("stuck_list", "healer orders list --stuck")):
            add(f"{figure}, ms at {large['orders']:,} orders", f"{large[query + '_s'] * 1000:.1f}",
                f"{small['orders']:,} orders: {small[query + '_s'] * 1000:.1f}",
                f"{large[query + '_s'] / small[query + '_s']:.2f}", ("scale", f"{query}_1m_over_100k"))
    if "reconcile" in s:
        rows = s["reconcile"]["rows"]
        first, steady = rows[0], rows[-1]
        add("reconcile 10,000 PIs: first run", f"{first['wall_s']:.2f} s, {first['stripe_requests']} req, "
            f"{first['db_statements']} stmts")
        add("reconcile: steady state", f"{steady['wall_s']:.3f} s, {steady['stripe_requests']} req, "
            f"{steady['db_statements']} stmts", "first run", f"{steady['wall_s'] / first['wall_s']:.3f}")
    if "observability" in s:
        o = s["observability"]
        add("completion with JSON logs at INFO, tracing off: orders/s", f"{o['json_orders_per_second']:.2f}",
            f"logging silenced {o['silent_orders_per_second']:.2f}", f"{o['json_over_silent']:.2f}")
    console.print(table)


# -- observability ----------------------------------------------------------------------------------


def observability(args: argparse.Namespace) -> dict[str, Any]:
    result = observability_bench.measure(orders=10 if args.quick else 30, rounds=3)
    console.print(observability_bench.table(result))
    return result


def _summarise_completion(section: dict[str, Any], add: Callable[..., None]) -> None:
    for r in section["rows"]:
        jpeg = r["upload"] == completion_bench.JPEG
        goal = ("completion", "e2e_over_floor_1w") if jpeg and r["workers"] == 1 else None
        flag = f" ({r['disturbed']})" if r["disturbed"] else ""
        add(f"completion, {r['upload']}, {r['workers']} worker(s): orders/s{flag}", f"{r['orders_per_second']:.2f}",
            f"render alone {r['renders_per_second']:.2f}/s, I/O alone {r['io_alone_per_second']:.2f}/s",
            f"{r['e2e_over_floor']:.2f}x floor, {r['e2e_over_render']:.2f}x render", goal)
        if "cpu_ceiling_per_second" in r:
            cpu = r["cpu_ms_per_order"]
            add(f"  CPU per order, ms: {', '.join(f'{group} {ms:.0f}' for group, ms in cpu.items())}",
                f"{sum(cpu.values()):.0f}", f"ceiling {r['cpu_ceiling_per_second']:.2f} orders/s (the cores ÷ CPU per order)",
                f"{r['orders_per_second'] / r['cpu_ceiling_per_second']:.2f}x ceiling")
        if r["workers"] > 1:
            add(f"  speed-up over 1 worker, {r['upload']}", f"{r['speedup_vs_1_worker']:.2f}x", "1 worker", "",
                ("completion", "speedup_2w_over_1w") if jpeg else None)
    paced = section.get("paced")
    if paced:
        one = next(r for r in section["rows"] if r["upload"] == paced["upload"] and r["workers"] == 1)
        floor = one["floor_wall_s"] / one["orders"]  # one order's share of the 1-worker floor
        add(f"paid→emailed p50 / p99 s, {paced['upload']} arriving one at a time",
            f"{paced['paid_to_emailed_p50_s']:.2f} / {paced['paid_to_emailed_p99_s']:.2f}",
            f"floor per order {floor:.2f} s", f"{paced['paid_to_emailed_p99_s'] / floor:.1f}x (p99)",
            ("completion", "p99_paid_to_emailed_s"))


def _summarise_endpoints(section: dict[str, Any], add: Callable[..., None]) -> None:
    rows = section["rows"]
    base = rows[0]
    goals = {"/health": ("endpoints", "health_p99_ms"), "/metrics": ("endpoints", "metrics_p99_ms")}
    for r in rows[1:]:
        add(f"{r['endpoint']} p50 / p99 ms (16 clients, 100k orders)", _pair(r["p50_ms"], r["p99_ms"]),
            f"/livez {_pair(base['p50_ms'], base['p99_ms'])}", f"{r['p99_ms'] / base['p99_ms']:.2f} (p99)",
            goals.get(r["endpoint"]))
    hanging = section["hanging_probe"]
    livez, readyz = hanging["rows"]
    add(f"/readyz p50 / p99 ms ({hanging['clients']} clients, a probe hanging)", _pair(readyz["p50_ms"], readyz["p99_ms"]),
        f"/livez {_pair(livez['p50_ms'], livez['p99_ms'])}", f"{readyz['p99_ms'] / livez['p99_ms']:.2f} (p99)",
        ("endpoints", "readyz_p99_hanging_probe_ms"))
    page = section["status_page"]
    add(f"/readyz p99 ms ({section['clients']} clients) while the status page reloads without pause",
        f"{page['readyz']['p99_ms']:.1f}", f"/readyz alone {page['readyz_alone_p99_ms']:.1f}",
        f"{page['readyz_p99_over_alone']:.2f} (p99)")


def _postgres_started_at() -> datetime | None:
    """When the shared PostgreSQL server last started (None: down): another's restart shows here."""
    engine = create_engine(PG + "postgres", poolclass=NullPool)
    try:
        return completion_bench.postgres_started_at(engine)
    finally:
        engine.dispose()


def disturbances(report: dict[str, Any]) -> list[str]:
    """What disturbed the figures from outside this run: PostgreSQL restarted under a section, or
    a completion run that met database errors."""
    lines = [f"{name}: failed ({section['error']})" for name, section in report["sections"].items()
             if "error" in section]
    lines += [f"{name}: PostgreSQL restarted during the section" for name, section in report["sections"].items()
              if section.get("postgres_restarted")]
    completion = report["sections"].get("completion", {})
    for r in completion.get("rows", []):
        if r["disturbed"]:
            lines.append(f"completion, {r['upload']}, {r['workers']} worker(s): {r['disturbed']}")
    if (completion.get("paced") or {}).get("disturbed"):
        lines.append(f"completion, paced run: {completion['paced']['disturbed']}")
    return lines


def _loads(loads: tuple[float, ...]) -> str:
    return "/".join(f"{load:.1f}" for load in loads)


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a:.1f} / {b:.1f}"


def _write(report: dict[str, Any], started: datetime) -> Path:
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2, default=_jsonable))
    return path


def _write_latest(report: dict[str, Any], results: Path) -> Path:
    """bench/results/latest.json: the headline figures of this run, rounded for a readable diff."""
    path = BENCH / "results" / "latest.json"
    latest: dict[str, Any] = {"run": {"started_at": report["started_at"], "command": report["command"],
                                      "quick": report["quick"], "results": results.name,
                                      "disturbed": disturbances(report)}}
    for section, figures in headlines(report).items():
        latest[section] = {key: None if value is None else round(value, 3) for key, value in figures.items()}
    path.write_text(json.dumps(latest, indent=2) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, float) and value != value:
        return None
    return str(value)


if __name__ == "__main__":
    main()
