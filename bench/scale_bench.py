"""Issue 17, "1M orders": the per-tick order queries at 100,000 and at 1,000,000 orders.

Times, at each size, the worker's claim (`Pipeline.claim`), the `/metrics` order figures
(`OrderFigures._query`: the counts from the tally of migration 0009, the stuck orders) and `healer orders list --stuck` (`healer.orders.list_orders`, as the CLI
calls it), each the median of a few runs, and the 1M/100k ratio of each: the goal is under 2.

The orders are the bench's (`bench.run.bulk_insert_orders`, one COPY), shaped into a shop's steady
state: the history completed, and only the last three days' orders still open (a few hundred
unpaid, a few hundred queued, some stuck, some needing attention), so both sizes have the same
backlog and differ only in history. That is what the status index and the tally bet on.

Peers are real: PostgreSQL on 127.0.0.1:5432, a scratch database per size, dropped afterwards.

    .venv/bin/python bench/scale_bench.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from scratch_db import bulk_insert_orders, scratch_database  # noqa: E402
from sqlalchemy import Engine, text  # noqa: E402

from healer import db, orders  # noqa: E402
from healer.health.metrics import OrderFigures  # noqa: E402
from tests.fakes.query_pipeline import claims_only_pipeline  # noqa: E402

SLA_SECONDS = 600  # HEALER_ORDER_SLA_SECONDS' default
CLAIM_BATCH = 10
RUNS = 7
console = Console()

# Orders older than this are history (completed); younger ones keep the mix bulk_insert_orders
# gives them. At its 30 s spacing: 8,640 open-aged orders, of which ~3% unpaid, ~1% given up.
OPEN_WINDOW = "3 days"
# Of the recent unpaid ones, every Nth becomes paid and queued (due now), every Mth paid and never
# queued long ago: stuck, what the sweep and `orders list --stuck` look for.
QUEUED_EVERY, STUCK_EVERY = 2, 7

SHAPE = (
    f"UPDATE orders SET status = 'completed', paid_at = created_at + interval '1 minute',"
    f" completed_at = created_at + interval '2 minutes', last_error_step = NULL, last_error_class = NULL,"
    f" last_error = NULL WHERE status IN ('pending_payment', 'needs_attention')"
    f" AND created_at < now() - interval '{OPEN_WINDOW}'",
    f"WITH recent AS (SELECT id, row_number() OVER (ORDER BY created_at) AS n FROM orders"
    f" WHERE status = 'pending_payment')"
    f" UPDATE orders o SET status = 'paid', paid_at = o.created_at + interval '1 minute',"
    f" next_attempt_at = CASE WHEN r.n % {STUCK_EVERY} = 0 THEN NULL ELSE now() - interval '1 second' END"
    f" FROM recent r WHERE o.id = r.id AND (r.n % {QUEUED_EVERY} = 0 OR r.n % {STUCK_EVERY} = 0)",
)


@contextmanager
def shaped_database(n: int) -> Iterator[Engine]:
    """A database of its own (bench.run.scratch_database) with `n` orders shaped as above."""
    with scratch_database(f"scale_{n}") as (_, engine):
        bulk_insert_orders(engine, n)
        with engine.begin() as conn:
            for statement in SHAPE:
                conn.execute(text(statement))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE orders"))  # as autovacuum would, long before a tick
        yield engine


def _median(action: Callable[[], object], runs: int = RUNS) -> float:
    action()  # warm: connection, plan and buffer caches, as in a running daemon
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_size(n: int, scratch: Path) -> dict[str, Any]:
    """Seconds (median) of each query with `n` orders, and the backlog it ran against."""
    with shaped_database(n) as engine:
        sessions = db.make_session_factory(engine)
        pipeline = claims_only_pipeline(sessions, scratch)
        figures = OrderFigures(sessions, SLA_SECONDS, ttl_seconds=0)
        # One owner throughout: `lease_free(owner)` lets it take its own leases again, so every run
        # claims the same due orders, doing the work of a real claim (select and compare-and-set).
        owner = f"bench-{uuid.uuid4().hex[:6]}"
        claimed = len(pipeline.claim(owner, CLAIM_BATCH))
        stuck = len(orders.list_orders(sessions, stuck_after_seconds=SLA_SECONDS))
        with engine.connect() as conn:
            open_orders = conn.execute(text("SELECT count(*) FROM orders WHERE status NOT IN ('completed', 'refunded')")).scalar_one()
        return {
            "orders": n,
            "open_orders": int(open_orders),
            "claimed": claimed,
            "stuck_listed": stuck,
            "claim_s": _median(lambda: pipeline.claim(owner, CLAIM_BATCH)),
            "metrics_s": _median(figures._query),
            "stuck_list_s": _median(lambda: orders.list_orders(sessions, stuck_after_seconds=SLA_SECONDS)),
        }


def measure(sizes: Sequence[int] = (100_000, 1_000_000), scratch: Path | None = None) -> dict[str, Any]:
    """Each size's figures, and the ratio of the largest size's to the smallest's per query."""
    scratch = scratch or Path("/tmp") / f"healer-scale-{uuid.uuid4().hex[:6]}"
    per_size = [measure_size(n, scratch) for n in sorted(sizes)]
    small, large = per_size[0], per_size[-1]
    tag = f"{large['orders'] // 1000}k_over_{small['orders'] // 1000}k".replace("000k", "m")
    ratios = {f"{query}_{tag}": large[f"{query}_s"] / small[f"{query}_s"]
              for query in ("claim", "metrics", "stuck_list")}
    return {"sizes": per_size, "ratios": ratios}


def tables(result: dict[str, Any]) -> list[Table]:
    figures = Table("orders", "open", "claim ms", "/metrics figures ms", "orders list --stuck ms",
                    title="Per-tick order queries by table size (median)")
    for size in result["sizes"]:
        figures.add_row(f"{size['orders']:,}", f"{size['open_orders']:,}", f"{size['claim_s'] * 1000:.2f}",
                        f"{size['metrics_s'] * 1000:.2f}", f"{size['stuck_list_s'] * 1000:.2f}")
    ratios = Table("ratio", "value", "goal", title="Largest over smallest")
    for key, value in result["ratios"].items():
        ratios.add_row(key, f"{value:.2f}", "< 2")
    return [figures, ratios]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    for table in tables(measure(args.sizes)):
        console.print(table)


if __name__ == "__main__":
    main()
