"""Several `healer run` replicas on one PostgreSQL, the scenario of tests/e2e/test_replicas.py at a
larger size: paid orders arrive while S3 answers 403 then 500s, SendGrid 429/5xx bursts and revoked
keys, the replica leading reconciliation is SIGKILLed and started again, and the next leader gets
SIGTERM and is started again (tests/faults/replicas.py). Prints what the README's "Running several
replicas" quotes: orders completed and lost, each replica's share of the work, overlapping work,
duplicate emails, time to completion, reconciliation runs per replica and each handover's time.

    .venv/bin/python bench/replicas.py                 # 300 orders, 3 replicas, faults
    .venv/bin/python bench/replicas.py --orders 60 --no-faults

Peers are real and local, as in bench/run.py: a scratch PostgreSQL database on 127.0.0.1:5432
(dropped afterwards), moto's S3 server behind the S3 fault proxy, the SendGrid and Stripe servers
of tests/fakes. PostgreSQL itself is never restarted.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from run import scratch_peers  # noqa: E402
from sqlalchemy import Engine, select  # noqa: E402

from fulfilment.models import OrderEvent, Outcome, Step  # noqa: E402
from tests.faults.ledger import Verdict, judge  # noqa: E402
from tests.faults.replicas import ReplicaPlan, ReplicaRecord, ReplicaRun  # noqa: E402

console = Console(width=120)
WORKER_PID = re.compile(r"^[^:]*:(\d+):")


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="HEALER_WORKERS of each replica")
    parser.add_argument("--arrivals-per-second", type=float, default=6.0)
    parser.add_argument("--no-faults", dest="faults", action="store_false")
    parser.add_argument("--json", action="store_true", help="the figures as one JSON object too")
    args = parser.parse_args()
    plan = ReplicaPlan(orders=args.orders, replicas=args.replicas, workers=args.workers,
                       arrivals_per_second=args.arrivals_per_second, faults=args.faults, converge_seconds=300.0)
    with scratch_peers("replicas") as (peers, engine):
        record = ReplicaRun(plan, peers, engine, log=console.log).run()
        verdict = judge(record.run, peers, engine)
        shares = work_shares(record, engine)
    figures = summary(plan, record, verdict, shares)
    console.print(table(figures))
    if args.json:
        print(json.dumps({"plan": asdict(plan), **figures}, indent=2, default=str))


def work_shares(record: ReplicaRecord, engine: Engine) -> dict[str, int]:
    """Orders emailed (the last step) by each replica, whatever its incarnation."""
    names = {i.pid: slot.name for slot in record.run.slots for i in slot.incarnations}
    with engine.connect() as connection:
        workers = connection.scalars(select(OrderEvent.worker).where(
            OrderEvent.step == Step.EMAIL.value, OrderEvent.outcome == Outcome.OK.value)).all()
    shares: Counter[str] = Counter()
    for worker in workers:
        match = WORKER_PID.match(worker or "")
        shares[names.get(int(match.group(1)), "?") if match else "?"] += 1
    return dict(sorted(shares.items()))


def summary(plan: ReplicaPlan, record: ReplicaRecord, verdict: Verdict, shares: dict[str, int]) -> dict[str, Any]:
    runs = record.reconcile_runs
    return {
        "orders": plan.orders, "replicas": plan.replicas, "faults": plan.faults,
        "completed": verdict.completed, "lost": len(verdict.lost), "emailed_by": shares,
        "overlapping_attempts": len(verdict.overlaps), "steps_done_twice": len(verdict.double_ok),
        "emails": verdict.emails, "duplicate_emails": verdict.duplicates,
        "duplicates_explained_by_the_kill": verdict.duplicates_after_kill,
        "http_500s": verdict.http_500s,
        "time_to_completion_p50_s": verdict.latency_p50, "time_to_completion_p99_s": verdict.latency_p99,
        "last_order_completed_after_s": verdict.makespan,
        "s3_faults_answered": sum(verdict.faults[k] for k in ("s3_403_answers", "s3_500_answers")),
        "sendgrid_faults_answered": sum(verdict.faults[k] for k in
                                        ("sendgrid_401_answers", "sendgrid_429_answers", "sendgrid_5xx_answers")),
        "reconcile_period_s": plan.reconcile_seconds, "reconcile_runs": len(runs),
        "reconcile_runs_by": dict(sorted(Counter(run.replica for run in runs).items())),
        "reconcile_periods": round(record.reconcile_window / plan.reconcile_seconds, 1),
        "reconcile_runner_changes": record.runner_changes,
        "handovers": [{"signal": h.signal, "from": h.leader, "to": h.taken_by,
                       "seconds": None if h.seconds is None else round(h.seconds, 2)} for h in record.handovers],
        "wall_s": round(verdict.wall, 1),
    }


def table(figures: dict[str, Any]) -> Table:
    out = Table("", "", title=f"{figures['orders']} orders, {figures['replicas']} replicas on one PostgreSQL"
                               f"{', S3 and SendGrid faults' if figures['faults'] else ''}")
    for key, value in figures.items():
        if key == "handovers":
            for h in value:
                out.add_row(f"leader {h['signal']}ed", f"{h['from']} -> {h['to']} in {h['seconds']} s")
        elif key not in ("orders", "replicas", "faults"):
            out.add_row(key.replace("_", " "), f"{value:.1f}" if isinstance(value, float) else str(value))
    return out


if __name__ == "__main__":
    started = time.monotonic()
    main()
    console.log(f"done in {time.monotonic() - started:.0f} s")
