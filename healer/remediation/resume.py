"""resume_orders: a check turned green again, so the orders waiting on it go now, not at their
next poll."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from checks.base import CheckResult
from fulfilment.errors import one_line
from fulfilment.models import Order, utcnow
from fulfilment.pipeline import NEXT_STEP, STEP_CHECKS
from fulfilment.recording import WAITING_PREFIX
from healer.remediation.audit import Action, Audit, Result

log = logging.getLogger(__name__)

# The checks some step waits on: only these turning green can free waiting orders.
_GATING_CHECKS = frozenset(check for checks in STEP_CHECKS.values() for check in checks)


class OrderResumer:
    """A check is green again: the orders waiting on it go now, not at their next poll."""

    def __init__(self, sessions: sessionmaker[Session], resume_waiting: Callable[[str], int], audit: Audit) -> None:
        self.sessions = sessions
        self.resume_waiting = resume_waiting  # fulfilment.pipeline.Pipeline.resume_waiting
        self.audit = audit

    def on_green(self, new: CheckResult, previous: CheckResult) -> None:
        if new.name not in _GATING_CHECKS:
            return  # no step waits on it
        reason = f"check {new.name} is {new.status} again after failing: {previous.detail}"[:500]
        try:
            if self.audit.dry_run:
                waiting = count_waiting(self.sessions, new.name)
                if waiting:
                    self.audit.record(Action.RESUME_ORDERS, new.name, reason, Result.DRY_RUN,
                                      f"would resume {waiting} waiting order(s) now")
                return
            resumed = self.resume_waiting(new.name)
        except SQLAlchemyError as error:
            log.warning("Could not resume orders waiting on %s: %s", new.name, one_line(error))
            return
        if resumed:
            self.audit.record(Action.RESUME_ORDERS, new.name, reason, Result.SUCCESS,
                              f"{resumed} waiting order(s) resumed now instead of at their next poll")


def count_waiting(sessions: sessionmaker[Session], check: str) -> int:
    """Orders that Pipeline.resume_waiting(check) would resume now."""
    statuses = [status for status, step in NEXT_STEP.items() if check in STEP_CHECKS[step]]
    with sessions() as session:
        return int(session.scalar(
            select(func.count()).select_from(Order).where(
                Order.status.in_(statuses),
                Order.last_error.startswith(WAITING_PREFIX, autoescape=True),
                Order.next_attempt_at > utcnow(),
            )
        ) or 0)
