"""What a canary run found (healer.jobs.canary): each phase's outcome, how long it took, and for a
failure its class, runbook issue and what to do. Read by the metrics, the status page and the CLI,
which need none of what running a canary takes.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from fulfilment.errors import ErrorClass


class Phase(enum.StrEnum):
    STRIPE = "stripe"
    S3 = "s3"
    RENDER = "render"
    EMAIL = "email"
    CLEANUP = "cleanup"


class PhaseOutcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # not reached after an earlier failure, or nothing to try (Stripe off)


# What to do about a failure, by its class; the detail names the file, key or answer involved.
REMEDIES: dict[ErrorClass, str] = {
    ErrorClass.S3_AUTH: "give the S3 credentials GetObject, PutObject (CopyObject) and DeleteObject on S3_BUCKET "
                        "under canary/, orders/ and pdfs/; `healer check s3`",
    ErrorClass.S3_UNAVAILABLE: "check S3_ENDPOINT_URL, S3_REGION and the network path to S3; `healer check s3`",
    ErrorClass.S3_MISSING_FILE: "an object the canary had just written was gone: look for a lifecycle rule or "
                                "replication on canary/ or orders/ that removes objects",
    ErrorClass.ASSET_MISSING: "restore the font, background or template the detail names in HEALER_ASSETS_DIR; "
                              "`healer check assets`",
    ErrorClass.RENDER_ERROR: "fix or restore the template the detail names in HEALER_ASSETS_DIR; `healer check assets`",
    ErrorClass.EMAIL_AUTH: "set a SENDGRID_API_KEY with mail.send, and FROM_EMAIL to a verified sender; "
                           "`healer check sendgrid`",
    ErrorClass.EMAIL_REJECTED: "SendGrid refused the download email itself: its reason is in the detail "
                               "(FROM_EMAIL, the content)",
    ErrorClass.EMAIL_TRANSIENT: "SendGrid is unreachable or throttling: usually passes by itself; check "
                                "SENDGRID_API_BASE and status.sendgrid.com",
    ErrorClass.DATABASE: "check the database: `healer check database`",
    ErrorClass.RESOURCES: "free disk space under HEALER_DATA_DIR, or memory; `healer check disk memory`",
    ErrorClass.PAYMENT_TRANSIENT: "check STRIPE_SECRET_KEY and STRIPE_API_BASE: `healer check stripe`",
    ErrorClass.PAYMENT_UNVERIFIED: "check STRIPE_SECRET_KEY and STRIPE_API_BASE: `healer check stripe`",
    ErrorClass.BAD_INPUT: "the canary's own order was refused (a render over its time or memory limit?): "
                          "check HEALER_RENDER_TIMEOUT_SECONDS and HEALER_RENDER_MEMORY_MB",
    ErrorClass.INTERNAL: "a bug in healer: the daemon's log has the traceback",
}


@dataclass(frozen=True)
class PhaseResult:
    phase: Phase
    outcome: PhaseOutcome
    duration_seconds: float
    detail: str
    error_class: ErrorClass | None = None

    @property
    def runbook(self) -> str | None:
        """The runbook issue of a failure ("3 PDF generation failing"), if it has one."""
        if self.error_class is None or self.error_class.policy.runbook == "-":
            return None
        return self.error_class.policy.runbook

    @property
    def remedy(self) -> str:
        return REMEDIES.get(self.error_class, "") if self.error_class is not None else ""

    def as_dict(self) -> dict[str, object]:
        return {"phase": self.phase.value, "outcome": self.outcome.value,
                "seconds": round(self.duration_seconds, 3), "detail": self.detail,
                "error_class": self.error_class.value if self.error_class else None,
                "runbook": self.runbook, "remedy": self.remedy}


@dataclass(frozen=True)
class CanaryRun:
    order_id: uuid.UUID
    started_at: datetime
    finished_at: datetime
    phases: tuple[PhaseResult, ...]

    @property
    def failure(self) -> PhaseResult | None:
        return next((p for p in self.phases if p.outcome is PhaseOutcome.FAILED), None)

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def duration_seconds(self) -> float:
        return sum(p.duration_seconds for p in self.phases)

    def as_dict(self) -> dict[str, object]:
        return {"status": "ok" if self.ok else "failed", "order_id": str(self.order_id),
                "started_at": self.started_at.isoformat(timespec="seconds"),
                "seconds": round(self.duration_seconds, 3), "phases": [p.as_dict() for p in self.phases]}


@dataclass(frozen=True)
class CanaryState:
    """What the metrics and the status page read: the latest run, when one last passed, and how
    many runs in a row, the latest back, have failed (0 after a pass; counted in memory, so from 0
    again after a restart)."""

    latest: CanaryRun | None = None
    last_success_at: datetime | None = None
    failed_in_a_row: int = 0
