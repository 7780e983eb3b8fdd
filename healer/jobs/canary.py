"""The canary: a synthetic order taken through the real completion steps, end to end, every
HEALER_CANARY_INTERVAL_SECONDS and on demand (`healer canary`).

blackbox_exporter's `probe_success` asks one endpoint whether it answers, as each check of checks/
asks one dependency. The canary asks whether the business flow works: an S3 policy that lets the s3
check's round trip through but refuses a copy into `orders/`, a template whose real render fails, a
download email SendGrid refuses. Each shows here before a customer's order meets it.

The phases run in order, each timed; the first that fails ends the run (as a failed step ends an
order's attempt), the rest are skipped, and the cleanup always runs:
- `stripe`: a read of the account (one PaymentIntent listed). Nothing is charged.
- `s3`: the canary's row in `orders` (`is_canary`: never claimed, reconciled or swept, and left out
  of every business figure) and its uploads under `canary/`, copied server-side to the order's
  permanent keys by the migrate step.
- `render`: the final PDF rendered with each template in turn by the render step (in a render
  process, under the render limits) and stored where a download link looks for it.
- `email`: the download email through the email step in the provider's sandbox mode: SendGrid
  validates it and delivers nothing (an outbox writes nothing).
- `cleanup`: every object the run wrote, and its row with its story, removed; so are those of a
  run that crashed (its row's lease, an hour, has expired).

A failure is classified as a step's is (fulfilment.errors), so it names its runbook issue and what
to do (healer.jobs.canary_results). A failed canary is a finding, not a failed job: it is reported in
`healer_canary_success{phase}` (and `healer_canary_failed_runs_in_a_row`, what its alert reads), the
status page and one log line, never raised to the scheduler.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.errors import ErrorClass, StepError, one_line
from fulfilment.leases import db_later, db_now
from fulfilment.models import Order, OrderEvent, OrderStatus, Outcome, Step, transaction, utcnow
from fulfilment.pipeline import STEP_CHECKS, classified
from fulfilment.steps import Steps, final_pdf_key, permanent_key
from fulfilment.templates import TEMPLATES_DIR, list_templates
from healer.jobs.canary_results import CanaryRun, CanaryState, Phase, PhaseOutcome, PhaseResult

log = logging.getLogger(__name__)

UPLOAD_PREFIX = "canary"
TITLE = "Canary"
SUBTITLE = "healer's synthetic order"
# A run takes seconds (a few minutes at worst: the render time limit for each template). A canary
# row whose lease has run out belongs to a run that died, and the next run removes what it left.
LEASE_SECONDS = 3600
# Everything the flow touches: the checks of every step, and the database the row lives in. While
# one of them fails, the scheduled canary waits (that check's alarm is the one alarm).
DEPENDS_ON: tuple[str, ...] = tuple(dict.fromkeys(
    ("database", *(check for checks in STEP_CHECKS.values() for check in checks))))


@dataclass(frozen=True)
class Upload:
    kind: str  # photo, audio, waveform: the order's column is `{kind}_key`
    name: str
    data: bytes = field(repr=False)
    content_type: str


@functools.cache
def uploads() -> tuple[Upload, ...]:
    """What the shop's upload page would store for an order: small, deterministic, made once."""
    # Here, not at the top: the healer.demo package imports the CLI, which imports this module.
    from healer.demo.samples import sample_audio, sample_photo, sample_waveform_png

    audio = sample_audio(seed=7, seconds=2.0)
    return (Upload("photo", "photo.jpg", sample_photo(seed=7, size=(480, 640)), "image/jpeg"),
            Upload("audio", "audio.wav", audio, "audio/wav"),
            Upload("waveform", "waveform.png", sample_waveform_png(audio), "image/png"))


def upload_key(order_id: uuid.UUID, upload: Upload) -> str:
    return f"{UPLOAD_PREFIX}/{order_id}/{upload.name}"


