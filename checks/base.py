"""What every health check shares: its configuration, its result, and the one boundary that turns
a probe's exceptions into results.

A check is a small frozen dataclass whose fields are its configuration. Its `probe()` returns a
line of detail when all is well and raises `CheckFailed` (or `CheckWarning`, `CheckDisabled`)
when not, each carrying a remedy: what an operator should do, in words tied to the runbook. Only
`run_check` catches; a probe that raises anything else is reported as failing with its exception.
A probe whose dependency fails it raises `CheckSkipped`: one outage, one alarm (the dependency's).
The lines logged while a probe runs carry the check's name (`check`, a structlog context variable,
bound on the probe's own thread: healer.logs).
"""

from __future__ import annotations

import abc
import enum
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar

from structlog.contextvars import bound_contextvars

log = logging.getLogger(__name__)


class Status(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    FAILING = "failing"
    DISABLED = "disabled"  # not configured here (e.g. no Stripe key on the embedded default)
    SKIPPED = "skipped"  # not run because a check it depends on is failing

    @property
    def severity(self) -> int:
        """For worst-of comparisons: ok/disabled/skipped 0, warning 1, failing 2 (see `Verdict`)."""
        return {Status.WARNING: 1, Status.FAILING: 2}.get(self, 0)


class Verdict(enum.StrEnum):
    """The one word for a set of results, said alike by `healer check`, `/health` and the metrics.

    Its exit code follows the Nagios plugin convention: 0 ok, 1 warning, 2 failing, 3 unknown
    (nothing was judged: every check asked for is disabled or skipped, or none ran).
    """

    OK = "ok"
    WARNING = "warning"
    FAILING = "failing"
    UNKNOWN = "unknown"

    @property
    def exit_code(self) -> int:
        return {Verdict.OK: 0, Verdict.WARNING: 1, Verdict.FAILING: 2, Verdict.UNKNOWN: 3}[self]

    @classmethod
    def of(cls, statuses: Iterable[Status]) -> Verdict:
        """Failing if any failed, else warning if any warned, else ok if any passed, else unknown."""
        seen = set(statuses)
        for status, verdict in ((Status.FAILING, cls.FAILING), (Status.WARNING, cls.WARNING), (Status.OK, cls.OK)):
            if status in seen:
                return verdict
        return cls.UNKNOWN


class Runbook(enum.StrEnum):
    """The shop's six known failure modes; every remedy belongs to one (or to none)."""

    S3_PERMISSION = "1 S3 permission denied"
    S3_FILES_MISSING = "2 S3 files missing"
    PDF_GENERATION = "3 PDF generation failing"
    EMAIL = "4 email sending failing"
    DATABASE = "5 database error"
    RESOURCES = "6 memory/resource issues"
    NONE = "-"


class _ProbeOutcome(Exception):
    status: ClassVar[Status]

    def __init__(self, detail: str, remedy: str = "", data: Mapping[str, float] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.remedy = remedy
        self.data = dict(data or {})


class CheckFailed(_ProbeOutcome):
    status = Status.FAILING


class CheckWarning(_ProbeOutcome):
    status = Status.WARNING


class CheckDisabled(_ProbeOutcome):
    status = Status.DISABLED


def skipped_because(failing: Sequence[str]) -> tuple[str, str]:
    """Detail and remedy of a check skipped while the checks it depends on fail: one alarm, theirs."""
    names = ", ".join(failing)
    return f"skipped: {names} failing", f"fix {names} first"


class CheckSkipped(_ProbeOutcome):
    """Raised by a probe that has nothing of its own to judge because a dependency failed it (the
    database refused its query, say): reported as skipped, never as a second alarm for that cause,
    even in the moment before the dependency's own check has flipped to failing."""

    status = Status.SKIPPED

    def __init__(self, failing: Sequence[str], why: str = "", data: Mapping[str, float] | None = None) -> None:
        detail, remedy = skipped_because(failing)
        super().__init__(f"{detail} ({why})" if why else detail, remedy, data)


@dataclass(frozen=True)
class Healthy:
    """What a passing probe may return instead of a bare detail string: detail plus measurements."""

    detail: str
    data: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    latency_seconds: float
    detail: str
    remedy: str = ""
    runbook: Runbook = Runbook.NONE
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    data: Mapping[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in (Status.OK, Status.DISABLED)

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status.value,
            "latency_seconds": round(self.latency_seconds, 4),
            "detail": self.detail,
            "remedy": self.remedy,
            "runbook": self.runbook.value,
            "checked_at": self.checked_at.isoformat(timespec="seconds"),
            "data": dict(self.data),
        }


@dataclass(frozen=True)
class Check(abc.ABC):
    """Base of every probe. Subclasses set `name` and `runbook` and implement `probe()`."""

    name: ClassVar[str]
    runbook: ClassVar[Runbook] = Runbook.NONE

    interval_seconds: float = 30.0
    timeout_seconds: float = 10.0
    critical: bool = True  # critical checks gate readiness
    failure_threshold: int = 2  # consecutive failures before the reported status flips
    # Checks this one needs to judge anything (the database, for a query): while one of them fails,
    # this one is skipped, so that one outage raises one alarm.
    depends_on: tuple[str, ...] = ()

    @abc.abstractmethod
    def probe(self) -> str | Healthy:
        """Detail when healthy; raise CheckFailed / CheckWarning / CheckDisabled otherwise."""

    def invalidate(self) -> None:
        """Make the next probe a full one: drop whatever a probe reuses from an earlier one (a
        cached verdict, a recent write round trip). The monitor calls it when a step's failure is
        evidence against this check; most probes reuse nothing, so by default there is nothing."""
        return None


def run_check(check: Check) -> CheckResult:
    """The boundary: run a probe once, in this thread, and turn what happens into a result."""
    with bound_contextvars(check=check.name):
        return _run_check(check)


def _run_check(check: Check) -> CheckResult:
    started = time.monotonic()
    try:
        outcome = check.probe()
    except _ProbeOutcome as raised:
        return CheckResult(check.name, raised.status, time.monotonic() - started, raised.detail,
                           raised.remedy, check.runbook, data=raised.data)
    except Exception as error:  # a probe's own bug or an unclassified fault: failing, said plainly
        log.warning("Check %s raised %s", check.name, type(error).__name__, exc_info=True)
        return CheckResult(check.name, Status.FAILING, time.monotonic() - started,
                           f"{type(error).__name__}: {error}"[:500], "", check.runbook)
    healthy = outcome if isinstance(outcome, Healthy) else Healthy(outcome)
    return CheckResult(check.name, Status.OK, time.monotonic() - started, healthy.detail, "",
                       check.runbook, data=healthy.data)


def run_with_timeout(check: Check) -> CheckResult:
    """Run a probe in its own daemon thread and stop waiting after its timeout.

    A probe that hangs (a peer that accepts and never answers) keeps its thread, but nobody waits
    on it: the result says it timed out, and the caller decides whether to start another.
    """
    box: list[CheckResult] = []
    thread = threading.Thread(target=lambda: box.append(run_check(check)), name=f"check-{check.name}",
                              daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(check.timeout_seconds)
    if box:
        return box[0]
    return CheckResult(
        check.name,
        Status.FAILING,
        time.monotonic() - started,
        f"no answer within {check.timeout_seconds:g}s (timed out)",
        "the peer accepts connections but does not answer: check its load and the network path",
        check.runbook,
    )
