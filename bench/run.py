"""healer's benchmarks, in one command: a table per section, a summary, and the numbers as JSON in
bench/results/<timestamp>.json.

    .venv/bin/python bench/run.py --quick          # a few minutes
    .venv/bin/python bench/run.py                  # the long run (3,000 orders under faults)
    .venv/bin/python bench/run.py --only faults --fault-orders 600

Sections, each with the baseline its figures are a ratio of, measured in the same run:
- completion: orders/s at 1 and 2 workers (bench/completion_bench.py) against rendering alone, the
  floor, and 2 workers against 1; p50/p99 from the payment's verification to the email (the orders
  are queued at once, so the wait in the queue shows in orders/s, not here).
- faults: the fault run of tests/faults (two servers on one PostgreSQL while S3, SendGrid, Stripe,
  PostgreSQL, the assets, the disk and the servers themselves fail) with `healer run`, then with the
  shop's synchronous way (bench/baseline.py) under the same seeded faults: completed, lost, time to
  completion, against the baseline.
- footprint: idle CPU and RSS of `healer run` with every check at its default interval, against the
  baseline server idle.
- endpoints: /readyz, /health and /metrics under 16 concurrent clients with 100,000 orders in the
  database, against /livez (bench/health_bench.py's client).
- reconcile: 10,000 PaymentIntents, first run and steady state (bench/reconcile_bench.py), against
  the first run.

Peers are real and local: PostgreSQL on 127.0.0.1:5432 (scratch databases, dropped afterwards),
moto's S3 server, the SendGrid and Stripe servers of tests/fakes. The faults section mounts a small
tmpfs and restarts PostgreSQL (the machine's shared server), so it needs root and a quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

import completion_bench  # noqa: E402
import health_bench  # noqa: E402
import psutil  # noqa: E402
import reconcile_bench  # noqa: E402
from baseline import COMMAND as BASELINE_COMMAND  # noqa: E402
from baseline import BaselineTarget  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import Engine, create_engine, text  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from fulfilment.storage import make_s3_client  # noqa: E402
from healer import db  # noqa: E402
from healer.demo.samples import sample_audio, sample_photo, sample_waveform_png  # noqa: E402
from tests.fakes.db_fixtures import restart_postgresql  # noqa: E402
from tests.fakes.render_fixtures import ASSET_DIRS  # noqa: E402
from tests.fakes.stripe_server import FakeStripeServer  # noqa: E402
from tests.faults.healer_target import HealerTarget  # noqa: E402
from tests.faults.ledger import Verdict, judge  # noqa: E402
from tests.faults.processes import HEALER_RUN, Slot, http, wait_until_answering  # noqa: E402
from tests.faults.scenario import FaultPlan, Peers, Scenario, Shop, count_by_status, peer_env  # noqa: E402
from tests.faults.sendgrid_tap import TappedSendGrid  # noqa: E402

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/"
SECTIONS = ("completion", "faults", "footprint", "endpoints", "reconcile")
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
        "reconcile": reconcile}
    for name in args.only or SECTIONS:
        console.rule(f"[bold]{name}")
        section_started = time.perf_counter()
        report["sections"][name] = runners[name](args)
        report["sections"][name]["seconds"] = round(time.perf_counter() - section_started, 1)
    summary(report)
    path = _write(report, started)
    console.print(f"wrote {path.relative_to(ROOT)}")


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
    n = 20 if args.quick else 100
    photo = sample_photo(seed=3, size=(1200, 1600))
    audio = sample_audio(seed=3, seconds=30.0)
    waveform = sample_waveform_png(audio)
    rows: list[Row] = []
    for workers in (1, 2):
        render_wall = completion_bench.render_only(n, workers, photo, audio, waveform)
        results, wall = completion_bench.end_to_end(n, workers, photo, audio, waveform)
        rows.append(_completion_row(n, workers, wall, render_wall, results))
    one = rows[0]["orders_per_second"]
    for row in rows:
        row["speedup_vs_1_worker"] = row["orders_per_second"] / one
    table = Table("workers", "orders", "orders/s", "render alone /s", "e2e ÷ render", "speed-up ÷ 1 worker",
                  "verified→emailed p50 s", "p99 s", "per-order work p50 ms", "p99 ms",
                  title=f"Completion: {n} orders queued at once (1200x1600 photo, 30 s audio)")
    for r in rows:
        table.add_row(str(r["workers"]), str(r["orders"]), f"{r['orders_per_second']:.2f}",
                      f"{r['renders_per_second']:.2f}", f"{r['ratio_to_render_alone']:.2f}",
                      f"{r['speedup_vs_1_worker']:.2f}", f"{r['latency_p50_s']:.2f}", f"{r['latency_p99_s']:.2f}",
                      f"{r['work_p50_ms']:.0f}", f"{r['work_p99_ms']:.0f}")
    console.print(table)
    return {"rows": rows}


def _completion_row(n: int, workers: int, wall: float, render_wall: float, results: list[Any]) -> Row:
    latencies = sorted(r.completion_latency_seconds for r in results if r.completion_latency_seconds)
    work: dict[Any, float] = defaultdict(float)
    for r in results:  # the steps' own time, without waiting in the queue
        work[r.order_id] += r.duration_seconds
    per_order = sorted(work.values())
    return {"workers": workers, "orders": n, "wall_s": wall, "orders_per_second": n / wall,
            "render_alone_wall_s": render_wall, "renders_per_second": n / render_wall,
            "ratio_to_render_alone": wall / render_wall,
            "latency_p50_s": statistics.median(latencies), "latency_p99_s": _pct(latencies, 0.99),
            "work_p50_ms": statistics.median(per_order) * 1000, "work_p99_ms": _pct(per_order, 0.99) * 1000}


def _pct(values: list[float], share: float) -> float:
    return values[min(len(values) - 1, int(share * len(values)))] if values else float("nan")


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
def scratch_database(label: str) -> Iterator[tuple[str, Engine]]:
    name = f"healer_bench_{label.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG + "postgres", isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = db.make_engine(PG + name)
    try:
        db.upgrade(engine)
        yield PG + name, engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
    root = work / "assets"
    for name in ASSET_DIRS:
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root


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
                _warm_up(shop, engine, incarnation.base_url, daemon=command is HEALER_RUN)
                cpu, rss, children = health_bench.measure_idle(incarnation.pid, seconds)
                pss = _proportional_mib(incarnation.pid)
            finally:
                slot.stop()
            rows.append({"process": name, "cpu_percent": cpu, "rss_mib": rss, "children_rss_mib": children,
                         "pss_mib": pss})
    healer, baseline = rows
    table = Table("process", "idle CPU % of a core", "RSS MiB", "+ children MiB", "PSS MiB, all", "CPU ÷ baseline",
                  "RSS ÷ baseline", "PSS ÷ baseline",
                  title=f"Idle for {seconds:.0f} s after completing 2 orders, every check at its default interval "
                        "(docker check off: no engine)")
    for r in rows:
        table.add_row(r["process"], f"{r['cpu_percent']:.2f}", f"{r['rss_mib']:.0f}", f"{r['children_rss_mib']:.0f}",
                      f"{r['pss_mib']:.0f}", f"{r['cpu_percent'] / max(baseline['cpu_percent'], 1e-6):.1f}",
                      f"{(r['rss_mib'] + r['children_rss_mib']) / (baseline['rss_mib'] + baseline['children_rss_mib']):.2f}",
                      f"{r['pss_mib'] / baseline['pss_mib']:.2f}")
    console.print(table)
    console.print("RSS counts the pages processes share (libraries) once per process; PSS splits each shared "
                  "page between its sharers, so the tree's PSS is the memory it takes.")
    return {"seconds": seconds, "rows": rows}


def _proportional_mib(pid: int) -> float:
    parent = psutil.Process(pid)
    return sum(p.memory_full_info().pss for p in (parent, *parent.children(recursive=True))) / 2**20


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

ORDER_MIX = (("completed", 0.95), ("pending_payment", 0.03), ("needs_attention", 0.01), ("refunded", 0.01))
COPY_COLUMNS = ("id", "status", "email", "amount_cents", "currency", "template", "title", "subtitle", "created_at",
                "paid_at", "completed_at", "attempts", "last_error_step", "last_error_class", "last_error")


def endpoints(args: argparse.Namespace) -> dict[str, Any]:
    requests, clients, orders = (400 if args.quick else 2000), 16, 100_000
    rows: list[Row] = []
    with scratch_peers("endpoints") as (peers, engine):
        insert_seconds = bulk_insert_orders(engine, orders)
        env = peer_env(peers, peers.moto_url, peers.work_dir / "data", peers.sendgrid.api_key)
        slot = Slot("healer", HEALER_RUN, env, peers.work_dir)
        incarnation = slot.start()
        try:
            _wait_ready(incarnation.ops_url)
            cold = _timed(lambda: http("GET", incarnation.ops_url + "/metrics", timeout=60))
            health_bench.hammer(incarnation.ops_url + "/livez", 100, clients)  # warm: not the baseline's cost
            for path in ("/livez", "/readyz", "/health", "/metrics"):
                started = time.perf_counter()
                latencies = health_bench.hammer(incarnation.ops_url + path, requests, clients)
                wall = time.perf_counter() - started
                p50, p99 = health_bench.summary(latencies)
                rows.append({"endpoint": path, "p50_ms": p50, "p99_ms": p99, "requests_per_second": requests / wall})
        finally:
            slot.stop()
    base = rows[0]
    table = Table("endpoint", "p50 ms", "p99 ms", "req/s", "p50 ÷ /livez", "p99 ÷ /livez",
                  title=f"{requests} requests per endpoint, {clients} concurrent clients, {orders:,} orders in PostgreSQL")
    for r in rows:
        table.add_row(r["endpoint"], f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['requests_per_second']:.0f}",
                      f"{r['p50_ms'] / base['p50_ms']:.2f}", f"{r['p99_ms'] / base['p99_ms']:.2f}")
    console.print(table)
    console.print(f"first /metrics (counts the orders): {cold * 1000:.0f} ms; "
                  f"{orders:,} orders inserted with one COPY in {insert_seconds:.1f} s")
    return {"orders": orders, "requests": requests, "clients": clients, "rows": rows,
            "cold_metrics_ms": cold * 1000, "insert_seconds": insert_seconds}


def bulk_insert_orders(engine: Engine, n: int) -> float:
    """`n` orders in one COPY, in the shop's proportions: mostly completed, some unpaid or failed."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    thresholds, total = [], 0.0
    for status, share in ORDER_MIX:
        total += share
        thresholds.append((total, status))
    for i in range(n):
        status = next(s for limit, s in thresholds if (i % 1000) / 1000 < limit)
        created = now - timedelta(seconds=(n - i) * 30)
        paid = created + timedelta(seconds=60) if status in ("completed", "refunded", "needs_attention") else None
        writer.writerow([uuid.uuid4(), status, f"c{i}@example.com", 4900, "eur", "a4-portrait", "Zoë & Ömer", "Our first dance",
                         created.isoformat(), paid.isoformat() if paid else "",
                         (paid + timedelta(seconds=40)).isoformat() if status == "completed" and paid else "", 0,
                         "render" if status == "needs_attention" else "",
                         "bad_input" if status == "needs_attention" else "",
                         "photo is not a readable image" if status == "needs_attention" else ""])
    buffer.seek(0)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.copy_expert(f"COPY orders ({', '.join(COPY_COLUMNS)}) FROM STDIN WITH (FORMAT csv, NULL '')", buffer)
        raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - started


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


