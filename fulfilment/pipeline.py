"""Order completion as a durable state machine.

`status` is the last durable milestone. Each step is idempotent, runs outside any database
transaction, and its result (new status + one `order_events` row) is committed in one transaction
guarded by the lease, so a worker that lost its lease can never overwrite another's progress.
Work is claimed with a compare-and-set UPDATE (owner + expiry): several daemons can share one
database, and an order held by a dead worker is picked up again once its lease expires. Lease
expiry and due times are on the database's clock (fulfilment.leases), so daemons whose clocks
disagree still agree on who holds what, and a lease is renewed while a step runs.

This module is the one boundary where step failures are caught, classified and scheduled.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential
from tenacity.stop import stop_base

from fulfilment.errors import ErrorClass, StepError, one_line
from fulfilment.leases import LeaseKeeper, database_time, db_later, db_now, renew_lease
from fulfilment.mailer import Mailer, download_email
from fulfilment.models import Order, OrderEvent, OrderStatus, Outcome, Step, transaction, utcnow
from fulfilment.payments import Payments
from fulfilment.render import PosterInputs
from fulfilment.storage import ObjectStore

log = logging.getLogger(__name__)

# A status and the step that moves an order on from it.
NEXT_STEP: dict[OrderStatus, Step] = {
    OrderStatus.PENDING_PAYMENT: Step.VERIFY_PAYMENT,
    OrderStatus.PAID: Step.MIGRATE_FILES,
    OrderStatus.FILES_MIGRATED: Step.RENDER,
    OrderStatus.PDF_RENDERED: Step.EMAIL,
}
# Where an order stands again when a given step is retried after `needs_attention`.
STATUS_BEFORE: dict[Step, OrderStatus] = {step: status for status, step in NEXT_STEP.items()}
ACTIVE = tuple(s.value for s in NEXT_STEP)
# The story's outcome for a refund made in Stripe: a fact about the payment, not a step attempt.
REFUNDED_OUTCOME = OrderStatus.REFUNDED.value

# The health checks each step depends on: while one is failing, the step waits (no attempt spent).
STEP_CHECKS: dict[Step, tuple[str, ...]] = {
    Step.VERIFY_PAYMENT: ("stripe",),
    Step.MIGRATE_FILES: ("s3",),
    Step.RENDER: ("s3", "assets", "disk", "memory"),
    Step.EMAIL: ("sendgrid",),
}

WAITING_PREFIX = "waiting: "

MAX_PHOTO_BYTES = 60 * 1024 * 1024
MAX_AUDIO_BYTES = 250 * 1024 * 1024
MAX_WAVEFORM_BYTES = 20 * 1024 * 1024

# Returns why a step must wait ("s3 failing: access denied"), or None to go ahead.
Gate = Callable[[tuple[str, ...]], str | None]
RenderFn = Callable[[PosterInputs], bytes]


def never_gated(_checks: tuple[str, ...]) -> str | None:
    return None


class OrderNotFound(LookupError):
    pass


class PaymentNotSucceeded(Exception):
    """Stripe says the order's payment did not succeed; nothing will be fulfilled."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10
    base_seconds: float = 30.0
    max_seconds: float = 1800.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Exponential backoff with equal jitter: half the delay fixed, half random, capped."""
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** max(0, attempt - 1))
        return ceiling / 2 + rng() * ceiling / 2


@dataclass(frozen=True)
class StepResult:
    """What one step did; `healer` turns these into metrics."""

    order_id: uuid.UUID
    step: Step
    outcome: Outcome
    duration_seconds: float
    status: OrderStatus
    error_class: ErrorClass | None = None
    message: str = ""
    completion_latency_seconds: float | None = None  # paid to emailed, on the email step


@dataclass(frozen=True)
class _Done:
    """A finished step: the milestone reached, the columns to set, and a line for the story."""

    status: OrderStatus
    values: dict[str, object]
    message: str


def permanent_key(order_id: uuid.UUID, kind: str, temp_key: str) -> str:
    suffix = PurePosixPath(temp_key).suffix.lower()[:10]
    return f"orders/{order_id}/{kind}{suffix}"


def final_pdf_key(order_id: uuid.UUID) -> str:
    return f"pdfs/final_{order_id}.pdf"


def mask_email(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local[:1]}…@{domain}" if domain else "…"


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
        gate_wait_seconds: float = 15.0,
        observe: Callable[[StepResult], None] = lambda _result: None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.payments = payments
        self.mailer = mailer
        self.render = render
        self.public_base_url = public_base_url.rstrip("/")
        self.retry_policy = retry
        self.lease_seconds = lease_seconds
        self.gate = gate
        self.gate_wait_seconds = gate_wait_seconds
        self.observe = observe
        # The daemon's clock stamps facts (story lines, when a payment was verified or an email
        # sent); who holds a lease and when an order is due are on the database's clock.
        self.clock = clock

    # -- queue ---------------------------------------------------------------------------------

    def claim(self, owner: str, limit: int, exclude: Collection[uuid.UUID] = ()) -> list[uuid.UUID]:
        """Lease up to `limit` due orders to `owner`, oldest due first."""
        with self._transaction() as session:
            candidates = session.scalars(
                select(Order.id)
                .where(Order.status.in_(ACTIVE), Order.next_attempt_at <= db_now(), _lease_free(owner))
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
                .where(Order.id == order_id, Order.status.in_(ACTIVE), _lease_free(owner))
                .values(lease_owner=owner, lease_expires_at=db_later(self.lease_seconds))
            )
            return bool(taken.rowcount == 1)  # type: ignore[attr-defined]

    def request_completion(self, order_id: uuid.UUID) -> OrderStatus:
        """The customer's 'complete my order': verify payment now if we can, then queue the rest.

        Raises OrderNotFound, or PaymentNotSucceeded when Stripe says the payment is not good.
        Whatever else goes wrong downstream, the order is queued and its status returned.
        """
        order = self.get(order_id)
        status = order.order_status
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
            done = self._verify_payment(order)
        except StepError as error:
            if error.error_class in (ErrorClass.PAYMENT_UNVERIFIED, ErrorClass.BAD_INPUT):
                log.warning("Payment not succeeded for order %s: %s", order.id, error.message)
                raise PaymentNotSucceeded(error.message) from error
            log.warning("Payment check deferred for order %s: %s", order.id, error.message)
            return OrderStatus.PENDING_PAYMENT  # unknown: the worker verifies with backoff
        with self._transaction() as session:
            moved = session.execute(
                update(Order)
                .where(Order.id == order.id, Order.status == OrderStatus.PENDING_PAYMENT.value)
                .values(**done.values, status=done.status.value)
            )
            if moved.rowcount == 1:  # type: ignore[attr-defined]
                self._add_event(session, order.id, Step.VERIFY_PAYMENT, Outcome.OK, started, done.message)
        self.observe(StepResult(order.id, Step.VERIFY_PAYMENT, Outcome.OK, time.monotonic() - started, done.status))
        return done.status

    def requeue(self, order_id: uuid.UUID, reason: str) -> OrderStatus:
        """Put an order back in the queue now; a `needs_attention` order resumes where it stopped."""
        with self._transaction() as session:
            order = session.get(Order, order_id, with_for_update=True)
            if order is None:
                raise OrderNotFound(str(order_id))
            status = order.order_status
            now = database_time(session)  # the clock the lease was written on
            if order.lease_expires_at is not None and order.lease_expires_at > now:
                log.warning("Order %s not re-queued: %s holds it right now", order_id, order.lease_owner)
                return status
            if status is OrderStatus.NEEDS_ATTENTION:
                step = Step(order.last_error_step) if order.last_error_step else Step.VERIFY_PAYMENT
                status = STATUS_BEFORE[step]
                if step is Step.VERIFY_PAYMENT and order.payment_verified_at is not None:
                    status = OrderStatus.PAID
            if status not in NEXT_STEP:
                return status
            order.status = status.value
            order.attempts = 0
            order.next_attempt_at = now
            self._add_event(session, order_id, NEXT_STEP[status], Outcome.REQUEUED, None, reason)
        log.info("Order %s re-queued at %s: %s", order_id, status.value, reason)
        return status

    # -- payment facts from Stripe (signed webhooks, reconciliation) ---------------------------
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
            .values(status=OrderStatus.PAID.value, paid_at=paid_at, payment_verified_at=now,
                    stripe_payment_intent_id=payment_intent_id, attempts=0, next_attempt_at=db_now(),
                    last_error_step=None, last_error_class=None, last_error=None,
                    # A worker mid-verification must not overwrite this with its stale answer.
                    lease_owner=None, lease_expires_at=None)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            return False
        self._add_event(session, order_id, Step.VERIFY_PAYMENT, Outcome.OK, None, message)
        log.info("Order %s marked paid: %s", order_id, message)
        return True

    def mark_refunded(
        self, session: Session, order_id: uuid.UUID, message: str, *, expected: OrderStatus | None = None
    ) -> OrderStatus | None:
        """Stripe refunded the payment in full: nothing more is fulfilled. Returns the status the
        order had, or None if there is no such order, it was refunded already (a replay), or it is
        no longer in the `expected` status."""
        order = session.get(Order, order_id, with_for_update=True)
        if order is None or order.order_status is OrderStatus.REFUNDED:
            return None
        if expected is not None and order.order_status is not expected:
            log.error("Order %s was refunded in Stripe but is %s now, not %s: check it (%s)",
                      order_id, order.status, expected.value, message)
            return None
        before = order.order_status
        order.status = OrderStatus.REFUNDED.value
        order.next_attempt_at = None
        # Taking the lease away makes a worker that is mid-step lose its commit, instead of
        # moving the order on from `refunded`.
        order.lease_owner = None
        order.lease_expires_at = None
        self.note(session, order_id, Step.VERIFY_PAYMENT, REFUNDED_OUTCOME, message)
        log.warning("Order %s refunded (was %s): %s", order_id, before.value, message)
        return before

    def note(
        self, session: Session, order_id: uuid.UUID, step: Step, outcome: Outcome | str,
        message: str, error_class: ErrorClass | None = None,
    ) -> None:
        """Add a line to the order's story without changing the order (e.g. a declined card)."""
        session.add(OrderEvent(
            order_id=order_id, at=self.clock(), step=step.value, duration_seconds=0.0,
            outcome=outcome.value if isinstance(outcome, Outcome) else outcome,
            error_class=error_class.value if error_class else None, message=message[:2000],
        ))

    def resume_waiting(self, check: str) -> int:
        """A check turned green: orders waiting on it go now, not at their next poll."""
        statuses = [status.value for status, step in NEXT_STEP.items() if check in STEP_CHECKS[step]]
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
        results: list[StepResult] = []
        while True:
            if stopping():
                self.release(order_id, owner)
                return results
            result = self.run_step(order_id, owner, stopping)
            if result is None:
                return results
            results.append(result)
            if result.outcome is not Outcome.OK or result.status not in NEXT_STEP:
                return results

    def release(self, order_id: uuid.UUID, owner: str) -> None:
        with self._transaction() as session:
            session.execute(
                update(Order)
                .where(Order.id == order_id, Order.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    def run_step(
        self, order_id: uuid.UUID, owner: str, stopping: Callable[[], bool] = lambda: False
    ) -> StepResult | None:
        order = self.get(order_id)
        if order.lease_owner != owner or order.order_status not in NEXT_STEP:
            return None
        if not self._renew(order, owner):
            return None  # ours no longer: another daemon may claim it any moment, so start nothing
        step = NEXT_STEP[order.order_status]
        if step is Step.VERIFY_PAYMENT and not self.payments.enabled:
            pass  # verification disabled: nothing to wait for
        elif (reason := self.gate(STEP_CHECKS[step])) is not None:
            return self._wait(order, step, owner, reason)
        started = time.monotonic()
        try:
            with self._keeping_lease(order, owner, step):
                done = self._execute(step, order)
        except StepError as error:
            return self._fail(order, step, owner, started, error)
        except SQLAlchemyError as error:
            return self._fail(order, step, owner, started, StepError(ErrorClass.DATABASE, one_line(error, 500)))
        except MemoryError:
            return self._fail(order, step, owner, started, StepError(ErrorClass.RESOURCES, "out of memory"))
        except Exception as error:  # a bug must not lose a paid order: record, back off, retry
            log.exception("Unexpected error in step %s for order %s", step.value, order_id)
            return self._fail(order, step, owner, started, StepError(ErrorClass.INTERNAL, one_line(error, 500)))
        return self._succeed(order, step, owner, started, done, stopping)

    def _renew(self, order: Order, owner: str) -> bool:
        """Renew-or-fail before a step starts: the lease must still be live on the database's
        clock, and a step that starts gets a full lease."""
        with self._transaction() as session:
            return renew_lease(session, order.id, owner, order.order_status, self.lease_seconds,
                               only_if_live=True)

    def _keeping_lease(self, order: Order, owner: str, step: Step) -> LeaseKeeper:
        # Renewed while the step's own work runs, not while its result is recorded: that commit
        # stamps a fresh lease itself, and moves the order past the status renewals are guarded by.
        return LeaseKeeper(self.sessions, order.id, owner, order.order_status, self.lease_seconds,
                           doing=step.value)

    def _execute(self, step: Step, order: Order) -> _Done:
        return {
            Step.VERIFY_PAYMENT: self._verify_payment,
            Step.MIGRATE_FILES: self._migrate_files,
            Step.RENDER: self._render,
            Step.EMAIL: self._email,
        }[step](order)

    # -- steps ---------------------------------------------------------------------------------

    def _verify_payment(self, order: Order) -> _Done:
        now = self.clock()
        paid_at = order.paid_at or now
        if not self.payments.enabled:
            return _Done(OrderStatus.PAID, {"paid_at": paid_at}, "payment verification disabled")
        payment = self.payments.verify(
            order_id=str(order.id),
            payment_intent_id=order.stripe_payment_intent_id or "",
            amount_cents=order.amount_cents,
            currency=order.currency,
        )
        log.info("Payment succeeded: %s for order %s", payment.payment_intent_id, order.id)
        return _Done(
            OrderStatus.PAID,
            {"paid_at": paid_at, "payment_verified_at": now},
            f"Payment succeeded: {payment.payment_intent_id} ({payment.amount_cents} {payment.currency})",
        )

    def _migrate_files(self, order: Order) -> _Done:
        copied: list[str] = []
        skipped: list[str] = []
        for kind, temp_key in self._uploads(order):
            target = permanent_key(order.id, kind, temp_key)
            try:
                # Idempotent: a copy already made (same size) is not made again.
                (copied if self.store.copy(temp_key, target) else skipped).append(kind)
            except StepError as error:
                if error.error_class is not ErrorClass.S3_MISSING_FILE:
                    raise
                if self.store.exists(target):  # copied on an earlier run; the upload expired since
                    skipped.append(kind)
                elif kind == "waveform":
                    log.warning("Waveform %s missing for order %s: it will be regenerated", temp_key, order.id)
                    skipped.append("waveform (missing, regenerated at render)")
                else:
                    raise
        log.info("File migration completed successfully for order %s", order.id)
        detail = f"copied {', '.join(copied) or 'nothing'}"
        if skipped:
            detail += f"; already there or skipped: {', '.join(skipped)}"
        return _Done(OrderStatus.FILES_MIGRATED, {}, detail)

    def _uploads(self, order: Order) -> Iterator[tuple[str, str]]:
        for kind in ("photo", "audio"):
            key = getattr(order, f"{kind}_key")
            if not key:
                raise StepError(ErrorClass.BAD_INPUT, f"order has no {kind}_key")
            yield kind, key
        if order.waveform_key:
            yield "waveform", order.waveform_key

    def _render(self, order: Order) -> _Done:
        assert order.photo_key and order.audio_key  # migrate_files guarantees both
        photo = self.store.get(permanent_key(order.id, "photo", order.photo_key), MAX_PHOTO_BYTES)
        audio_key = permanent_key(order.id, "audio", order.audio_key)
        audio = self.store.get(audio_key, MAX_AUDIO_BYTES)
        waveform = None
        if order.waveform_key:
            waveform_key = permanent_key(order.id, "waveform", order.waveform_key)
            if self.store.exists(waveform_key):
                waveform = self.store.get(waveform_key, MAX_WAVEFORM_BYTES)
        inputs = PosterInputs(
            template=order.template,
            title=order.title,
            subtitle=order.subtitle,
            photo=photo,
            waveform_image=waveform,
            audio=audio,
            audio_name=audio_key,
        )
        pdf = self.render(inputs)
        key = final_pdf_key(order.id)
        self.store.put(key, pdf, "application/pdf")
        log.info("PDF generated: %s for order %s", key, order.id)
        note = "" if waveform is not None else " (waveform drawn from the audio)"
        return _Done(OrderStatus.PDF_RENDERED, {"final_pdf_key": key}, f"PDF generated: {key}{note}")

    def _email(self, order: Order) -> _Done:
        token = order.download_token or self._issue_download_token(order)
        link = f"{self.public_base_url}/download/{token}"
        email = download_email(to=order.email, title=order.title, link=link, order_id=str(order.id))
        message_id = self.mailer.send(email)
        # At-least-once: a crash between the provider's 202 and this commit resends the email.
        now = self.clock()
        log.info("Download email sent to %s for order %s", mask_email(order.email), order.id)
        return _Done(
            OrderStatus.COMPLETED,
            {"email_message_id": message_id, "completed_at": now},
            f"Download email sent to {mask_email(order.email)} (message {message_id})",
        )

    def rerender(self, order_id: uuid.UUID) -> str:
        """Render a completed order's poster again from its permanent files and store it where its
        download link looks; returns the key. For a PDF lost from storage or a broken stored key.

        The order stays completed and no email is sent: the customer has the link already, and the
        render is deterministic (the same bytes as the first time). One story line records it.
        Raises StepError as the render step does (files missing, S3 down, an asset gone).
        """
        order = self.get(order_id)
        if order.order_status is not OrderStatus.COMPLETED:
            raise StepError(ErrorClass.BAD_INPUT,
                            f"order {order_id} is {order.status}: only a completed order's PDF is rendered again")
        done = self._render(order)
        key = str(done.values["final_pdf_key"])
        with self._transaction() as session:
            updated = session.execute(update(Order).where(Order.id == order_id,
                                                          Order.status == OrderStatus.COMPLETED.value)
                                      .values(final_pdf_key=key))
            if updated.rowcount != 1:  # type: ignore[attr-defined]  # refunded meanwhile, say
                raise StepError(ErrorClass.BAD_INPUT, f"order {order_id} is no longer completed")
            self.note(session, order_id, Step.RENDER, Outcome.OK,
                      f"{done.message}, again: the stored PDF was unavailable to the download link")
        return key

    def _issue_download_token(self, order: Order) -> str:
        # Committed before sending, so a resent email carries the same link as the first.
        token = secrets.token_urlsafe(32)
        with self._transaction() as session:
            session.execute(
                update(Order)
                .where(Order.id == order.id, Order.download_token.is_(None))
                .values(download_token=token)
            )
            stored = session.scalar(select(Order.download_token).where(Order.id == order.id))
        return stored or token

    # -- recording -----------------------------------------------------------------------------

    def _succeed(
        self, order: Order, step: Step, owner: str, started: float, done: _Done, stopping: Callable[[], bool]
    ) -> StepResult | None:
        recorded_at = self._record_done(order, step, owner, started, done, stopping)
        if recorded_at is None:
            self._lost_lease(order.id, step)
            return None
        latency = None
        if done.status is OrderStatus.COMPLETED and order.paid_at is not None:
            latency = (recorded_at - order.paid_at).total_seconds()
        result = StepResult(order.id, step, Outcome.OK, time.monotonic() - started, done.status,
                            message=done.message, completion_latency_seconds=latency)
        self.observe(result)
        return result

    def _record_done(
        self, order: Order, step: Step, owner: str, started: float, done: _Done, stopping: Callable[[], bool]
    ) -> datetime | None:
        """Commit a step that did its work, retrying through a database outage; the moment it was
        recorded, or None if the order is no longer ours.

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

        def attempt() -> datetime | None:
            nonlocal attempts
            attempts += 1
            now = self.clock()
            if self._commit(order.id, owner, step, self._done_values(done), Outcome.OK, started, done.message,
                            from_status=order.order_status):
                return now
            return now if attempts > 1 and self._recorded_by(order.id, step, owner) else None

        retrying = Retrying(
            retry=retry_if_exception(_connection_lost),
            stop=_StopWhen(stopping),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            before_sleep=lambda state: _log_record_retry(state, order.id, step),
            reraise=True,
        )
        recorded_at = retrying(attempt)
        if attempts > 1:
            log.info("Recorded %s for order %s after %d attempts", step.value, order.id, attempts)
        return recorded_at

    def _done_values(self, done: _Done) -> dict[str, object]:
        values = dict(done.values)
        values.update(status=done.status.value, attempts=0, last_error_step=None, last_error_class=None,
                      last_error=None)
        if done.status in NEXT_STEP:
            values.update(next_attempt_at=db_now(), lease_expires_at=db_later(self.lease_seconds))
        else:
            values.update(next_attempt_at=None, lease_owner=None, lease_expires_at=None)
        return values

    def _recorded_by(self, order_id: uuid.UUID, step: Step, owner: str) -> bool:
        with self._transaction() as session:
            return session.scalar(
                select(OrderEvent.id).where(OrderEvent.order_id == order_id, OrderEvent.step == step.value,
                                            OrderEvent.outcome == Outcome.OK.value, OrderEvent.worker == owner)
                .limit(1)
            ) is not None

    def _fail(
        self, order: Order, step: Step, owner: str, started: float, error: StepError
    ) -> StepResult | None:
        attempts = order.attempts + 1
        give_up = not error.error_class.retryable or attempts >= self.retry_policy.max_attempts
        values: dict[str, object] = {
            "attempts": attempts,
            "last_error_step": step.value,
            "last_error_class": error.error_class.value,
            "last_error": error.message,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        if give_up:
            values.update(status=OrderStatus.NEEDS_ATTENTION.value, next_attempt_at=None)
            outcome, status = Outcome.GAVE_UP, OrderStatus.NEEDS_ATTENTION
            log.error("Order %s needs attention after %d attempt(s) at %s: %s: %s", order.id,
                      attempts, step.value, error.error_class.value, error.message)
        else:
            delay = self.retry_policy.delay(attempts)
            values["next_attempt_at"] = db_later(delay)
            outcome, status = Outcome.FAILED, order.order_status
            log.warning("Step %s failed for order %s (attempt %d, retry in %.0fs): %s: %s", step.value,
                        order.id, attempts, delay, error.error_class.value, error.message)
        try:
            committed = self._commit(order.id, owner, step, values, outcome, started, error.message,
                                     error.error_class, from_status=order.order_status)
        except SQLAlchemyError as db_error:
            # The database itself is down: the lease expires and the step is retried then.
            log.error("Could not record failure of %s for order %s: %s", step.value, order.id,
                      one_line(db_error, 500))
            committed = True
        if not committed:
            self._lost_lease(order.id, step)
            return None
        result = StepResult(order.id, step, outcome, time.monotonic() - started, status,
                            error.error_class, error.message)
        self.observe(result)
        return result

    def _wait(self, order: Order, step: Step, owner: str, reason: str) -> StepResult:
        message = f"{WAITING_PREFIX}{reason}"
        values: dict[str, object] = {
            "next_attempt_at": db_later(self.gate_wait_seconds),
            "lease_owner": None,
            "lease_expires_at": None,
            "last_error_step": step.value,
            "last_error": message,
        }
        # One story line per distinct reason, not one per poll.
        record = order.last_error != message
        if record:
            log.info("Order %s waits before %s: %s", order.id, step.value, reason)
        self._commit(order.id, owner, step, values, Outcome.WAITING if record else None, None, message,
                     from_status=order.order_status)
        return StepResult(order.id, step, Outcome.WAITING, 0.0, order.order_status, message=message)

    def _commit(
        self,
        order_id: uuid.UUID,
        owner: str,
        step: Step,
        values: dict[str, object],
        outcome: Outcome | None,
        started: float | None,
        message: str,
        error_class: ErrorClass | None = None,
        *,
        from_status: OrderStatus,
    ) -> bool:
        """Apply a step's result if we still hold the lease and the order still stands where the
        step found it; False if someone (another worker, a webhook, an operator) moved it meanwhile."""
        with self._transaction() as session:
            updated = session.execute(
                update(Order)
                .where(Order.id == order_id, Order.lease_owner == owner, Order.status == from_status.value)
                .values(**values)
            )
            if updated.rowcount != 1:  # type: ignore[attr-defined]
                return False
            if outcome is not None:
                self._add_event(session, order_id, step, outcome, started, message, error_class, owner)
        return True

    def _add_event(
        self,
        session: Session,
        order_id: uuid.UUID,
        step: Step,
        outcome: Outcome,
        started: float | None,
        message: str,
        error_class: ErrorClass | None = None,
        worker: str | None = None,
    ) -> None:
        session.add(
            OrderEvent(
                order_id=order_id,
                at=self.clock(),
                step=step.value,
                outcome=outcome.value,
                duration_seconds=0.0 if started is None else time.monotonic() - started,
                error_class=error_class.value if error_class else None,
                message=message[:2000],
                worker=worker,
            )
        )

    def _lost_lease(self, order_id: uuid.UUID, step: Step) -> None:
        log.warning("Lost the lease on order %s during %s: another worker has it now", order_id, step.value)

    def _transaction(self) -> AbstractContextManager[Session]:
        return transaction(self.sessions)


def awaiting_payment_clause() -> ColumnElement[bool]:
    # `needs_attention` without `paid_at` gave up at verification (a declined card, say); Stripe
    # saying the payment succeeded after all puts it back on track.
    return or_(
        Order.status == OrderStatus.PENDING_PAYMENT.value,
        and_(Order.status == OrderStatus.NEEDS_ATTENTION.value, Order.paid_at.is_(None)),
    )


def _lease_free(owner: str) -> ColumnElement[bool]:
    return or_(
        Order.lease_expires_at.is_(None),
        Order.lease_expires_at < db_now(),
        Order.lease_owner == owner,  # our own, left behind by a step whose commit failed
    )


class _StopWhen(stop_base):
    """tenacity: stop retrying once `stopping()` is true (the daemon is shutting down)."""

    def __init__(self, stopping: Callable[[], bool]) -> None:
        self.stopping = stopping

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.stopping()


def _connection_lost(error: BaseException) -> bool:
    """The database went away (restart, failover, network), as opposed to a statement it refused."""
    return isinstance(error, OperationalError) or (isinstance(error, DBAPIError) and error.connection_invalidated)


def _log_record_retry(state: RetryCallState, order_id: uuid.UUID, step: Step) -> None:
    # One WARNING per outage and order; the worker's own line says the database is down.
    error = state.outcome.exception() if state.outcome else None
    log.log(logging.WARNING if state.attempt_number == 1 else logging.DEBUG,
            "Could not record %s for order %s (database: %s); retrying until it is back", step.value, order_id,
            one_line(error, 500) if error else "?")


