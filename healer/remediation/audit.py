"""The remediation audit: one row per self-healing action healer took, would have taken (dry-run)
or refused to take (escalated), so an operator can read what the daemon did by itself and why.

Declared on `fulfilment.models.Base` so that one metadata (and one Alembic history) holds the
whole schema; `fulfilment` never imports it. Revision 0003 creates the table, by hand, and this
class must stay in step with it (a test compares them).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String, Text, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker
from structlog.contextvars import bound_contextvars

from fulfilment.errors import one_line
from fulfilment.models import Base, UTCDateTime, enum_column, transaction, utcnow
from healer.config import RemediationMode
from healer.health.metrics import Metrics

log = logging.getLogger(__name__)


class Action(enum.StrEnum):
    """What healer does by itself; the `action` label of healer_remediations_total."""

    RESTART_CONTAINER = "restart_container"
    REGENERATE_WAVEFORM = "regenerate_waveform"
    RESUME_ORDERS = "resume_orders"
    FREE_SCRATCH = "free_scratch"
    RERENDER_PDF = "rerender_pdf"


class Result(enum.StrEnum):
    """How it went; the `result` label of healer_remediations_total."""

    SUCCESS = "success"
    FAILURE = "failure"  # tried, and the action itself failed (the engine refused, S3 was down)
    DRY_RUN = "dry_run"  # HEALER_REMEDIATION=dry-run: recorded what would be done, did nothing
    ESCALATED = "escalated"  # not safe to do (flap guard, OOM kill, nothing to free): left to a human


class Remediation(Base):
    __tablename__ = "remediations"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    action: Mapped[Action] = mapped_column(enum_column(Action, 32))
    target: Mapped[str] = mapped_column(String(255))  # a container name, an order id, a path, a check
    reason: Mapped[str] = mapped_column(Text)  # why: what the check or the step saw
    result: Mapped[Result] = mapped_column(enum_column(Result, 16))
    mode: Mapped[RemediationMode] = mapped_column(enum_column(RemediationMode, 8))  # HEALER_REMEDIATION at the time: on | dry-run
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")
    worker: Mapped[str | None] = mapped_column(String(128))  # which daemon, when several share a database

    __table_args__ = (
        Index("ix_remediations_at", "at"),
        # The flap guard asks "restarts of this container since T", and operators filter the same way.
        Index("ix_remediations_action_target", "action", "target", "at"),
    )


_LOG_LEVELS = {
    Result.SUCCESS: logging.INFO,
    Result.DRY_RUN: logging.INFO,
    Result.FAILURE: logging.WARNING,
    Result.ESCALATED: logging.ERROR,  # healer would not fix it: a human must
}


class Audit:
    """Writes the row, counts the metric and logs the line of every remediation."""

    def __init__(
        self, sessions: sessionmaker[Session], metrics: Metrics, mode: RemediationMode, worker: str | None = None
    ) -> None:
        self.sessions = sessions
        self.metrics = metrics
        self.mode = mode
        self.worker = worker
        # Known label sets exist from start-up, so rate() and absence alerts see them at 0.
        for action in Action:
            for result in Result:
                metrics.remediations.labels(action, result)

    @property
    def dry_run(self) -> bool:
        return self.mode is RemediationMode.DRY_RUN

    def record(self, action: Action, target: str, reason: str, result: Result, detail: str = "") -> None:
        # Bound here too: an action may record from a thread of its own (rerender_pdf's).
        with bound_contextvars(action=action.value):
            self._record(action, target, reason, result, detail)

    def _record(self, action: Action, target: str, reason: str, result: Result, detail: str) -> None:
        self.metrics.remediations.labels(action, result).inc()
        log.log(_LOG_LEVELS[result], "Remediation %s on %s: %s (%s): %s%s", action, target, result,
                self.mode, reason, f"; {detail}" if detail else "")
        try:
            with transaction(self.sessions) as session:
                session.add(Remediation(
                    at=utcnow(), action=action, target=target[:255], reason=reason[:2000],
                    result=result, mode=self.mode, detail=detail[:2000], worker=self.worker,
                ))
        except SQLAlchemyError as error:
            # The action stands (and is counted and logged above); only its row is lost.
            log.error("Remediation %s on %s not recorded: database unavailable: %s", action, target,
                      one_line(error))

    def attempts_since(self, action: Action, target: str, results: Sequence[Result], since: datetime) -> list[float]:
        """When `action` was taken on `target` since `since` (epoch seconds), by any daemon."""
        with self.sessions() as session:
            rows = session.scalars(
                select(Remediation.at).where(
                    Remediation.action == action, Remediation.target == target,
                    Remediation.result.in_(results), Remediation.at >= since,
                )
            ).all()
        return sorted(at.timestamp() for at in rows)


# -- reading it: `healer remediations` ---------------------------------------------------------------


@dataclass(frozen=True)
class RemediationView:
    at: str
    action: str
    target: str
    reason: str
    result: str
    mode: str
    detail: str
    worker: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "at": self.at, "action": self.action, "target": self.target, "reason": self.reason,
            "result": self.result, "mode": self.mode, "detail": self.detail, "worker": self.worker,
        }


def list_remediations(
    sessions: sessionmaker[Session], *, limit: int = 50, action: Action | None = None
) -> list[RemediationView]:
    """The newest remediations first."""
    query = select(Remediation).order_by(Remediation.at.desc(), Remediation.id.desc()).limit(limit)
    if action is not None:
        query = query.where(Remediation.action == action)
    with sessions() as session:
        rows = session.scalars(query).all()
    return [
        RemediationView(r.at.isoformat(timespec="seconds"), r.action, r.target, r.reason, r.result, r.mode,
                        r.detail, r.worker)
        for r in rows
    ]
