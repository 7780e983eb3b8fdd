"""Orders by status, from the tally the database keeps as it writes (migration 0009): a read whose
cost does not grow with the number of orders.

Triggers on `orders` append one row per status a write changed (+n or -n); the count of a status is
the sum of its rows. `counts` reads every sum in one statement, so one snapshot: an order moving
from one status to another is counted in exactly one of them. `fold` keeps the rows few: once they
pass FOLD_AFTER_ROWS it deletes them and inserts their sums, one row per status, in one transaction,
so every reader sees the same totals before and after. Canary orders are never in the tally.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.orm import Session

from healer.db.models import OrderStatusTally
from healer.jobs.leadership import role_key

log = logging.getLogger(__name__)

# Rows past which a reader folds them: a status change appends two (one per status), so this is a
# few hundred transitions, minutes of a busy shop. Reading them costs less than a millisecond.
FOLD_AFTER_ROWS = 500

# On PostgreSQL one replica folds at a time; the others skip it (the rows wait for the next read).
# Two folds at once would be correct too, but could wait on each other's rows.
FOLD_LOCK_KEY = role_key("order-status-tally")


def counts(session: Session) -> tuple[dict[str, int], int]:
    """Each status's number of orders (statuses with none left out), and how many tally rows it took."""
    rows = session.execute(
        select(OrderStatusTally.status, func.sum(OrderStatusTally.delta), func.count())
        .group_by(OrderStatusTally.status)
    ).all()
    by_status = {status: int(total) for status, total, _ in rows if total}
    return by_status, sum(row_count for _, _, row_count in rows)


def fold(session: Session) -> int:
    """Fold the tally into one row per status (in `session`'s transaction, committed by the
    caller); the number of rows it removed, 0 if another replica is folding."""
    if session.get_bind().dialect.name == "postgresql":
        if not session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": FOLD_LOCK_KEY}):
            return 0
    removed = session.execute(delete(OrderStatusTally).returning(OrderStatusTally.status,
                                                                  OrderStatusTally.delta)).all()
    sums: dict[str, int] = {}
    for status, delta in removed:
        sums[status] = sums.get(status, 0) + delta
    kept = [{"status": status, "delta": total} for status, total in sorted(sums.items()) if total]
    if kept:
        session.execute(insert(OrderStatusTally), kept)
    log.debug("Folded %d order tally rows into %d", len(removed), len(kept))
    return len(removed) - len(kept)