def canary_keys(order_id: uuid.UUID) -> list[str]:
    """Every object a run writes for its order: the uploads, their permanent copies, the final PDF."""
    temporary = [upload_key(order_id, u) for u in uploads()]
    permanent = [permanent_key(order_id, u.kind, key) for u, key in zip(uploads(), temporary, strict=True)]
    return [*temporary, *permanent, final_pdf_key(order_id)]


@dataclass(frozen=True)
class Canary:
    """One canary run per `run()`, through `steps` (the daemon's own clients and render function).

    `stripe_read` is the payments client's read of the account, None when payments are not verified
    (`healer demo`); `recipient` is where the sandboxed download email is addressed (the shop's own
    FROM_EMAIL: were sandbox mode ever ignored, no customer would get it).
    """

    sessions: sessionmaker[Session]
    steps: Steps
    assets_dir: Path
    recipient: str
    stripe_read: Callable[[], str] | None
    owner: str = "canary"

    def run(self) -> CanaryRun:
        order_id = uuid.uuid4()
        started_at = utcnow()
        results = [self._stripe()]
        for phase, work in ((Phase.S3, self._s3), (Phase.RENDER, self._render), (Phase.EMAIL, self._email)):
            if any(r.outcome is PhaseOutcome.FAILED for r in results):
                results.append(PhaseResult(phase, PhaseOutcome.SKIPPED, 0.0, "not reached"))
            else:
                results.append(_timed(phase, functools.partial(work, order_id)))
        results.append(_timed(Phase.CLEANUP, functools.partial(self._cleanup, order_id)))
        return CanaryRun(order_id, started_at, utcnow(), tuple(results))

    # -- the phases: each returns what it did, or raises --------------------------------------------

    def _stripe(self) -> PhaseResult:
        if self.stripe_read is None:
            return PhaseResult(Phase.STRIPE, PhaseOutcome.SKIPPED, 0.0,
                               "payment verification off (STRIPE_SECRET_KEY unset): nothing to read")
        return _timed(Phase.STRIPE, self.stripe_read)

    def _s3(self, order_id: uuid.UUID) -> str:
        started = time.monotonic()
        self._insert(order_id)
        for upload in uploads():
            self.steps.store.put(upload_key(order_id, upload), upload.data, upload.content_type)
        done = self.steps.migrate_files(self._order(order_id))
        self._note(order_id, Step.MIGRATE_FILES, done.message, started)
        return f"{len(uploads())} uploads under {UPLOAD_PREFIX}/{order_id}/; {done.message}"

    def _render(self, order_id: uuid.UUID) -> str:
        started = time.monotonic()
        templates = list_templates(self.assets_dir)
        if not templates:
            raise StepError(ErrorClass.ASSET_MISSING, f"no templates (*.toml) in {self.assets_dir / TEMPLATES_DIR}")
        order = self._order(order_id)
        for name in templates:
            order.template = name  # the same order, a poster of each template in turn
            try:
                self.steps.render(order)
            except StepError as error:
                raise StepError(error.error_class, f"template {name}: {error.message}") from None
        message = f"{len(templates)} templates rendered ({', '.join(templates)}) to {final_pdf_key(order_id)}"
        self._note(order_id, Step.RENDER, message, started)
        return message

    def _email(self, order_id: uuid.UUID) -> str:
        started = time.monotonic()
        done = self.steps.email(self._order(order_id), sandbox=True)
        self._note(order_id, Step.EMAIL, done.message, started)
        return done.message

    def _cleanup(self, order_id: uuid.UUID) -> str:
        """This run's objects, then its row; then what runs that died left behind. A row stays
        until its objects are gone: it is how the next run finds them."""
        self._remove(order_id)
        leftovers = self._leftovers(order_id)
        for leftover in leftovers:
            self._remove(leftover)
            log.info("Canary order %s, left by a run that did not finish, removed", leftover)
        said = f"{len(canary_keys(order_id))} objects and the canary order removed"
        return said + (f"; also {len(leftovers)} left by runs that did not finish" if leftovers else "")

    # -- the canary's row ---------------------------------------------------------------------------

    def _insert(self, order_id: uuid.UUID) -> None:
        keys = {f"{u.kind}_key": upload_key(order_id, u) for u in uploads()}
        with transaction(self.sessions) as session:
            # Paid (it charges nothing, and verifies nothing: the stripe phase reads the account),
            # never queued, and held by this run: no worker, sweep or reconciliation takes it.
            session.add(Order(id=order_id, is_canary=True, status=OrderStatus.PAID, email=self.recipient,
                              amount_cents=0, currency="usd", template="canary", title=TITLE, subtitle=SUBTITLE,
                              next_attempt_at=None, lease_owner=self.owner,
                              lease_expires_at=db_later(LEASE_SECONDS), **keys))

    def _order(self, order_id: uuid.UUID) -> Order:
        with self.sessions() as session:
            order = session.get(Order, order_id)
        if order is None:
            raise StepError(ErrorClass.INTERNAL, f"the canary order {order_id} is gone from the database")
        return order

    def _note(self, order_id: uuid.UUID, step: Step, message: str, started: float) -> None:
        """A line of the canary order's story: `healer orders show` tells how far a run got."""
        with transaction(self.sessions) as session:
            session.add(OrderEvent(order_id=order_id, at=utcnow(), step=step, outcome=Outcome.OK,
                                   duration_seconds=time.monotonic() - started, message=message,
                                   worker=self.owner))

    def _leftovers(self, current: uuid.UUID) -> list[uuid.UUID]:
        with self.sessions() as session:
            return list(session.scalars(select(Order.id).where(
                Order.is_canary.is_(True), Order.id != current,
                or_(Order.lease_expires_at.is_(None), Order.lease_expires_at < db_now()))))

    def _remove(self, order_id: uuid.UUID) -> None:
        for key in canary_keys(order_id):
            self.steps.store.delete(key)  # idempotent: a key never written is no error
        with transaction(self.sessions) as session:
            session.execute(delete(OrderEvent).where(OrderEvent.order_id == order_id))
            session.execute(delete(Order).where(Order.id == order_id, Order.is_canary.is_(True)))


