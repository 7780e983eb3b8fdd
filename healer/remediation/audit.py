"""The remediation audit: one row per self-healing action healer took, would have taken (dry-run)
or refused to take (escalated), so an operator can read what the daemon did by itself and why.

Declared on `fulfilment.models.Base` so that one metadata (and one Alembic history) holds the
whole schema; `fulfilment` never imports it. Revision 0003 creates the table, by hand, and this
class must stay in step with it (a test compares them).
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fulfilment.models import Base, UTCDateTime, utcnow


class Action(str, enum.Enum):
    """What healer does by itself; the `action` label of healer_remediations_total."""

    RESTART_CONTAINER = "restart_container"
    REGENERATE_WAVEFORM = "regenerate_waveform"
    RESUME_ORDERS = "resume_orders"
    FREE_SCRATCH = "free_scratch"
    RERENDER_PDF = "rerender_pdf"


class Result(str, enum.Enum):
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
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(255))  # a container name, an order id, a path, a check
    reason: Mapped[str] = mapped_column(Text)  # why: what the check or the step saw
    result: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(8))  # HEALER_REMEDIATION at the time: on | dry-run
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")
    worker: Mapped[str | None] = mapped_column(String(128))  # which daemon, when several share a database

    __table_args__ = (
        Index("ix_remediations_at", "at"),
        # The flap guard asks "restarts of this container since T", and operators filter the same way.
        Index("ix_remediations_action_target", "action", "target", "at"),
    )
