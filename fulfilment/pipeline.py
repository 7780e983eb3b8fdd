"""Order completion as a durable state machine: which step comes next, who may work an order
(leases), and the payment facts and operator actions that move an order outside its steps.

`status` is the last durable milestone. The steps themselves are fulfilment.steps; each result is
recorded by fulfilment.recording in one transaction guarded by the lease, so a worker that lost
its lease can never overwrite another's progress. Work is claimed with a compare-and-set UPDATE
(owner + expiry) on the database's clock (fulfilment.leases): several daemons share one database,
an order held by a dead worker is picked up again once its lease expires, and a lease is renewed
while a step runs. `run_step` is the one boundary where step failures are caught and classified.

Failures are evidence: a step that fails on a dependency (an error class with `evidence`, such as
`s3_auth`) asks `confirm` to run that dependency's checks at once, in full. If one fails, the order
waits on it as if the gate had stopped it, without spending the attempt; if they pass, the failure
counts as usual. This is passive health checking (Envoy's outlier detection) confirmed by an active
probe before acting: the step's failure alone could be the order's own fault, and the check's
schedule alone (a write round trip every few minutes) would notice too late to save the attempts.

`run` is one completion attempt: one trace (a root span `order.complete`, a child span per step, on
the OpenTelemetry API, a no-op unless the daemon set up tracing; none for an order that only waits
on a failing check), and the log lines of its thread carry `order_id`, and within a step `step` and
`attempt` (structlog context variables: the worker's thread is the one that logs).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from contextvars import Token
from datetime import datetime

from opentelemetry import context as trace_context
from opentelemetry import trace
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from structlog.contextvars import bound_contextvars

from fulfilment.errors import ErrorClass, StepError, one_line
from fulfilment.leases import LeaseKeeper, database_time, db_later, db_now, lease_for_step, lease_free, release_lease
from fulfilment.mailer import Mailer
from fulfilment.models import Order, OrderStatus, Outcome, Step, transaction, utcnow
from fulfilment.payments import Payments
from fulfilment.recording import WAITING_PREFIX, Recorder, RetryPolicy, StepResult, StoryLine
from fulfilment.steps import RenderFn, Steps
from fulfilment.storage import ObjectStore

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# Span attributes (healer.tracing names the same).
ORDER_ID, ORDER_STEP, ERROR_CLASS = "order.id", "order.step", "error.class"

# A status and the step that moves an order on from it.
NEXT_STEP: dict[OrderStatus, Step] = {
    OrderStatus.PENDING_PAYMENT: Step.VERIFY_PAYMENT,
    OrderStatus.PAID: Step.MIGRATE_FILES,
    OrderStatus.FILES_MIGRATED: Step.RENDER,
    OrderStatus.PDF_RENDERED: Step.EMAIL,
}
# Where an order stands again when a given step is retried after `needs_attention`.
STATUS_BEFORE: dict[Step, OrderStatus] = {step: status for status, step in NEXT_STEP.items()}
ACTIVE = tuple(NEXT_STEP)  # the statuses with a step still to run

# The health checks each step depends on: while one is failing, the step waits (no attempt spent).
STEP_CHECKS: dict[Step, tuple[str, ...]] = {
    Step.VERIFY_PAYMENT: ("stripe",),
    Step.MIGRATE_FILES: ("s3",),
    Step.RENDER: ("s3", "assets", "disk", "memory"),
    Step.EMAIL: ("sendgrid",),
}

# Returns why a step must wait ("s3 failing: access denied"), or None to go ahead.
Gate = Callable[[tuple[str, ...]], str | None]
# Runs the named checks now, in full, because a step's failure blames their dependency; returns
# why the step must wait (one of them failed), or None (they pass: the failure counts).
Confirm = Callable[[tuple[str, ...]], str | None]


def never_gated(_checks: tuple[str, ...]) -> str | None:
    return None


def never_confirmed(_checks: tuple[str, ...]) -> str | None:
    return None


def classified(error: Exception) -> StepError | None:
    """What a step's exception means as a failure class, when it is a fault the pipeline knows: a
    StepError as raised, a database error, an allocation that failed. None: an unexpected error, a
    bug, which the caller logs with its traceback and records as `internal`. (Here, not in
    fulfilment.errors: render processes import that module, and must not load SQLAlchemy.)"""
    if isinstance(error, StepError):
        return error
    if isinstance(error, SQLAlchemyError):
        return StepError(ErrorClass.DATABASE, one_line(error, 500))
    if isinstance(error, MemoryError):
        return StepError(ErrorClass.RESOURCES, "out of memory")
    return None


class OrderNotFound(LookupError):
    pass


class PaymentNotSucceeded(Exception):
    """Stripe says the order's payment did not succeed; nothing will be fulfilled."""