def _timed(phase: Phase, work: Callable[[], str]) -> PhaseResult:
    """Run one phase: the boundary where its failure is caught and classified, as a step's is."""
    started = time.monotonic()
    try:
        detail = work()
    except Exception as error:
        known = classified(error)
        if known is None:  # a bug: reported like any failure, with its traceback in the log
            log.exception("Unexpected error in canary phase %s", phase, extra={"error_class": ErrorClass.INTERNAL.value})
        failure = known or StepError(ErrorClass.INTERNAL, one_line(error, 500))
    else:
        return PhaseResult(phase, PhaseOutcome.OK, time.monotonic() - started, detail)
    return PhaseResult(phase, PhaseOutcome.FAILED, time.monotonic() - started, failure.message, failure.error_class)


class CanaryJob:
    """The scheduled canary (the `canary` job): runs it, keeps its state, says in one line how it went."""

    depends_on: ClassVar[tuple[str, ...]] = DEPENDS_ON

    def __init__(self, canary: Canary, interval_seconds: float) -> None:
        self.canary = canary
        self.interval_seconds = interval_seconds
        self._state = CanaryState()
        self._lock = threading.Lock()

    def __call__(self) -> None:
        run = self.canary.run()
        with self._lock:
            previous = self._state
            self._state = (CanaryState(run, run.finished_at) if run.ok
                           else CanaryState(run, previous.last_success_at, previous.failed_in_a_row + 1))
        log_run(run)

    def state(self) -> CanaryState:
        with self._lock:
            return self._state


def log_run(run: CanaryRun) -> None:
    failure = run.failure
    if failure is None:
        log.info("Canary passed in %.2fs (order %s)", run.duration_seconds, run.order_id)
        return
    log.warning("Canary failed at %s (%s, runbook %s): %s; do: %s", failure.phase.value,
                failure.error_class.value if failure.error_class else "?", failure.runbook or "-",
                failure.detail, failure.remedy or "-")
