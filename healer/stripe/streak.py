"""How many reconciliation runs in a row found payments that healer had no webhook for
(healer.stripe.missed): `healer_webhook_missed_runs_in_a_row`, which HealerWebhooksMissing reads.

Computed from the run records at scrape time (healer.health.metrics), so every daemon sharing the
database reports the same figure, whichever daemon (or `healer reconcile`) ran each reconciliation,
and a restart forgets nothing. This module imports nothing that imports the metrics.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from healer.db.models import ReconcileRun, RunResult

STREAK_LIMIT = 10  # counted this far back (runs with sales), and no further


def missed_streak(session: Session, limit: int = STREAK_LIMIT) -> int:
    """Successful runs in a row, newest back, that found missed payments (up to `limit`). Runs that
    judged no sale are passed over: a quiet hour says nothing of webhooks, so it neither extends
    the streak nor ends it; a run with sales and no miss ends it."""
    missed_counts = session.scalars(
        select(ReconcileRun.payments_missed)
        .where(ReconcileRun.result == RunResult.SUCCESS, ReconcileRun.payments_succeeded > 0)
        .order_by(ReconcileRun.id.desc())
        .limit(limit)
    ).all()
    return next((i for i, count in enumerate(missed_counts) if count == 0), len(missed_counts))
