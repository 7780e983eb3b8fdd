"""Recording a step's outcome: the order's new state and one line of its story, in one transaction.

Every record is guarded by the lease: it lands only while the worker still holds the order and the
order still stands where the step found it, so a worker that lost its lease (to another daemon, a
webhook, an operator) can never overwrite someone else's progress. A step that did its work is
recorded through a database outage, because forgetting it means doing it again; a failure is
scheduled for a retry with backoff, or gives up to `needs_attention`; a step gated on a failing
check waits without spending an attempt.

Every story line written while an OpenTelemetry span records (a step's, in the completion attempt's
trace) names that span's trace and span, so an order's timeline leads to where its minutes went,
and a later webhook or reconciliation can link its own span to the order (`latest_traces`).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime

from opentelemetry import trace
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from structlog.contextvars import bound_contextvars
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential
from tenacity.stop import stop_base

from fulfilment.errors import ErrorClass, StepError, one_line
from fulfilment.leases import NOTHING_TO_SYNCHRONIZE, db_later, db_now
from fulfilment.models import Order, OrderEvent, OrderStatus, Outcome, Step, database_unreachable, transaction

log = logging.getLogger(__name__)

# `last_error` of an order gated on a failing check; the rest of it says which check and why.
WAITING_PREFIX = "waiting: "


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10
    base_seconds: float = 30.0
    max_seconds: float = 1800.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Exponential backoff with equal jitter: half the delay fixed, half random, capped."""
        ceiling = min(self.max_seconds, self.base_seconds * 2.0 ** max(0, attempt - 1))
        return ceiling / 2 + rng() * ceiling / 2


@dataclass(frozen=True)
class StepResult:
    """What one step did; `healer` turns these into metrics. WAITING with an `error_class`: the step
    ran and failed, and its check confirmed the failure (no attempt spent)."""

    order_id: uuid.UUID
    step: Step
    outcome: Outcome
    duration_seconds: float
    status: OrderStatus
    error_class: ErrorClass | None = None
    message: str = ""
    completion_latency_seconds: float | None = None  # paid to emailed, on the email step
    trace_id: str | None = None  # the completion attempt's trace (W3C hex), when tracing is on
    # The order as this step's commit left it, still leased to its worker for a further step (the
    # commit stamps a full lease), so that step starts without reading it again; None when no
    # further step follows, or when the commit's answer was lost and the order must be read.
    order: Order | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Done:
    """A finished step: the milestone reached, the columns to set, and a line for the story."""

    status: OrderStatus
    values: dict[str, object]
    message: str


@dataclass(frozen=True)
class StoryLine:
    """One `order_events` row to add; `started` (monotonic) gives its duration, None for none."""

    outcome: Outcome
    message: str
    started: float | None = None
    error_class: ErrorClass | None = None


@dataclass(frozen=True)
class OutcomeRecord:
    """A step's result for one order: the columns to set, only if `owner` still holds the order
    and it still stands at `from_status`, and the story line to add with them (None: no line)."""

    order_id: uuid.UUID
    owner: str
    step: Step
    from_status: OrderStatus
    values: dict[str, object] = field(default_factory=dict)
    line: StoryLine | None = None


