"""Reconciles N PaymentIntents (default 10,000, over the three-day look-back) of which a few are out
of step, and prints per run the Stripe requests, database statements and wall time: the first run
(no cursor: the whole window) and then steady state (resuming from the cursor).

Out of step: missed webhooks (paid in Stripe, order still pending), stuck orders (paid long ago,
never queued), orphan payments (no order), and abandoned checkouts (pending orders whose payment
never succeeded). Everything else is a completed order.

Peers are real: PostgreSQL on 127.0.0.1:5432 (a scratch database, dropped afterwards) and the Stripe
wire-format server from tests/fakes, through the real `stripe` library. Database statements are
counted with a SQLAlchemy `before_cursor_execute` listener.

    .venv/bin/python bench/reconcile_bench.py --payments 10000
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import Engine, create_engine, event, insert, text  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from fulfilment.mailer import OutboxMailer  # noqa: E402
from fulfilment.models import Order  # noqa: E402
from fulfilment.payments import StripePayments  # noqa: E402
from fulfilment.pipeline import Pipeline  # noqa: E402
from fulfilment.recording import RetryPolicy  # noqa: E402
from fulfilment.storage import LocalStore  # noqa: E402
from healer import db  # noqa: E402
from healer.health.metrics import Metrics  # noqa: E402
from healer.stripe.findings import FindingKind, ReconcileReport  # noqa: E402
from healer.stripe.reconcile import ReconcileConfig, Reconciler  # noqa: E402
from tests.fakes.stripe_server import FakeStripeServer  # noqa: E402

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/"
console = Console()


@dataclass(frozen=True)
class Mix:
    missed_webhooks: int = 5
    stuck: int = 3
    orphans: int = 2
    abandoned: int = 200


@dataclass(frozen=True)
class Measured:
    name: str
    report: ReconcileReport
    stripe_requests: int
    statements: int
    wall: float


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # shows each orphan payment, reported once
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=10_000)
    parser.add_argument("--steady-runs", type=int, default=3)
    args = parser.parse_args()
    name = f"healer_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG + "postgres", isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        with FakeStripeServer() as stripe:
            results = _run(PG + name, stripe, args.payments, args.steady_runs, Mix())
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    report(args.payments, results)


def _run(url: str, stripe: FakeStripeServer, n: int, steady_runs: int, mix: Mix) -> list[Measured]:
    engine = db.make_engine(url)
    db.upgrade(engine)
    sessions = db.make_session_factory(engine)
    with console.status(f"creating {n} PaymentIntents and their orders"):
        seed(sessions, stripe, n, mix)
    reconciler = Reconciler(sessions, StripePayments(stripe.api_key, api_base=stripe.url).client,
                            _pipeline(sessions, stripe), Metrics(), ReconcileConfig(sla_seconds=600),
                            worker="bench")
    statements = _count_statements(engine)
    results = [_measure("first run (3-day window)", reconciler, stripe, statements)]
    for i in range(steady_runs):
        new = seed_recent(sessions, stripe, per_run=20, missed=1 if i == 0 else 0)
        label = f"steady state {i + 1} (+{new} new payments)"
        results.append(_measure(label, reconciler, stripe, statements))
    engine.dispose()
    return results


def _pipeline(sessions: sessionmaker[Session], stripe: FakeStripeServer) -> Pipeline:
    scratch = Path("/tmp") / f"healer-bench-{uuid.uuid4().hex[:6]}"
    return Pipeline(sessions=sessions, store=LocalStore(scratch / "store"),
                    payments=StripePayments(stripe.api_key, api_base=stripe.url),
                    mailer=OutboxMailer(scratch / "outbox", "bench@shop.example"),
                    render=lambda _inputs: b"", public_base_url="https://shop.example",
                    retry=RetryPolicy(), lease_seconds=120)


def _count_statements(engine: Engine) -> list[int]:
    counter = [0]

    def count(*_args: Any) -> None:
        counter[0] += 1

    event.listen(engine, "before_cursor_execute", count)
    return counter


def _measure(name: str, reconciler: Reconciler, stripe: FakeStripeServer, statements: list[int]) -> Measured:
    requests_before, statements_before = len(stripe.requests), statements[0]
    started = time.perf_counter()
    result = reconciler.run()
    wall = time.perf_counter() - started
    return Measured(name, result, len(stripe.requests) - requests_before,
                    statements[0] - statements_before, wall)


# -- data ---------------------------------------------------------------------------------------------


def seed(sessions: sessionmaker[Session], stripe: FakeStripeServer, n: int, mix: Mix) -> None:
    now = int(time.time())
    spacing = max(1, (3 * 86_400 - 3600) // n)  # spread over the window, the newest an hour old
    kinds = _odd_ones(n, mix)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        created = now - 3600 - i * spacing
        kind = kinds.get(i, "completed")
        order_id = uuid.uuid4()
        status = "requires_payment_method" if kind == "abandoned" else "succeeded"
        meta = {"order_id": str(uuid.uuid4()) if kind == "orphan" else str(order_id)}
        intent = stripe.create_payment_intent(4900, "eur", meta, status=status, created=created)
        if kind != "orphan":
            rows.append(_order_row(order_id, intent["id"], created, kind))
    _insert(sessions, rows)


def _odd_ones(n: int, mix: Mix) -> dict[int, str]:
    """Which payments are out of step, spread through the window so they sit on different pages."""
    odd = ["missed"] * mix.missed_webhooks + ["stuck"] * mix.stuck + ["orphan"] * mix.orphans
    kinds = {i * n // (len(odd) + 1) + 1: kind for i, kind in enumerate(odd)}
    for i in range(mix.abandoned):
        kinds.setdefault(i * n // mix.abandoned + 3, "abandoned")
    return kinds


def _order_row(order_id: uuid.UUID, payment_intent_id: str, created: int, kind: str) -> dict[str, Any]:
    at = datetime.fromtimestamp(created, UTC)
    status = {"missed": "pending_payment", "abandoned": "pending_payment", "stuck": "paid"}.get(kind, "completed")
    paid = status != "pending_payment"
    return {"id": order_id, "status": status, "email": "bench@example.com", "stripe_payment_intent_id": payment_intent_id,
                "amount_cents": 4900, "currency": "eur", "template": "a4-portrait", "title": "", "subtitle": "",
                "created_at": at, "paid_at": at if paid else None, "payment_verified_at": at if paid else None,
                "completed_at": at + timedelta(seconds=40) if status == "completed" else None, "attempts": 0}


def seed_recent(sessions: sessionmaker[Session], stripe: FakeStripeServer, per_run: int, missed: int) -> int:
    """New checkouts since the last run: completed ones, and `missed` whose webhook was lost."""
    rows = []
    for i in range(per_run):
        order_id = uuid.uuid4()
        created = int(time.time()) - i
        intent = stripe.create_payment_intent(4900, "eur", {"order_id": str(order_id)}, created=created)
        rows.append(_order_row(order_id, intent["id"], created, "missed" if i < missed else "completed"))
    _insert(sessions, rows)
    return per_run


def _insert(sessions: sessionmaker[Session], rows: list[dict[str, Any]]) -> None:
    with sessions() as session, session.begin():
        for start in range(0, len(rows), 1000):
            session.execute(insert(Order), rows[start:start + 1000])


# -- output -------------------------------------------------------------------------------------------


def report(n: int, results: list[Measured]) -> None:
    table = Table("run", "payments read", "Stripe requests", "DB statements", "wall s",
                  "missed webhooks", "stuck", "orphans", title=f"Reconciling {n:,} PaymentIntents")
    for m in results:
        r = m.report
        table.add_row(m.name, f"{r.payments_read:,}", str(m.stripe_requests), str(m.statements),
                      f"{m.wall:.2f}", str(r.count(FindingKind.MISSED_WEBHOOK)),
                      str(r.count(FindingKind.STUCK)), str(r.orphans_found))
    console.print(table)
    first = results[0]
    console.print(f"first run: {first.stripe_requests} Stripe requests for {first.report.payments_read:,} "
                  f"payments ({first.report.payments_read / max(first.stripe_requests, 1):.0f} per request), "
                  f"{first.statements} database statements")


if __name__ == "__main__":
    main()
