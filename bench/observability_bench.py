"""What logging and tracing cost when tracing is off: completion throughput with the daemon's JSON
logs at INFO (every step's line, its bound fields, the scrubber) against the same run with logging
silenced (WARNING), tracing off in both (the OpenTelemetry API's no-op). The runs alternate, so a
machine that slows down during the section slows both.

    .venv/bin/python bench/observability_bench.py --orders 20 --rounds 3

Printed as a ratio (logged ÷ silent orders/s); 1.00 within the noise of the machine is "no
measurable cost". The status page and /readyz: /readyz answers from the monitor's memory whether
or not a page is being rendered (see bench/run.py's endpoints section for its latency).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import completion_bench  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from fulfilment.secrets import Redactor  # noqa: E402
from healer import logs  # noqa: E402
from healer.config import LogFormat  # noqa: E402

console = Console()


def measure(orders: int = 20, rounds: int = 3) -> dict[str, Any]:
    """Orders/s at one worker, logged as the daemon logs (JSON, INFO, to a file) and silenced."""
    upload = completion_bench.customer_uploads((completion_bench.JPEG,))[0]
    rates: dict[str, list[float]] = {"silent": [], "json": []}
    log_file = open(os.devnull, "w")  # the handler writes here for the whole section
    stderr = sys.stderr
    try:
        with completion_bench.local_peers(pool_size=6) as peers:
            completion_bench.end_to_end(peers, upload, 4, 1)  # warm: render process, connections
            for _ in range(rounds):
                for mode in ("silent", "json"):
                    sys.stderr = log_file  # healer.logs writes to whatever stderr is now
                    logs.configure("warning" if mode == "silent" else "info", LogFormat.JSON,
                                   Redactor(["bench-secret"]))
                    try:
                        run = completion_bench.end_to_end(peers, upload, orders, 1)
                    finally:
                        sys.stderr = stderr
                    rates[mode].append(orders / run.wall)
                    completion_bench.empty_bucket(peers)
    finally:
        logging.getLogger().setLevel(logging.WARNING)
        log_file.close()
    silent, logged = statistics.median(rates["silent"]), statistics.median(rates["json"])
    return {"orders": orders, "rounds": rounds, "silent_orders_per_second": silent,
            "json_orders_per_second": logged, "json_over_silent": logged / silent, "rates": rates}


def table(result: dict[str, Any]) -> Table:
    out = Table("logging (tracing off)", "orders/s (median)", "÷ silent", "each round",
                title=f"Completion at 1 worker, {result['orders']} orders x {result['rounds']} rounds, 12 MP JPEG")
    for mode, key in (("silenced (WARNING)", "silent"), ("JSON at INFO, scrubbed", "json")):
        rate = result[f"{key}_orders_per_second"]
        out.add_row(mode, f"{rate:.2f}", f"{rate / result['silent_orders_per_second']:.2f}",
                    " ".join(f"{r:.2f}" for r in result["rates"][key]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    console.print(table(measure(args.orders, args.rounds)))


if __name__ == "__main__":
    main()