@dataclass(frozen=True)
class Recorder:
    """Commits steps' outcomes. `continuing` are the statuses a further step moves an order on
    from: a step that reaches one keeps the lease (fresh) for the next step."""

    sessions: sessionmaker[Session]
    retry_policy: RetryPolicy
    lease_seconds: int
    gate_wait_seconds: float
    continuing: frozenset[OrderStatus]
    clock: Callable[[], datetime]

    def succeed(
        self, order: Order, step: Step, owner: str, started: float, done: Done, stopping: Callable[[], bool]
    ) -> StepResult | None:
        """Record a step that did its work; None if the order is no longer ours."""
        recorded = self._record_done(order, step, owner, started, done, stopping)
        if recorded is None:
            _lost_lease(order.id, step)
            return None
        recorded_at, after = recorded
        latency = None
        if done.status is OrderStatus.COMPLETED and order.paid_at is not None:
            latency = (recorded_at - order.paid_at).total_seconds()
        return StepResult(order.id, step, Outcome.OK, time.monotonic() - started, done.status,
                          message=done.message, completion_latency_seconds=latency, trace_id=_trace_id(),
                          order=after if done.status in self.continuing else None)

    def _record_done(
        self, order: Order, step: Step, owner: str, started: float, done: Done, stopping: Callable[[], bool]
    ) -> tuple[datetime, Order | None] | None:
        """Commit a step that did its work, retrying through a database outage; the moment it was
        recorded and the order as the commit left it (None if only a later attempt found it
        recorded), or None if the order is no longer ours.

        The work is done (an email accepted, a PDF stored): forgetting it means doing it again, and
        for the email step that is a second email to the customer. So a lost connection is retried
        until the database is back, or until shutdown (no time limit: giving up would only redo the
        step once the database is back, email included). Each attempt stamps a fresh lease: the
        commit's guard (lease owner and starting status) lets it land only while nobody else has
        claimed the order, and then the order is ours for a full lease again. Should an attempt's
        commit land but its answer be lost with the connection, the next attempt finds the step
        already recorded by us and counts that as done.
        """
        attempts = 0

        def attempt() -> tuple[datetime, Order | None] | None:
            nonlocal attempts
            attempts += 1
            now = self.clock()
            record = OutcomeRecord(order.id, owner, step, order.status, self._done_values(done),
                                   StoryLine(Outcome.OK, done.message, started))
            if (after := self.commit(record)) is not None:
                return now, after
            return (now, None) if attempts > 1 and self._recorded_by(order.id, step, owner) else None

        retrying = Retrying(
            retry=retry_if_exception(database_unreachable),
            stop=_StopWhen(stopping),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            before_sleep=lambda state: _log_record_retry(state, order.id, step),
            reraise=True,
        )
        recorded = retrying(attempt)
        if attempts > 1:
            log.info("Recorded %s for order %s after %d attempts", step, order.id, attempts)
        return recorded

    def _done_values(self, done: Done) -> dict[str, object]:
        values = dict(done.values)
        values.update(status=done.status, attempts=0, last_error_step=None, last_error_class=None,
                      last_error=None)
        if done.status in self.continuing:
            values.update(next_attempt_at=db_now(), lease_expires_at=db_later(self.lease_seconds))
        else:
            values.update(next_attempt_at=None, lease_owner=None, lease_expires_at=None)
        return values

    def _recorded_by(self, order_id: uuid.UUID, step: Step, owner: str) -> bool:
        with self._transaction() as session:
            return session.scalar(
                select(OrderEvent.id).where(OrderEvent.order_id == order_id, OrderEvent.step == step,
                                            OrderEvent.outcome == Outcome.OK, OrderEvent.worker == owner)
                .limit(1)
            ) is not None

    def fail(self, order: Order, step: Step, owner: str, started: float, error: StepError) -> StepResult | None:
        """Record a failed attempt: a retry after a backoff, or `needs_attention` once retrying is
        pointless or the attempts are spent. None if the order is no longer ours."""
        with bound_contextvars(error_class=error.error_class.value):  # on this failure's lines
            return self._fail(order, step, owner, started, error)

    def _fail(self, order: Order, step: Step, owner: str, started: float, error: StepError) -> StepResult | None:
        attempts = order.attempts + 1
        give_up = not error.error_class.retryable or attempts >= self.retry_policy.max_attempts
        values: dict[str, object] = {
            "attempts": attempts,
            "last_error_step": step,
            "last_error_class": error.error_class,
            "last_error": error.message,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        if give_up:
            values.update(status=OrderStatus.NEEDS_ATTENTION, next_attempt_at=None)
            outcome, status = Outcome.GAVE_UP, OrderStatus.NEEDS_ATTENTION
            log.error("Order %s needs attention after %d attempt(s) at %s: %s: %s", order.id,
                      attempts, step, error.error_class, error.message)
        else:
            delay = self.retry_policy.delay(attempts)
            values["next_attempt_at"] = db_later(delay)
            outcome, status = Outcome.FAILED, order.status
            log.warning("Step %s failed for order %s (attempt %d, retry in %.0fs): %s: %s", step,
                        order.id, attempts, delay, error.error_class, error.message)
        line = StoryLine(outcome, error.message, started, error.error_class)
        if not self._commit_failure(OutcomeRecord(order.id, owner, step, order.status, values, line)):
            _lost_lease(order.id, step)
            return None
        return StepResult(order.id, step, outcome, time.monotonic() - started, status,
                          error.error_class, error.message, trace_id=_trace_id())

    def _commit_failure(self, record: OutcomeRecord) -> bool:
        try:
            return self.commit(record) is not None
        except SQLAlchemyError as db_error:
            # The database itself is down: the lease expires and the step is retried then.
            log.error("Could not record failure of %s for order %s: %s", record.step, record.order_id,
                      one_line(db_error, 500))
            return True

    def wait(self, order: Order, step: Step, owner: str, reason: str) -> StepResult:
        """Put off a step gated on a failing check, without spending an attempt."""
        message = f"{WAITING_PREFIX}{reason}"
        # One story line per distinct reason, not one per poll.
        record = order.last_error != message
        if record:
            log.info("Order %s waits before %s: %s", order.id, step, reason)
        line = StoryLine(Outcome.WAITING, message) if record else None
        self.commit(OutcomeRecord(order.id, owner, step, order.status, self._waiting_values(step, message), line))
        return StepResult(order.id, step, Outcome.WAITING, 0.0, order.status, message=message,
                          trace_id=_trace_id())

    def wait_confirmed(
        self, order: Order, step: Step, owner: str, started: float, error: StepError, reason: str
    ) -> StepResult | None:
        """A step that failed on its dependency, whose check then failed too: the order waits on
        that check as a gated one does, and the attempt is not counted (the dependency failed, not
        the order). Unlike a gated wait the step ran, so its failure always gets a story line, with
        its class. None if the order is no longer ours."""
        message = f"{WAITING_PREFIX}{reason}"
        values = self._waiting_values(step, message)
        values["last_error_class"] = error.error_class
        line = StoryLine(Outcome.WAITING, message, started, error.error_class)
        with bound_contextvars(error_class=error.error_class.value):
            log.warning("Order %s waits before %s without spending an attempt: %s", order.id, step, reason)
            if not self._commit_failure(OutcomeRecord(order.id, owner, step, order.status, values, line)):
                _lost_lease(order.id, step)
                return None
        return StepResult(order.id, step, Outcome.WAITING, time.monotonic() - started, order.status,
                          error.error_class, message, trace_id=_trace_id())

    def _waiting_values(self, step: Step, message: str) -> dict[str, object]:
        return {
            "next_attempt_at": db_later(self.gate_wait_seconds),
            "lease_owner": None,
            "lease_expires_at": None,
            "last_error_step": step,
            "last_error": message,
        }

    def commit(self, record: OutcomeRecord) -> Order | None:
        """Apply a step's result if we still hold the lease and the order still stands where the
        step found it: the order as it then stands (read back by the same statement). None if
        someone (another worker, a webhook, an operator) moved it meanwhile."""
        with self._transaction() as session:
            updated = session.scalars(
                update(Order)
                .where(Order.id == record.order_id, Order.lease_owner == record.owner,
                       Order.status == record.from_status)
                .values(**record.values)
                .returning(Order)
                .execution_options(**NOTHING_TO_SYNCHRONIZE)
            ).one_or_none()
            if updated is None:
                return None
            if record.line is not None:
                self.add_event(session, record.order_id, record.step, record.line, record.owner)
        return updated

    def add_event(
        self, session: Session, order_id: uuid.UUID, step: Step, line: StoryLine, worker: str | None = None
    ) -> None:
        """Add a line to the order's story, in the caller's transaction."""
        trace_id, span_id = current_trace() or (None, None)
        session.add(
            OrderEvent(
                order_id=order_id,
                at=self.clock(),
                step=step,
                outcome=line.outcome,
                duration_seconds=0.0 if line.started is None else time.monotonic() - line.started,
                error_class=line.error_class,
                message=line.message[:2000],
                worker=worker,
                trace_id=trace_id,
                span_id=span_id,
            )
        )

    def _transaction(self) -> AbstractContextManager[Session]:
        return transaction(self.sessions)


def current_trace() -> tuple[str, str] | None:
    """(trace id, span id), W3C hex, of the span this runs in, if one is recording; None when
    tracing is off (the API's no-op span records nothing)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    context = span.get_span_context()
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def _trace_id() -> str | None:
    ids = current_trace()
    return ids[0] if ids else None


def latest_traces(session: Session, order_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str]]:
    """Each order's latest story line written under a span: order id -> (trace id, span id). One
    query, whatever the number of orders; orders never traced are absent."""
    if not order_ids:
        return {}
    latest = (select(func.max(OrderEvent.id))
              .where(OrderEvent.order_id.in_(list(order_ids)), OrderEvent.trace_id.is_not(None),
                     OrderEvent.span_id.is_not(None))
              .group_by(OrderEvent.order_id))
    rows = session.execute(select(OrderEvent.order_id, OrderEvent.trace_id, OrderEvent.span_id)
                           .where(OrderEvent.id.in_(latest))).all()
    return {row.order_id: (row.trace_id, row.span_id) for row in rows}


def _lost_lease(order_id: uuid.UUID, step: Step) -> None:
    log.warning("Lost the lease on order %s during %s: another worker has it now", order_id, step)


class _StopWhen(stop_base):
    """tenacity: stop retrying once `stopping()` is true (the daemon is shutting down)."""

    def __init__(self, stopping: Callable[[], bool]) -> None:
        self.stopping = stopping

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.stopping()


def _log_record_retry(state: RetryCallState, order_id: uuid.UUID, step: Step) -> None:
    # One WARNING per outage and order; the worker's own line says the database is down.
    error = state.outcome.exception() if state.outcome else None
    log.log(logging.WARNING if state.attempt_number == 1 else logging.DEBUG,
            "Could not record %s for order %s (database: %s); retrying until it is back", step, order_id,
            one_line(error, 500) if error else "?")
