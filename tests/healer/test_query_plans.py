"""Issue 17: the per-tick order queries find the few open orders by index, never by reading every
order. Each query is the one the code sends: the code runs for real against a table of mostly
completed orders, a cursor listener keeps the statements it sends, and each is EXPLAINed with its
own parameters. A `Seq Scan on orders` fails the test.

The `/metrics` figures too: the counts by status come from the tally the database keeps
(healer.db.tally), the stuck orders from the open ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from checks.base import CheckFailed, CheckWarning
from checks.orders import OrdersCheck
from fulfilment.models import OrderStatus
from healer import db, orders
from healer.health.metrics import OrderFigures
from healer.jobs.stuck import requeue_stuck
from tests.fakes.query_pipeline import claims_only_pipeline

ORDERS = 50_000  # enough that reading them all costs the planner more than any index
SLA = 600

# History: completed. The last ~0.5% open, in every open status, some stuck (paid long ago, never
# queued), some due, some gave up. One INSERT ... SELECT: the server makes the rows (no round trips).
FILL = f"""
INSERT INTO orders (id, status, email, amount_cents, currency, template, created_at, paid_at,
                    completed_at, next_attempt_at, stripe_payment_intent_id, last_error_class)
SELECT gen_random_uuid(), s.status, 'c' || i || '@example.com', 4900, 'eur', 'a4-portrait',
       now() - (({ORDERS} - i) * interval '30 seconds'),
       CASE WHEN s.status IN ('pending_payment') THEN NULL
            ELSE now() - (({ORDERS} - i) * interval '30 seconds') + interval '1 minute' END,
       CASE WHEN s.status = 'completed' THEN now() - (({ORDERS} - i) * interval '30 seconds') END,
       CASE WHEN s.status IN ('paid', 'files_migrated') AND i % 3 = 0 THEN now() END,
       'pi_' || i,
       CASE WHEN s.status = 'needs_attention' THEN 'render_error' END
FROM generate_series(1, {ORDERS}) AS i,
     LATERAL (SELECT CASE WHEN i <= {ORDERS} - 250 THEN 'completed'
                          ELSE (ARRAY['pending_payment', 'paid', 'files_migrated', 'pdf_rendered',
                                      'needs_attention'])[1 + i % 5] END AS status) AS s
"""


@pytest.fixture
def big_engine(pg_engine: Engine) -> Engine:
    with pg_engine.begin() as conn:
        conn.execute(text(FILL))
    with pg_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE orders"))  # autovacuum's statistics, without waiting for it
    return pg_engine


@contextmanager
def sent_to(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The statements on `orders` the code sends while inside, with their parameters."""
    sent: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if " orders" in statement and not statement.lstrip().upper().startswith("INSERT"):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", keep)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", keep)


def plans(engine: Engine, run: Callable[[], object]) -> list[str]:
    with sent_to(engine) as sent:
        run()
    assert sent, "the code sent no statement on orders"
    found = []
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement, parameters in sent:
            cursor.execute("EXPLAIN " + statement, parameters)  # the plan only: nothing is changed
            found.append("\n".join(row[0] for row in cursor.fetchall()))
    finally:
        raw.rollback()
        raw.close()
    return found


PER_TICK = ("claim", "orders list --stuck", "status page: needs_attention", "money at risk", "stuck sweep",
            "orders check")


def per_tick_queries(sessions: sessionmaker[Session], tmp_path: Path) -> dict[str, Callable[[], object]]:
    pipeline = claims_only_pipeline(sessions, tmp_path)
    return {
        "claim": lambda: pipeline.claim("plans-owner", 10),
        "orders list --stuck": lambda: orders.list_orders(sessions, stuck_after_seconds=SLA),
        "status page: needs_attention": lambda: orders.list_orders(sessions, status=OrderStatus.NEEDS_ATTENTION,
                                                                   limit=21),
        "money at risk": lambda: orders.money_at_risk(sessions),
        "stuck sweep": lambda: requeue_stuck(sessions, sla_seconds=SLA, limit=100),
        "orders check": lambda: OrdersCheck(sessions=sessions, sla_seconds=SLA).probe(),
    }


@pytest.mark.parametrize("name", PER_TICK)
def test_per_tick_query_uses_an_index(big_engine: Engine, tmp_path: Path, name: str) -> None:
    sessions = db.make_session_factory(big_engine)
    run = per_tick_queries(sessions, tmp_path)[name]
    for plan in plans(big_engine, lambda: _quietly(run)):
        assert "Seq Scan on orders" not in plan, f"{name} reads every order:\n{plan}"


def _quietly(run: Callable[[], object]) -> None:
    # The orders check reports what it finds (stuck orders, here) by raising: a verdict, not an error.
    with suppress(CheckWarning, CheckFailed):
        run()


def test_the_fill_is_mostly_history(big_engine: Engine) -> None:
    with big_engine.connect() as conn:
        open_orders = conn.execute(text("SELECT count(*) FROM orders WHERE status <> 'completed'")).scalar_one()
    assert 0 < open_orders <= ORDERS // 100  # else an index would not be the cheaper plan


def test_metrics_figures_use_an_index(big_engine: Engine) -> None:
    figures = OrderFigures(db.make_session_factory(big_engine), SLA, ttl_seconds=0)
    for plan in plans(big_engine, figures._query):
        assert "Seq Scan on orders" not in plan, f"the /metrics figures read every order:\n{plan}"