class Pipeline:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        store: ObjectStore,
        payments: Payments,
        mailer: Mailer,
        render: RenderFn,
        public_base_url: str,
        retry: RetryPolicy,
        lease_seconds: int,
        gate: Gate = never_gated,
        confirm: Confirm = never_confirmed,
        gate_wait_seconds: float = 15.0,
        observe: Callable[[StepResult], None] = lambda _result: None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.steps = Steps(sessions, store, payments, mailer, render, public_base_url.rstrip("/"), clock)
        self.recorder = Recorder(sessions, retry, lease_seconds, gate_wait_seconds, frozenset(NEXT_STEP), clock)
        self.lease_seconds = lease_seconds
        self.gate = gate
        self.confirm = confirm
        self.observe = observe  # called here, not by the recorder: tests swap it after construction
        # The daemon's clock stamps facts (story lines, when a payment was verified or an email
        # sent); who holds a lease and when an order is due are on the database's clock.
        self.clock = clock

    # -- queue ---------------------------------------------------------------------------------

    def claim(self, owner: str, limit: int, exclude: Collection[uuid.UUID] = ()) -> list[uuid.UUID]:
        """Lease up to `limit` due orders to `owner`, oldest due first."""
        with self._transaction() as session:
            candidates = session.scalars(
                select(Order.id)
                .where(Order.status.in_(ACTIVE), Order.next_attempt_at <= db_now(), lease_free(owner),
                       Order.is_canary.is_(False))  # the canary runs its own order's steps
                .order_by(Order.next_attempt_at)
                .limit(limit + len(exclude))
            ).all()
        claimed: list[uuid.UUID] = []
        for order_id in candidates:
            if len(claimed) >= limit:
                break
            if order_id not in exclude and self.claim_order(order_id, owner):
                claimed.append(order_id)
        return claimed

    def claim_order(self, order_id: uuid.UUID, owner: str) -> bool:
        """Compare-and-set: take the lease only if nobody else holds a live one."""
        with self._transaction() as session:
            taken = session.execute(
                update(Order)
                .where(Order.id == order_id, Order.status.in_(ACTIVE), lease_free(owner), Order.is_canary.is_(False))
                .values(lease_owner=owner, lease_expires_at=db_later(self.lease_seconds))
            )
            return bool(taken.rowcount == 1)  # type: ignore[attr-defined]

    def request_completion(self, order_id: uuid.UUID) -> OrderStatus:
        """The customer's 'complete my order': verify payment now if we can, then queue the rest.

        Raises OrderNotFound, or PaymentNotSucceeded when Stripe says the payment is not good.
        Whatever else goes wrong downstream, the order is queued and its status returned.
        """
        order = self.get(order_id)
        status = order.status
        if status is OrderStatus.REFUNDED:
            raise PaymentNotSucceeded("the payment was refunded")
        if status is OrderStatus.PENDING_PAYMENT:
            status = self._verify_inline(order)
        if status in NEXT_STEP:
            self._enqueue(order_id, only_if_idle=True)
        return status

    def _verify_inline(self, order: Order) -> OrderStatus:
        started = time.monotonic()
        try:
            done = self.steps.verify_payment(order)
        except StepError as error:
            if error.error_class in (ErrorClass.PAYMENT_UNVERIFIED, ErrorClass.BAD_INPUT):
                log.warning("Payment not succeeded for order %s: %s", order.id, error.message)
                raise PaymentNotSucceeded(error.message) from error
            log.warning("Payment check deferred for order %s: %s", order.id, error.message)
            return OrderStatus.PENDING_PAYMENT  # unknown: the worker verifies with backoff
        with self._transaction() as session:
            moved = session.execute(
                update(Order)
                .where(Order.id == order.id, Order.status == OrderStatus.PENDING_PAYMENT)
                .values(**done.values, status=done.status)
            )
            if moved.rowcount == 1:  # type: ignore[attr-defined]
                self.recorder.add_event(session, order.id, Step.VERIFY_PAYMENT,
                                        StoryLine(Outcome.OK, done.message, started))
        self.observe(StepResult(order.id, Step.VERIFY_PAYMENT, Outcome.OK, time.monotonic() - started, done.status))
        return done.status

    def requeue(self, order_id: uuid.UUID, reason: str) -> OrderStatus:
        """Put an order back in the queue now; a `needs_attention` order resumes where it stopped."""
        with self._transaction() as session:
            order = session.get(Order, order_id, with_for_update=True)
            if order is None:
                raise OrderNotFound(str(order_id))
            status = order.status
            now = database_time(session)  # the clock the lease was written on
            if order.lease_expires_at is not None and order.lease_expires_at > now:
                log.warning("Order %s not re-queued: %s holds it right now", order_id, order.lease_owner)
                return status
            if status is OrderStatus.NEEDS_ATTENTION:
                step = order.last_error_step or Step.VERIFY_PAYMENT
                status = STATUS_BEFORE[step]
                if step is Step.VERIFY_PAYMENT and order.payment_verified_at is not None:
                    status = OrderStatus.PAID
            if status not in NEXT_STEP:
                return status
            if status == order.status and order.next_attempt_at is not None and order.next_attempt_at <= now:
                return status  # already queued: a repeated retry adds no story line and resets nothing
            order.status = status
            order.attempts = 0
            order.next_attempt_at = now
            self.recorder.add_event(session, order_id, NEXT_STEP[status], StoryLine(Outcome.REQUEUED, reason))
        log.info("Order %s re-queued at %s: %s", order_id, status, reason)
        return status

    # -- payment facts from Stripe (signed webhooks, reconciliation), delivery facts from SendGrid
    # These run in the caller's transaction, so the caller's own record of the fact (a stored
    # webhook event id) commits or rolls back together with the order's change.

    def mark_paid(
        self, session: Session, order_id: uuid.UUID, *, payment_intent_id: str, paid_at: datetime,
        message: str,
    ) -> bool:
        """Stripe says this payment succeeded with the order's amount and currency: the order is
        paid (verified) and queued. Compare-and-set on an unpaid order, so a replay changes nothing."""
        now = self.clock()
        moved = session.execute(
            update(Order)
            .where(Order.id == order_id, awaiting_payment_clause(),
                   or_(Order.stripe_payment_intent_id.is_(None),
                       Order.stripe_payment_intent_id == payment_intent_id))
            .values(status=OrderStatus.PAID, paid_at=paid_at, payment_verified_at=now,
                    stripe_payment_intent_id=payment_intent_id, attempts=0, next_attempt_at=db_now(),
                    last_error_step=None, last_error_class=None, last_error=None,
                    # A worker mid-verification must not overwrite this with its stale answer.
                    lease_owner=None, lease_expires_at=None)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            return False
        self.recorder.add_event(session, order_id, Step.VERIFY_PAYMENT, StoryLine(Outcome.OK, message))
        log.info("Order %s marked paid: %s", order_id, message)
        return True

    def mark_refunded(
        self, session: Session, order_id: uuid.UUID, message: str, *, expected: OrderStatus | None = None
    ) -> OrderStatus | None:
        """Stripe refunded the payment in full: nothing more is fulfilled. Returns the status the
        order had, or None if there is no such order, it was refunded already (a replay), or it is
        no longer in the `expected` status."""
        order = session.get(Order, order_id, with_for_update=True)
        if order is None or order.status is OrderStatus.REFUNDED:
            return None
        if expected is not None and order.status is not expected:
            log.error("Order %s was refunded in Stripe but is %s now, not %s: check it (%s)",
                      order_id, order.status, expected, message)
            return None
        before = order.status
        order.status = OrderStatus.REFUNDED
        order.next_attempt_at = None
        # Taking the lease away makes a worker that is mid-step lose its commit, instead of
        # moving the order on from `refunded`.
        order.lease_owner = None
        order.lease_expires_at = None
        self.note(session, order_id, Step.VERIFY_PAYMENT, Outcome.REFUNDED, message)
        log.warning("Order %s refunded (was %s): %s", order_id, before, message)
        return before

    def mark_undelivered(self, session: Session, order_id: uuid.UUID, message: str) -> bool:
        """The download email of a completed order was not delivered (SendGrid's event webhook
        reported it bounced, dropped or blocked): the customer has no link, so the order needs
        attention at the email step, where a retry sends the email again. Compare-and-set on a
        completed order, so an order refunded or being emailed again meanwhile is left alone."""
        moved = session.execute(
            update(Order)
            .where(Order.id == order_id, Order.status == OrderStatus.COMPLETED)
            .values(status=OrderStatus.NEEDS_ATTENTION, next_attempt_at=None, last_error_step=Step.EMAIL,
                    last_error_class=ErrorClass.EMAIL_UNDELIVERED, last_error=message)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            return False
        self.note(session, order_id, Step.EMAIL, Outcome.GAVE_UP, message, ErrorClass.EMAIL_UNDELIVERED)
        log.error("Order %s needs attention: %s", order_id, message)
        return True

    def note(
        self, session: Session, order_id: uuid.UUID, step: Step, outcome: Outcome,
        message: str, error_class: ErrorClass | None = None,
    ) -> None:
        """Add a line to the order's story without changing the order (e.g. a declined card)."""
        self.recorder.add_event(session, order_id, step, StoryLine(outcome, message, error_class=error_class))

    def resume_waiting(self, check: str) -> int:
        """A check turned green: orders waiting on it go now, not at their next poll."""
        statuses = [status for status, step in NEXT_STEP.items() if check in STEP_CHECKS[step]]
        with self._transaction() as session:
            resumed = session.execute(
                update(Order)
                .where(
                    Order.status.in_(statuses),
                    Order.last_error.startswith(WAITING_PREFIX, autoescape=True),
                    Order.next_attempt_at > db_now(),
                )
                .values(next_attempt_at=db_now())
            )
            count = int(resumed.rowcount or 0)  # type: ignore[attr-defined]
        if count:
            log.info("Check %s is green again: %d waiting order(s) resume now", check, count)
        return count

    def _enqueue(self, order_id: uuid.UUID, *, only_if_idle: bool) -> None:
        condition = [Order.id == order_id, Order.status.in_(ACTIVE)]
        if only_if_idle:  # do not cut a running backoff short because the customer clicked again
            condition.append(Order.next_attempt_at.is_(None))
        with self._transaction() as session:
            session.execute(update(Order).where(*condition).values(next_attempt_at=db_now()))

    def get(self, order_id: uuid.UUID) -> Order:
        with self.sessions() as session:
            order = session.get(Order, order_id)
            if order is None:
                raise OrderNotFound(str(order_id))
            return order

    # -- running -------------------------------------------------------------------------------

    def run(
        self, order_id: uuid.UUID, owner: str, stopping: Callable[[], bool] = lambda: False
    ) -> list[StepResult]:
        """Run the order's remaining steps while we hold its lease; stop at the first failure.

        When `stopping()` turns true (shutdown), the lease is handed back between two steps so
        that another daemon can carry on at once instead of waiting for it to expire.
        """
        with bound_contextvars(order_id=str(order_id)), _AttemptTrace(order_id) as attempt:
            results = self._run(order_id, owner, stopping, attempt)
            attempt.finish(results)
            return results

    def _run(
        self, order_id: uuid.UUID, owner: str, stopping: Callable[[], bool], attempt: _AttemptTrace
    ) -> list[StepResult]:
        results: list[StepResult] = []
        leased: Order | None = None  # as the last step's commit left it: leased to us afresh
        while True:
            if stopping():
                self.release(order_id, owner)
                return results
            result = self._run_step(order_id, owner, stopping, attempt, leased)
            if result is None:
                return results
            results.append(result)
            if result.outcome is not Outcome.OK or result.status not in NEXT_STEP:
                return results
            leased = result.order

    def release(self, order_id: uuid.UUID, owner: str) -> None:
        with self._transaction() as session:
            release_lease(session, order_id, owner)

    def run_step(
        self, order_id: uuid.UUID, owner: str, stopping: Callable[[], bool] = lambda: False
    ) -> StepResult | None:
        """The order's next step alone (an attempt of one step)."""
        with _AttemptTrace(order_id) as attempt:
            result = self._run_step(order_id, owner, stopping, attempt)
            attempt.finish([result] if result is not None else [])
            return result

    def _run_step(
        self, order_id: uuid.UUID, owner: str, stopping: Callable[[], bool], attempt: _AttemptTrace,
        leased: Order | None = None,
    ) -> StepResult | None:
        """The order's next step, if `owner` holds a live lease on it; `leased`: the order as the
        previous step's commit left it this instant (with a full lease), else it is read here."""
        order = leased if leased is not None else self._lease_for_step(order_id, owner)
        if order is None:
            return None  # not ours (any longer), or nothing left to do: start nothing
        step = NEXT_STEP[order.status]
        with bound_contextvars(order_id=str(order.id), step=step.value, attempt=order.attempts + 1):
            if step is Step.VERIFY_PAYMENT and not self.steps.payments.enabled:
                pass  # verification disabled: nothing to wait for
            elif (reason := self.gate(STEP_CHECKS[step])) is not None:
                return self.recorder.wait(order, step, owner, reason)
            attempt.begin()
            result = self._traced_attempt(order, step, owner, stopping)
            if result is not None:
                self.observe(result)
            return result

    def _traced_attempt(self, order: Order, step: Step, owner: str, stopping: Callable[[], bool]) -> StepResult | None:
        """The step's span holds its work and the commit of its outcome (whose story line names
        the span); the calls to S3, Stripe and SendGrid, and the render, are its children."""
        attributes = {ORDER_ID: str(order.id), ORDER_STEP: step.value, "order.attempt": order.attempts + 1}
        with tracer.start_as_current_span(step.value, attributes=attributes) as span:
            result = self._attempt(order, step, owner, stopping)
            if result is not None and result.error_class is not None:
                span.set_attribute(ERROR_CLASS, result.error_class.value)
                # The class only: the message is in the story line and the log line of this span.
                span.set_status(trace.StatusCode.ERROR, result.error_class.value)
            return result

    def _attempt(self, order: Order, step: Step, owner: str, stopping: Callable[[], bool]) -> StepResult | None:
        """Run the step and record how it went: the one place its failures are caught and classified."""
        started = time.monotonic()
        try:
            with self._keeping_lease(order, owner, step):
                done = self.steps.run(step, order)
        except Exception as error:
            known = classified(error)
            if known is None:  # a bug must not lose a paid order: record, back off, retry
                log.exception("Unexpected error in step %s for order %s", step, order.id,
                              extra={"error_class": ErrorClass.INTERNAL.value})
            failure = known or StepError(ErrorClass.INTERNAL, one_line(error, 500))
        else:
            return self.recorder.succeed(order, step, owner, started, done, stopping)
        if (reason := self._confirmed(order, step, failure)) is not None:
            return self.recorder.wait_confirmed(order, step, owner, started, failure, reason)
        return self.recorder.fail(order, step, owner, started, failure)

    def _confirmed(self, order: Order, step: Step, failure: StepError) -> str | None:
        """Why the order must wait, when the failure blames a dependency whose check, run now,
        fails too; None when the failure should count."""
        policy = failure.error_class.policy
        if not policy.evidence:
            return None
        reason = self.confirm(policy.checks)
        if reason is None:
            log.info("Step %s failed for order %s with %s, but %s passed when run at once: the attempt counts",
                     step, order.id, failure.error_class, ", ".join(policy.checks))
            return None
        return f"{failure.error_class} confirmed by its check: {reason} (the step: {failure.message})"

    def _lease_for_step(self, order_id: uuid.UUID, owner: str) -> Order | None:
        """Renew-or-fail before a step starts: the lease must still be live on the database's
        clock, and a step that starts gets a full lease; the order as it stands, or None."""
        with self._transaction() as session:
            return lease_for_step(session, order_id, owner, NEXT_STEP, self.lease_seconds)

    def _keeping_lease(self, order: Order, owner: str, step: Step) -> LeaseKeeper:
        # Renewed while the step's own work runs, not while its result is recorded: that commit
        # stamps a fresh lease itself, and moves the order past the status renewals are guarded by.
        return LeaseKeeper(self.sessions, order.id, owner, order.status, self.lease_seconds,
                           doing=step)

    # -- operator and remediation actions --------------------------------------------------

    def rerender(self, order_id: uuid.UUID) -> str:
        """Render a completed order's poster again from its permanent files and store it where its
        download link looks; returns the key. For a PDF lost from storage or a broken stored key.

        The order stays completed and no email is sent: the customer has the link already, and the
        render is deterministic (the same bytes as the first time). One story line records it.
        Raises StepError as the render step does (files missing, S3 down, an asset gone).
        """
        order = self.get(order_id)
        if order.status is not OrderStatus.COMPLETED:
            raise StepError(ErrorClass.BAD_INPUT,
                            f"order {order_id} is {order.status}: only a completed order's PDF is rendered again")
        done = self.steps.render(order)
        key = str(done.values["final_pdf_key"])
        with self._transaction() as session:
            updated = session.execute(update(Order).where(Order.id == order_id,
                                                          Order.status == OrderStatus.COMPLETED)
                                      .values(final_pdf_key=key))
            if updated.rowcount != 1:  # type: ignore[attr-defined]  # refunded meanwhile, say
                raise StepError(ErrorClass.BAD_INPUT, f"order {order_id} is no longer completed")
            self.note(session, order_id, Step.RENDER, Outcome.OK,
                      f"{done.message}, again: the stored PDF was unavailable to the download link")
        return key

    def _transaction(self) -> AbstractContextManager[Session]:
        return transaction(self.sessions)


class _AttemptTrace:
    """One completion attempt's trace: its root span `order.complete`, begun by the first step
    that runs, current until the attempt ends. A root whatever the caller runs under (one trace
    per attempt, not a branch of another); none at all when the order only waits on a failing
    check: that is no attempt, and an outage must not fill the collector with empty traces.
    Exceptions are not recorded on it: a database error's text may quote its statement."""

    def __init__(self, order_id: uuid.UUID) -> None:
        self.order_id = order_id
        self.span: trace.Span | None = None
        self._token: Token[trace_context.Context] | None = None

    def __enter__(self) -> _AttemptTrace:
        return self

    def begin(self) -> None:
        if self.span is None:
            self.span = tracer.start_span("order.complete", context=trace_context.Context(),
                                          attributes={ORDER_ID: str(self.order_id)})
            self._token = trace_context.attach(trace.set_span_in_context(self.span))

    def finish(self, results: list[StepResult]) -> None:
        if self.span is None or not results or not self.span.is_recording():
            return
        last = results[-1]
        self.span.set_attributes({"order.status": last.status.value, "order.outcome": last.outcome.value})
        if last.error_class is not None:
            self.span.set_attribute(ERROR_CLASS, last.error_class.value)

    def __exit__(self, kind: type[BaseException] | None, _error: object, _traceback: object) -> None:
        if self.span is None or self._token is None:
            return
        if kind is not None:
            self.span.set_status(trace.StatusCode.ERROR, kind.__name__)
        trace_context.detach(self._token)
        self.span.end()


def awaiting_payment_clause() -> ColumnElement[bool]:
    # `needs_attention` without `paid_at` gave up at verification (a declined card, say); Stripe
    # saying the payment succeeded after all puts it back on track.
    return or_(
        Order.status == OrderStatus.PENDING_PAYMENT,
        and_(Order.status == OrderStatus.NEEDS_ATTENTION, Order.paid_at.is_(None)),
    )

