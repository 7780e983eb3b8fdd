"""Failure classes of order completion.

Every fault a step can meet is raised as one `StepError` carrying an `ErrorClass`. The class says
whether a retry can help, which health check watches the dependency (so a retry can wait for that
check to turn green instead of spending attempts), whether a failure is evidence that the dependency
is down (so that check runs at once, fulfilment.pipeline) and which of the shop's six runbook issues
it is.
Inner code raises; the pipeline is the one boundary that catches, records and schedules.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorPolicy:
    retryable: bool
    gated: bool  # retries wait for `checks` to be green without spending attempts
    checks: tuple[str, ...]
    runbook: str
    # A failure of this class blames the dependency, not the order: `checks` run at once, in full,
    # and if one fails the order waits on it without spending the attempt (Pipeline.confirm).
    evidence: bool = False


class ErrorClass(enum.StrEnum):
    S3_AUTH = "s3_auth"
    S3_UNAVAILABLE = "s3_unavailable"
    S3_MISSING_FILE = "s3_missing_file"
    ASSET_MISSING = "asset_missing"
    RENDER_ERROR = "render_error"
    EMAIL_AUTH = "email_auth"
    EMAIL_REJECTED = "email_rejected"
    EMAIL_TRANSIENT = "email_transient"
    EMAIL_UNDELIVERED = "email_undelivered"  # sent, then reported bounced, dropped or blocked by SendGrid
    DATABASE = "database"
    RESOURCES = "resources"
    PAYMENT_UNVERIFIED = "payment_unverified"
    PAYMENT_TRANSIENT = "payment_transient"
    BAD_INPUT = "bad_input"
    INTERNAL = "internal"  # an unexpected exception: a bug, retried with backoff, never silent

    @property
    def policy(self) -> ErrorPolicy:
        return _POLICIES[self]

    @property
    def retryable(self) -> bool:
        return self.policy.retryable


_S3 = "1 S3 permission denied"
_FILES = "2 S3 files missing"
_PDF = "3 PDF generation failing"
_EMAIL = "4 email sending failing"
_DB = "5 database error"
_RES = "6 memory/resource issues"

_POLICIES: dict[ErrorClass, ErrorPolicy] = {
    ErrorClass.S3_AUTH: ErrorPolicy(True, True, ("s3",), _S3, evidence=True),
    # Endpoint unreachable, 5xx or throttled: same check, same wait, but not a credentials fault.
    ErrorClass.S3_UNAVAILABLE: ErrorPolicy(True, True, ("s3",), _S3),
    ErrorClass.S3_MISSING_FILE: ErrorPolicy(False, False, ("orders",), _FILES),
    ErrorClass.ASSET_MISSING: ErrorPolicy(True, True, ("assets",), _PDF, evidence=True),
    ErrorClass.RENDER_ERROR: ErrorPolicy(True, True, ("assets",), _PDF, evidence=True),
    ErrorClass.EMAIL_AUTH: ErrorPolicy(True, True, ("sendgrid",), _EMAIL, evidence=True),
    # SendGrid refused this message (bad recipient, 400/413): resending the same one cannot help.
    ErrorClass.EMAIL_REJECTED: ErrorPolicy(False, False, ("sendgrid",), _EMAIL),
    ErrorClass.EMAIL_TRANSIENT: ErrorPolicy(True, False, ("sendgrid",), _EMAIL),
    # Accepted by SendGrid, then bounced, dropped or blocked (its event webhook says so): nothing
    # retries by itself, since the same address would bounce again; an operator fixes the address
    # and retries, which sends the download email again.
    ErrorClass.EMAIL_UNDELIVERED: ErrorPolicy(False, False, ("sendgrid",), _EMAIL),
    # Not gated before a step (the worker claims nothing while the database check fails), but a
    # failure the check confirms still waits instead of spending the attempt.
    ErrorClass.DATABASE: ErrorPolicy(True, False, ("database",), _DB, evidence=True),
    ErrorClass.RESOURCES: ErrorPolicy(True, True, ("disk", "memory"), _RES, evidence=True),
    ErrorClass.PAYMENT_UNVERIFIED: ErrorPolicy(False, False, ("stripe",), "-"),
    # Stripe unreachable, 429 or 5xx: the payment is not known to be bad, so ask again later.
    ErrorClass.PAYMENT_TRANSIENT: ErrorPolicy(True, False, ("stripe",), "-"),
    ErrorClass.BAD_INPUT: ErrorPolicy(False, False, ("stripe",), "-"),
    ErrorClass.INTERNAL: ErrorPolicy(True, False, (), "-"),
}


class StepError(Exception):
    """A classified failure of one completion step; the message is safe to store and show."""

    def __init__(self, error_class: ErrorClass, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Renders run in a process pool: the error must survive pickling with its class.
        return (StepError, (self.error_class, self.message))

    def __repr__(self) -> str:
        return f"StepError({self.error_class}, {self.message!r})"


class WaveformUnusable(StepError):
    """The shop's waveform image cannot be drawn from, and the render had no audio to fall back
    on: the render step, which leaves the audio out while the image is there, asks again with it."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorClass.BAD_INPUT, message)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (WaveformUnusable, (self.message,))


def one_line(error: BaseException, limit: int = 300) -> str:
    """An unexpected error for a log line or a stored message: its class and its first line
    (drivers and SDKs put a query, a traceback or a response body on the lines after)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:limit]

