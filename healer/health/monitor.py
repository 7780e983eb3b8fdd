"""The health monitor: runs the checks, keeps their latest results, and answers from that cache.

Each check runs on its own schedule, in its own thread, under its own timeout (`run_with_timeout`);
a probe that hangs is abandoned, and while it still hangs the check reports it as hanging instead
of starting another, so a dead peer never piles up threads. Readers (`/readyz`, `/health`, the
pipeline's gate) only ever read the cache: they never wait on a probe.

Two rules shape what is *reported*, while the raw result of every probe is kept beside it:
- a failure threshold: a check that was ok (or warning) keeps that status until it has failed
  `failure_threshold` times in a row, so one blip does not flip readiness or gate orders;
- dependencies: a check whose `depends_on` names a failing check reports `skipped: database
  failing` instead of raising a second alarm for the same cause. Scheduled jobs wait on the same
  answers (`failing`, read by healer.jobs.scheduler).

Failures are evidence (`confirm`): a step that fails on a dependency has the checks of that
dependency run at once, in full, outside their schedule; a failure this confirms is reported at once,
whatever the threshold, so the order waits on the check instead of spending its attempts. A check
that is failing probes in full at every run, so its recovery is seen at its next interval and the
orders waiting on it resume (the listeners see failing -> ok).

The configured checks come from `healer.wiring.build_monitor`, the one place that reads Settings.
Lines logged about a check (its transitions, its listeners' actions) carry its name as `check`
(healer.logs); checks.base binds it on the probe's own thread as well.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Protocol

from structlog.contextvars import bound_contextvars

from checks.base import Check, CheckResult, Healthy, Status, Verdict, run_with_timeout, skipped_because
from checks.registry import display_order
from fulfilment.secrets import Redactor

log = logging.getLogger(__name__)

# Called after every recorded result with the reported result and the one it replaces (None the
# first time); compare their statuses to see a transition (e.g. failing -> ok: resume gated work).
Listener = Callable[[CheckResult, CheckResult | None], None]

_SUCCESS = (Status.OK, Status.WARNING)  # the peer answered; what "last success" counts
_HELD = (Status.OK, Status.WARNING)  # statuses a failure below the threshold does not flip
_HANG_REMEDY = "the peer accepts connections but does not answer: check its load and the network path"


class JobScheduler(Protocol):
    """What `schedule` needs of healer.scheduler.Scheduler."""

    def add(self, name: str, func: Callable[[], object], interval_seconds: float, *,
            depends_on: tuple[str, ...]) -> None: ...


@dataclass(frozen=True)
class CheckReport:
    """Everything known about one check: its configuration, reported and raw results."""

    check: Check
    result: CheckResult | None  # as reported (threshold, dependencies); None: not run yet
    raw: CheckResult | None  # what the last probe itself said
    consecutive_failures: int = 0
    last_success: datetime | None = None

    @property
    def name(self) -> str:
        return self.check.name

    def as_dict(self) -> dict[str, object]:
        if self.result is None:
            body: dict[str, object] = {
                "status": "pending", "latency_seconds": None, "detail": "not run yet", "remedy": "",
                "runbook": self.check.runbook.value, "checked_at": None, "data": {},
            }
        else:
            body = self.result.as_dict()
        return {
            "name": self.name,
            **body,
            "last_success": self.last_success.isoformat(timespec="seconds") if self.last_success else None,
            "critical": self.check.critical,
            "interval_seconds": self.check.interval_seconds,
            "timeout_seconds": self.check.timeout_seconds,
            "failure_threshold": self.check.failure_threshold,
            "consecutive_failures": self.consecutive_failures,
            "probe_status": self.raw.status.value if self.raw else None,
        }


@dataclass(frozen=True)
class ReadinessLine:
    name: str
    ok: bool
    reason: str  # "ok", "warning", "excluded", or why it is not ready
    excluded: bool = False


@dataclass(frozen=True)
class Readiness:
    ready: bool
    lines: tuple[ReadinessLine, ...]
    unknown_excludes: tuple[str, ...] = ()  # `?exclude=` names that match no critical check


@dataclass(frozen=True)
class _Entry:
    reported: CheckResult
    raw: CheckResult
    failures: int
    last_success: datetime | None


@dataclass(frozen=True)
class _Probe:
    done: threading.Event
    started: float  # time.monotonic()


@dataclass(frozen=True, kw_only=True)
class _Watched(Check):
    """`inner`, telling `done` when its probe returns.

    run_with_timeout stops waiting for a hung probe but cannot say when it finally ends; this can,
    so the monitor knows whether the previous probe of a check is still running.
    """

    inner: Check
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        # run_check labels the result with the name and runbook of the check it runs.
        object.__setattr__(self, "name", self.inner.name)
        object.__setattr__(self, "runbook", self.inner.runbook)

    def probe(self) -> str | Healthy:
        try:
            return self.inner.probe()
        finally:
            self.done.set()


class HealthMonitor:
    def __init__(
        self, checks: Sequence[Check], *, redact: Redactor = Redactor(), confirm_every_seconds: float = 5.0
    ) -> None:
        names = [check.name for check in checks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"more than one check named {', '.join(duplicates)}")
        by_name = {check.name: check for check in checks}
        self._checks = {name: by_name[name] for name in display_order(names)}
        self._redact = redact
        self._lock = threading.Lock()  # guards _entries and _listeners; never held during a probe
        self._entries: dict[str, _Entry] = {}
        self._generation = 0  # how many results were recorded (`generation`)
        self._listeners: list[Listener] = []
        # One caller at a time per check (a scheduled run and `run_all` may meet); the last probe
        # started per check, which may outlive its caller when it hangs.
        self._callers = {name: threading.Lock() for name in self._checks}
        self._probes: dict[str, _Probe] = {}
        # When each check last ran to confirm a step's failure (time.monotonic(); read and written
        # under that check's caller lock): at most one such probe per check per `confirm_every`.
        self._confirm_every = confirm_every_seconds
        self._confirmed: dict[str, float] = {}

    # -- configuration -----------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Every check's name, in display order."""
        return list(self._checks)

    def check(self, name: str) -> Check:
        return self._checks[name]

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def schedule(self, scheduler: JobScheduler) -> None:
        """One job per check, `check:<name>`, at the check's own interval (first run at once)."""
        for name, check in self._checks.items():
            # Never gated by the scheduler: run() skips a check whose dependency fails, and says so.
            scheduler.add(f"check:{name}", partial(self.run, name), check.interval_seconds, depends_on=())

    # -- running -----------------------------------------------------------------------------------

    def run(self, name: str) -> CheckResult:
        """Probe one check now (unless skipped or still hanging); returns the reported result."""
        check = self._checks[name]
        with self._callers[name], bound_contextvars(check=name):
            if self.failing((name,)):
                # A failing check judges afresh: an answer reused from an earlier probe (the s3
                # check's last round trip, the assets' cached verdict) would hide the fix, and keep
                # the orders that wait on this check waiting.
                check.invalidate()
            raw = self._skipped(check) or self._probe(check)
            return self._record(check, raw)

    def confirm(self, names: tuple[str, ...]) -> str | None:
        """fulfilment.pipeline.Confirm: a step failed in a way that blames the dependency these
        checks watch. Run each of them now, in full (bypassing its interval and anything its probe
        would reuse), and say why the step must wait if one fails; None if they pass (or are
        unknown here), and the failure then counts as usual.

        At most one such probe per check every `confirm_every_seconds`: many orders failing on one
        outage cost one probe. Callers that arrive while it runs wait for it and share its answer.
        """
        known = tuple(name for name in names if name in self._checks)
        for name in known:
            self._confirm(self._checks[name])
        return self.gate(known)

    def _confirm(self, check: Check) -> None:
        with self._callers[check.name], bound_contextvars(check=check.name):
            last = self._confirmed.get(check.name)
            if last is not None and time.monotonic() - last < self._confirm_every:
                return  # answered by a probe this recent (perhaps the one this caller waited for)
            check.invalidate()
            raw = self._skipped(check) or self._probe(check)
            self._confirmed[check.name] = time.monotonic()
            # The failure threshold guards a good status against one probe's blip. Here the probe
            # is not alone: a step has just failed on the same dependency, so a failing probe is the
            # second witness, and the point is to act on it at once (gate the order before its
            # attempts are spent). So a confirmed failure is reported as failing at once, and its
            # listeners and readiness see it as they would a failure past the threshold.
            reported = self._record(check, raw, hold=False)
            log.info("Check %s run at once on a step's failure: %s (%s)", check.name, reported.status.value,
                     reported.detail)

    def run_all(self, names: Iterable[str] | None = None) -> dict[str, CheckResult]:
        """Run the named checks (default: all) once, in parallel; reported results in display order."""
        selected = display_order(self._checks if names is None else names)
        unknown = [name for name in selected if name not in self._checks]
        if unknown:  # before anything runs
            raise KeyError(f"no such check: {', '.join(unknown)}")
        # Checks that others depend on run first, so dependents see this run's answer.
        first = [n for n in selected if any(n in self._checks[m].depends_on for m in selected)]
        rest = [n for n in selected if n not in first]
        results: dict[str, CheckResult] = {}
        with ThreadPoolExecutor(max_workers=max(1, len(selected)), thread_name_prefix="health") as pool:
            for batch in (first, rest):
                results.update(zip(batch, pool.map(self.run, batch), strict=True))
        return {name: results[name] for name in selected}

    def _skipped(self, check: Check) -> CheckResult | None:
        failing = self.failing(check.depends_on)
        if not failing:
            return None
        detail, remedy = skipped_because(failing)
        return CheckResult(check.name, Status.SKIPPED, 0.0, detail, remedy, check.runbook)

    def _probe(self, check: Check) -> CheckResult:
        previous = self._probes.get(check.name)
        if previous is not None and not previous.done.is_set():
            age = time.monotonic() - previous.started
            return CheckResult(
                check.name, Status.FAILING, age,
                f"still hanging: the probe started {age:.0f}s ago has not returned "
                f"(timeout {check.timeout_seconds:g}s); not started again",
                _HANG_REMEDY, check.runbook,
            )
        watched = _Watched(inner=check, timeout_seconds=check.timeout_seconds)
        self._probes[check.name] = _Probe(watched.done, time.monotonic())
        return run_with_timeout(watched)

    def _record(self, check: Check, raw: CheckResult, *, hold: bool = True) -> CheckResult:
        """Keep a probe's result; `hold`: apply the failure threshold (see `confirm`)."""
        raw = self._scrubbed(raw)
        with self._lock:
            entry = self._entries.get(check.name)
            previous = entry.reported if entry else None
            failures = _failures(raw, entry)
            reported = _held(check, raw, previous, failures) if hold else raw
            last_success = raw.checked_at if raw.status in _SUCCESS else (entry.last_success if entry else None)
            self._entries[check.name] = _Entry(reported, raw, failures, last_success)
            self._generation += 1
            listeners = list(self._listeners)
        _log_transition(reported, previous)
        for listener in listeners:
            try:
                listener(reported, previous)
            except Exception:  # one broken listener must not stop the others or the check
                log.exception("Health listener %r failed on check %s", listener, check.name)
        return reported

    def _scrubbed(self, result: CheckResult) -> CheckResult:
        """Belt and braces: the checks never print a secret, and this makes sure of it."""
        detail, remedy = self._redact(result.detail), self._redact(result.remedy)
        if (detail, remedy) == (result.detail, result.remedy):
            return result
        return replace(result, detail=detail, remedy=remedy)

    # -- reading the cache (never waits on a probe) ----------------------------------------------

    @property
    def generation(self) -> int:
        """Changes with every result recorded (the reports, readiness and the verdict follow from
        them): what is made from the reports (the /health body) may be kept until it does. Read it
        before the reports: a result recorded meanwhile then outdates what was made at once."""
        return self._generation

    def results(self) -> dict[str, CheckResult]:
        """The reported result of every check that has run, in display order."""
        with self._lock:
            return {name: self._entries[name].reported for name in self._checks if name in self._entries}

    def reports(self) -> list[CheckReport]:
        return [self.report(name) for name in self._checks]

    def report(self, name: str) -> CheckReport:
        check = self._checks[name]
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            return CheckReport(check, None, None)
        return CheckReport(check, entry.reported, entry.raw, entry.failures, entry.last_success)

    def overall(self) -> Verdict:
        """The word `healer check` prints for the same results: failing when any check fails,
        critical or not (whether that makes healer unready is `ready()`'s question)."""
        return Verdict.of(result.status for result in self.results().values())

    def ready(self, exclude: Iterable[str] = ()) -> Readiness:
        """Whether every critical check (bar `exclude`) has run and is not failing."""
        excluded = set(exclude)
        with self._lock:
            entries = dict(self._entries)
        lines = tuple(_readiness_line(name, entries.get(name), name in excluded)
                      for name, check in self._checks.items() if check.critical)
        unknown = tuple(sorted(excluded - {line.name for line in lines}))
        return Readiness(all(line.ok for line in lines), lines, unknown)

    def failing(self, names: Iterable[str]) -> tuple[str, ...]:
        """Those of `names` whose reported status is failing: what a dependent (a check, a scheduled
        job) waits on. Unknown names and checks not run yet are not failing."""
        with self._lock:
            return tuple(name for name in names
                         if (e := self._entries.get(name)) is not None and e.reported.status is Status.FAILING)

    def gate(self, checks: tuple[str, ...]) -> str | None:
        """fulfilment.pipeline.Gate: why a step must wait ("s3 failing: access denied"), or None.

        Only a *reported* failure gates: a check that is unknown, not run yet, skipped or within
        its failure threshold lets the step go ahead (and the step's own error says the rest).
        """
        results = self.results()
        reasons = [f"{name} failing: {results[name].detail}" for name in checks
                   if name in results and results[name].status is Status.FAILING]
        if not reasons:
            return None
        reason = "; ".join(reasons)
        return reason if len(reason) <= 300 else reason[:297] + "..."