def summary(report: dict[str, Any]) -> None:
    s = report["sections"]
    table = Table("figure", "value", "baseline (same run)", "ratio", title=f"healer benchmarks — {report['command']}")
    if "completion" in s:
        for r in s["completion"]["rows"]:
            table.add_row(f"completion, {r['workers']} worker(s): orders/s", f"{r['orders_per_second']:.2f}",
                          f"render alone {r['renders_per_second']:.2f}/s", f"{r['ratio_to_render_alone']:.2f}x time")
            table.add_row("  payment verified→emailed p50 / p99 s", f"{r['latency_p50_s']:.2f} / {r['latency_p99_s']:.2f}", "", "")
    if "faults" in s:
        h, b = s["faults"]["healer"], s["faults"]["baseline"]
        table.add_row("under faults: paid orders completed", f"{h['completed']} of {h['good']}",
                      f"{b['completed']} of {b['good']}", f"{h['completed'] / max(b['completed'], 1):.2f}")
        table.add_row("under faults: lost", str(len(h["lost"])), str(len(b["lost"])), "")
        table.add_row("under faults: time to completion p50 / p99 s", _pair(h["latency_p50"], h["latency_p99"]),
                      _pair(b["latency_p50"], b["latency_p99"]), "")
        table.add_row("under faults: duplicate emails (all after a kill)", str(h["duplicates"]), str(b["duplicates"]), "")
    if "footprint" in s:
        h, b = s["footprint"]["rows"]
        table.add_row("idle CPU % of a core", f"{h['cpu_percent']:.2f}", f"{b['cpu_percent']:.2f}",
                      f"{h['cpu_percent'] / max(b['cpu_percent'], 1e-6):.1f}")
        table.add_row("idle RSS MiB (with children)", f"{h['rss_mib'] + h['children_rss_mib']:.0f}",
                      f"{b['rss_mib'] + b['children_rss_mib']:.0f}",
                      f"{(h['rss_mib'] + h['children_rss_mib']) / (b['rss_mib'] + b['children_rss_mib']):.2f}")
        table.add_row("idle memory MiB (PSS, process tree)", f"{h['pss_mib']:.0f}", f"{b['pss_mib']:.0f}",
                      f"{h['pss_mib'] / b['pss_mib']:.2f}")
    if "endpoints" in s:
        rows = s["endpoints"]["rows"]
        base = rows[0]
        for r in rows[1:]:
            table.add_row(f"{r['endpoint']} p50 / p99 ms (16 clients, 100k orders)", _pair(r["p50_ms"], r["p99_ms"]),
                          f"/livez {_pair(base['p50_ms'], base['p99_ms'])}", f"{r['p99_ms'] / base['p99_ms']:.2f} (p99)")
    if "reconcile" in s:
        rows = s["reconcile"]["rows"]
        first, steady = rows[0], rows[-1]
        table.add_row("reconcile 10,000 PIs: first run", f"{first['wall_s']:.2f} s, {first['stripe_requests']} req, "
                      f"{first['db_statements']} stmts", "", "")
        table.add_row("reconcile: steady state", f"{steady['wall_s']:.3f} s, {steady['stripe_requests']} req, "
                      f"{steady['db_statements']} stmts", "first run", f"{steady['wall_s'] / first['wall_s']:.3f}")
    console.print(table)


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a:.1f} / {b:.1f}"


def _write(report: dict[str, Any], started: datetime) -> Path:
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2, default=_jsonable))
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