def _log_transition(reported: CheckResult, previous: CheckResult | None) -> None:
    # A status change is news; so is a first answer that is not good. Steady state is not.
    changed = previous.status is not reported.status if previous else reported.status.severity > 0
    if changed:
        level = logging.WARNING if reported.status is Status.FAILING else logging.INFO
        log.log(level, "Check %s is %s: %s", reported.name, reported.status.value, reported.detail)


def _failures(raw: CheckResult, entry: _Entry | None) -> int:
    previous = entry.failures if entry else 0
    if raw.status is Status.FAILING:
        return previous + 1
    return previous if raw.status is Status.SKIPPED else 0


def _held(check: Check, raw: CheckResult, previous: CheckResult | None, failures: int) -> CheckResult:
    """The result to report: a failure below the threshold keeps a known-good status.

    With nothing known before (first run, or after disabled/skipped) a failure is reported at once:
    the threshold guards a good status against blips, it does not delay the first answer.
    """
    if raw.status is not Status.FAILING or failures >= check.failure_threshold:
        return raw
    if previous is None or previous.status not in _HELD:
        return raw
    return replace(
        raw,
        status=previous.status,
        detail=f"probe failed ({failures} of {check.failure_threshold} before failing): {raw.detail}",
    )


def _readiness_line(name: str, entry: _Entry | None, excluded: bool) -> ReadinessLine:
    if excluded:
        return ReadinessLine(name, True, "excluded", excluded=True)
    if entry is None:
        return ReadinessLine(name, False, "not checked yet")
    status = entry.reported.status
    if status is Status.FAILING:
        return ReadinessLine(name, False, entry.reported.detail)
    return ReadinessLine(name, True, "ok" if status is Status.OK else status.value)


# -- the configured checks ---------------------------------------------------------------------------
