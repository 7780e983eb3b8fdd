"""Reconciliation with Stripe, the source of truth for payments.

Stripe to database: PaymentIntents are listed newest first (healer.stripe.listing), and the succeeded ones
are matched to orders by `metadata.order_id` (or the order's payment id) with one query per page:
- an order still awaiting payment is marked paid and queued (its webhook was lost);
- a paid order past its SLA that nobody works on is re-queued;
- a payment that no order claims is an orphan: stored once, logged once, counted until resolved;
- a stored orphan that an order now holds (restored, or repaired above) is resolved (healer.stripe.orphans).
The first run looks back three days, the time Stripe keeps retrying a webhook; later runs resume
from the newest `created` seen, less an overlap for payments that were still being confirmed.
Each run also judges which succeeded payments reached healer by webhook first, each payment once
(healer.stripe.missed): healer_webhook_missed_total counts those that did not.

Database to Stripe: `pending_payment` orders whose payment was not in the listing (created before
the window) are retrieved one by one, each when it turns 5, 10, 20, 40... minutes old, so a payment
that succeeds late is still found, while an abandoned checkout costs about ten requests in all.

Stripe rate limits (429), 5xx and network errors are retried with backoff (healer.stripe.listing).
One replica reconciles: the one leading `reconcile` (healer.jobs.leadership); each run also holds
a lock (a PostgreSQL advisory lock, or a lease row on SQLite) so `healer reconcile` never overlaps it.

Leases are on the database's clock (fulfilment.leases): an order's, when deciding whether it is
stuck, and the SQLite reconcile lease. The reconciler's own clock (`clock`) measures the window,
the SLA and checkout ages against Stripe's and the daemon's timestamps, and stamps the run records.

With tracing on, a run is a span `stripe.reconcile` (Stripe's requests beneath it), linked to the
latest trace of every order it repairs or reports (span links, read before the repairs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import stripe
from opentelemetry import trace
from sqlalchemy import or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.models import Order, transaction, utcnow
from fulfilment.pipeline import ACTIVE, Pipeline, awaiting_payment_clause
from fulfilment.recording import latest_traces
from healer import tracing
from healer.db.models import OrphanPayment, ReconcileRun, ReconcileState, RunResult, insert_once
from healer.health.metrics import Metrics
from healer.jobs.stuck import requeue_stuck
from healer.stripe.findings import Finding, FindingKind, Payment, ProgressFn, ReconcileReport, Tally
from healer.stripe.listing import Backoff, PaymentIntents, covered
from healer.stripe.matching import awaiting_payment, claiming_order, crossed_checkpoint, matching_columns
from healer.stripe.missed import (
    FOUND_BY_RECONCILIATION,
    WEBHOOK_GRACE_SECONDS,
    Slice,
    judge,
    verified_by_reconciliation,
)
from healer.stripe.orphans import count_unresolved
from healer.stripe.orphans import resolve as resolve_orphan
from healer.stripe.webhooks import parse_order_id, payment_mismatch

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

LOOKBACK_SECONDS = 3 * 86_400  # Stripe retries a webhook delivery for up to three days
# PaymentIntents created shortly before the last run may have succeeded since (3-D Secure, a slow
# bank); slower ones are found by the database-to-Stripe check of pending orders.
OVERLAP_SECONDS = 600
PENDING_CHECK_AFTER_SECONDS = 300  # a checkout younger than this is still in the customer's hands
PAGE_SIZE = 100  # the list API's maximum
STATE = "stripe"


@dataclass(frozen=True)
class ReconcileConfig:
    sla_seconds: int  # HEALER_ORDER_SLA_SECONDS
    lookback_seconds: int = LOOKBACK_SECONDS
    overlap_seconds: int = OVERLAP_SECONDS
    pending_check_after_seconds: int = PENDING_CHECK_AFTER_SECONDS
    max_pending_checks: int = 1000  # retrieves per run at most, whatever the backlog
    page_size: int = PAGE_SIZE
    max_retries: int = 6
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    webhook_grace_seconds: int = WEBHOOK_GRACE_SECONDS  # how late a webhook may be before it is missed

    def __post_init__(self) -> None:
        # A slice judged must lie inside the window listed (healer.stripe.missed.Slice).
        if not 0 <= self.webhook_grace_seconds < self.overlap_seconds:
            raise ValueError(f"webhook_grace_seconds must be at least 0 and less than overlap_seconds "
                             f"({self.overlap_seconds}), not {self.webhook_grace_seconds}")


class Reconciler:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        client: stripe.StripeClient,
        pipeline: Pipeline,
        metrics: Metrics,
        config: ReconcileConfig,
        *,
        worker: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sessions = sessions
        self.intents = PaymentIntents(
            client, Backoff(config.max_retries, config.backoff_base_seconds, config.backoff_max_seconds),
            page_size=config.page_size, sleep=sleep,
        )
        self.pipeline = pipeline
        self.metrics = metrics
        self.config = config
        self.worker = worker
        self.clock = clock

    def run(self, *, dry_run: bool = False, progress: ProgressFn | None = None) -> ReconcileReport:
        """One pass; `dry_run` reads everything and writes nothing (no repairs, cursor or record)."""
        # Exceptions are not recorded on the span: a database error's text may quote its statement.
        with tracer.start_as_current_span("stripe.reconcile", attributes={"reconcile.dry_run": dry_run},
                                          record_exception=False, set_status_on_exception=False) as span:
            try:
                report = self._run(dry_run, progress)
            except Exception as error:
                span.set_status(trace.StatusCode.ERROR, type(error).__name__)
                raise
            span.set_attributes({"reconcile.payments_read": report.payments_read,
                                 "reconcile.stripe_requests": report.stripe_requests,
                                 "reconcile.orders_repaired": report.orders_repaired})
            return report

    def _run(self, dry_run: bool, progress: ProgressFn | None) -> ReconcileReport:
        started, began = self.clock(), time.monotonic()
        cursor, last_run_at = self._load_state()
        window_start = self._window_start(started, cursor)
        judged = Slice.of_run(started, window_start, last_run_at, self.config.webhook_grace_seconds)
        run_id = None if dry_run else self._start_run(started, window_start)
        tally = Tally()
        try:
            for intents in self.intents.pages(window_start, tally):
                self._reconcile_page(intents, started, judged, tally, dry_run)
                if progress is not None:
                    progress(tally.payments_read, covered(intents, window_start, started))
            self._check_pending(started, last_run_at, tally, dry_run)
            self._resolve_claimed_orphans(tally, dry_run)
        except Exception as error:
            self._record_failure(run_id, tally, error)
            raise
        report = ReconcileReport(window_start, tally.payments_read, tally.stripe_requests,
                                 tuple(tally.findings), dry_run, time.monotonic() - began,
                                 tally.payments_succeeded, tally.payments_missed)
        if not dry_run:
            self._record_success(run_id, started, cursor, tally, report)
        return report

    # -- window and cursor ------------------------------------------------------------------------

    def _load_state(self) -> tuple[int | None, datetime | None]:
        with self.sessions() as session:
            row = session.execute(
                select(ReconcileState.cursor_created, ReconcileState.last_run_at)
                .where(ReconcileState.name == STATE)
            ).first()
        return (row.cursor_created, row.last_run_at) if row else (None, None)

    def _window_start(self, now: datetime, cursor: int | None) -> datetime:
        if cursor is None:
            return now - timedelta(seconds=self.config.lookback_seconds)
        return datetime.fromtimestamp(cursor - self.config.overlap_seconds, UTC)

    # -- Stripe to database -----------------------------------------------------------------------

    def _reconcile_page(self, intents: list[dict[str, Any]], now: datetime, judged: Slice, tally: Tally,
                        dry_run: bool) -> None:
        tally.payments_read += len(intents)
        for intent in intents:
            tally.seen.add(intent["id"])
            tally.newest_created = max(tally.newest_created or 0, int(intent["created"]))
        succeeded = [Payment.from_stripe(i) for i in intents if i["status"] == "succeeded"]
        if not succeeded:
            return
        orders = self._orders_for(succeeded)  # the page's one query
        sales = judge(succeeded, orders, judged)  # on the rows as read, before the repairs below
        tally.payments_succeeded += sales.succeeded
        tally.payments_missed += sales.missed
        findings = [f for p in succeeded if (f := self._classify(p, orders, now)) is not None]
        tally.findings.extend(self._preview(findings) if dry_run else self._apply(findings))

    def _orders_for(self, payments: list[Payment]) -> list[Row[Any]]:
        order_ids = {oid for p in payments if (oid := parse_order_id(p.metadata_order_id))}
        columns: tuple[Any, ...] = (*matching_columns(), verified_by_reconciliation())  # for the judgement
        with self.sessions() as session:
            return list(session.execute(
                select(*columns).where(or_(
                    Order.id.in_(order_ids),
                    Order.stripe_payment_intent_id.in_([p.id for p in payments]),
                ), Order.is_canary.is_(False))  # no payment is ever the canary's
            ).all())

    def _classify(self, payment: Payment, orders: list[Row[Any]], now: datetime) -> Finding | None:
        order = claiming_order(payment, orders)
        if order is None:
            return Finding(FindingKind.ORPHAN, payment, None,
                           f"no order claims it (metadata.order_id {payment.metadata_order_id!r})")
        if awaiting_payment(order):
            problem = payment_mismatch(order, payment.as_intent())
            if problem is not None:
                return Finding(FindingKind.MISMATCH, payment, order.id, problem)
            return Finding(FindingKind.MISSED_WEBHOOK, payment, order.id,
                           f"payment succeeded, order was still {order.status}")
        if self._stuck(order, now):
            waited = now - order.paid_at
            return Finding(FindingKind.STUCK, payment, order.id,
                           f"paid {waited.total_seconds() / 60:.0f} min ago, still {order.status}")
        return None

    def _stuck(self, order: Row[Any], now: datetime) -> bool:
        # The same test as healer.jobs.stuck's query, on the row the page's query already fetched:
        # the SLA on our clock, the lease as the database judged it when it read the row.
        return bool(
            order.status in ACTIVE and order.paid_at is not None
            and order.paid_at < now - timedelta(seconds=self.config.sla_seconds)
            and order.lease_free
            and order.next_attempt_at is None
        )

    def _apply(self, findings: list[Finding]) -> list[Finding]:
        """Make the repairs; returns those that changed something (a webhook may have beaten us)."""
        self._link_orders(findings)
        done: list[Finding] = []
        with transaction(self.sessions) as session:
            for f in findings:
                if f.kind is FindingKind.MISSED_WEBHOOK and self._mark_paid(session, f):
                    done.append(f)
                elif f.kind is FindingKind.ORPHAN and self._store_orphan(session, f):
                    done.append(f)
                elif f.kind is FindingKind.MISMATCH:
                    log.warning("Payment %s names order %s but does not pay for it: %s",
                                f.payment.id, f.order_id, f.detail)
                    done.append(f)
        stuck = {f.order_id: f for f in findings if f.kind is FindingKind.STUCK and f.order_id}
        if stuck:
            requeued = requeue_stuck(self.sessions, sla_seconds=self.config.sla_seconds,
                                     order_ids=list(stuck), limit=len(stuck), clock=self.clock)
            done.extend(stuck[s.order_id] for s in requeued)
        return done

    def _link_orders(self, findings: list[Finding]) -> None:
        """Link the run's span to the latest trace of each order found, before the repairs add to
        their stories; only while the span records: with tracing off, no query."""
        order_ids = {f.order_id for f in findings if f.order_id is not None}
        if order_ids and tracing.recording():
            with self.sessions() as session:
                tracing.link_orders(latest_traces(session, order_ids))

    def _mark_paid(self, session: Session, finding: Finding) -> bool:
        assert finding.order_id is not None
        # paid_at is when the PaymentIntent was created: the customer has been waiting at least
        # that long, and an early paid_at errs on the side of alerting about a slow order.
        paid = self.pipeline.mark_paid(
            session, finding.order_id, payment_intent_id=finding.payment.id,
            paid_at=finding.payment.created,
            message=f"Payment succeeded: {finding.payment}, {FOUND_BY_RECONCILIATION} "
                    "(the webhook never arrived)",
        )
        if paid:
            log.warning("Missed webhook: payment %s for order %s succeeded; order marked paid and "
                        "queued", finding.payment.id, finding.order_id)
        return paid

    def _store_orphan(self, session: Session, finding: Finding) -> bool:
        p, now = finding.payment, self.clock()
        new = insert_once(session, OrphanPayment, payment_intent_id=p.id, amount_cents=p.amount,
                          currency=p.currency[:3], created=p.created,
                          metadata_order_id=p.metadata_order_id, first_seen_at=now, reported_at=now)
        if new:
            log.error("Orphan payment %s: %s %s taken on %s, and no order claims it "
                      "(metadata.order_id %r): refund it or find its order", p.id, p.amount,
                      p.currency, p.created.isoformat(timespec="seconds"), p.metadata_order_id)
        return new

    def _preview(self, findings: list[Finding]) -> list[Finding]:
        """What `_apply` would do, without writing: known orphans are left out, as they would be."""
        orphans = [f.payment.id for f in findings if f.kind is FindingKind.ORPHAN]
        known: set[str] = set()
        if orphans:
            with self.sessions() as session:
                known = set(session.scalars(select(OrphanPayment.payment_intent_id)
                                            .where(OrphanPayment.payment_intent_id.in_(orphans))))
        return [f for f in findings if f.payment.id not in known]

    def _resolve_claimed_orphans(self, tally: Tally, dry_run: bool) -> None:
        """Stored orphans whose payment an order now holds (restored from a backup, say, or marked
        paid by this run) are resolved. The database alone says so, however old the payment is:
        no Stripe request, one query."""
        with self.sessions() as session:
            rows = session.execute(
                select(OrphanPayment.payment_intent_id, OrphanPayment.amount_cents, OrphanPayment.currency,
                       OrphanPayment.created, OrphanPayment.metadata_order_id, Order.id.label("order_id"))
                .join(Order, Order.stripe_payment_intent_id == OrphanPayment.payment_intent_id)
                .where(OrphanPayment.resolved_at.is_(None))
                .order_by(OrphanPayment.created)
            ).all()
        claimed = {r.payment_intent_id: Finding(
            FindingKind.ORPHAN_RESOLVED,
            Payment(r.payment_intent_id, "succeeded", r.amount_cents, r.currency, r.created, r.metadata_order_id),
            r.order_id, f"order {r.order_id} holds this payment") for r in rows}
        if not claimed or dry_run:
            tally.findings.extend(claimed.values())
            return
        now = self.clock()
        with transaction(self.sessions) as session:
            done = [f for f in claimed.values() if resolve_orphan(
                session, f.payment.id, f"claimed by order {f.order_id} (found by reconciliation)", now)]
        for f in done:
            log.info("Orphan payment %s resolved: order %s holds it", f.payment.id, f.order_id)
        tally.findings.extend(done)

    # -- database to Stripe -----------------------------------------------------------------------

    def _check_pending(self, now: datetime, last_run_at: datetime | None, tally: Tally,
                       dry_run: bool) -> None:
        due = self._pending_due(now, last_run_at, tally.seen)
        for order in due[: self.config.max_pending_checks]:
            intent = self.intents.retrieve(tally, order.stripe_payment_intent_id)
            if intent is None or intent["status"] != "succeeded":
                continue
            payment = Payment.from_stripe(intent)
            finding = self._classify(payment, [order], now)
            if finding is None or finding.kind is not FindingKind.MISSED_WEBHOOK:
                continue  # not this order's payment after all: the worker's verify step says so
            done = self._preview([finding]) if dry_run else self._apply([finding])
            # Outside every slice (created before the window), so judged here, once: the order is
            # marked paid once (healer.stripe.missed).
            tally.payments_succeeded += len(done)
            tally.payments_missed += len(done)
            tally.findings.extend(done)

    def _pending_due(self, now: datetime, last_run_at: datetime | None, seen: set[str]) -> list[Row[Any]]:
        c = self.config
        with self.sessions() as session:
            rows = session.execute(
                select(*matching_columns(), Order.created_at)
                .where(awaiting_payment_clause(),  # incl. orders that gave up at verification
                       Order.stripe_payment_intent_id.is_not(None),
                       Order.next_attempt_at.is_(None),  # queued ones are verified by the worker
                       Order.is_canary.is_(False),
                       Order.created_at >= now - timedelta(seconds=c.lookback_seconds),
                       Order.created_at <= now - timedelta(seconds=c.pending_check_after_seconds))
                .order_by(Order.created_at.desc())
            ).all()
        since_last = (now - last_run_at).total_seconds() if last_run_at else None
        return [cast(Row[Any], r) for r in rows if r.stripe_payment_intent_id not in seen
                and crossed_checkpoint((now - r.created_at).total_seconds(), since_last,
                                       c.pending_check_after_seconds)]

    # -- records and metrics ----------------------------------------------------------------------

    def _start_run(self, started: datetime, window_start: datetime) -> int:
        with transaction(self.sessions) as session:
            run = ReconcileRun(started_at=started, window_start=window_start,
                               result=RunResult.RUNNING, worker=self.worker)
            session.add(run)
            session.flush()
            return run.id

    def _record_failure(self, run_id: int | None, tally: Tally, error: Exception) -> None:
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        # Stripe or the database failing is their checks' alarm (the job then waits on them): a
        # warning here. Anything else is a bug, with its traceback.
        expected = isinstance(error, (stripe.StripeError, SQLAlchemyError))
        log.log(logging.WARNING if expected else logging.ERROR,
                "Reconciliation failed after %d payment(s) and %d Stripe request(s): %s",
                tally.payments_read, tally.stripe_requests, reason, exc_info=not expected)
        if run_id is None:
            return
        self.metrics.reconcile_runs.labels(RunResult.FAILURE).inc()
        try:
            self._finish_run(run_id, tally, RunResult.FAILURE, reason[:2000])
        except Exception as db_error:  # the database may be what failed: the log line stands
            log.error("Could not record the failed reconciliation run: %s", type(db_error).__name__)

    def _record_success(self, run_id: int | None, started: datetime, cursor: int | None,
                        tally: Tally, report: ReconcileReport) -> None:
        assert run_id is not None
        newest = max(filter(None, (cursor, tally.newest_created)), default=None)
        with transaction(self.sessions) as session:
            insert_once(session, ReconcileState, name=STATE)
            session.execute(update(ReconcileState).where(ReconcileState.name == STATE)
                            .values(cursor_created=newest, last_run_at=started))
        self._finish_run(run_id, tally, RunResult.SUCCESS, None, report)
        self.metrics.reconcile_runs.labels(RunResult.SUCCESS).inc()
        self.metrics.reconcile_last_success.set(time.time())
        # Counted only once the run succeeded: a failed run's slice is judged again by the next.
        self.metrics.payments_succeeded.inc(report.payments_succeeded)
        self.metrics.webhook_missed.inc(report.payments_missed)
        log.info("Reconciliation done: %d payment(s) read since %s with %d Stripe request(s); "
                 "%d order(s) repaired, %d new orphan payment(s), %d resolved; %d sale(s) judged, "
                 "%d found only by reconciliation; in %.1fs",
                 report.payments_read, report.window_start.isoformat(timespec="seconds"),
                 report.stripe_requests, report.orders_repaired, report.orphans_found,
                 report.orphans_resolved, report.payments_succeeded, report.payments_missed, report.seconds)
        if report.payments_missed:
            log.warning("%d of %d succeeded payment(s) reached healer only through reconciliation, "
                        "not by Stripe's webhook: is the webhook endpoint delivering?",
                        report.payments_missed, report.payments_succeeded)

    def _finish_run(self, run_id: int, tally: Tally, result: RunResult, error: str | None,
                    report: ReconcileReport | None = None) -> None:
        with transaction(self.sessions) as session:
            session.execute(update(ReconcileRun).where(ReconcileRun.id == run_id).values(
                finished_at=self.clock(), payments_read=tally.payments_read,
                stripe_requests=tally.stripe_requests, result=result, error=error,
                orders_repaired=report.orders_repaired if report else 0,
                orphans_found=report.orphans_found if report else 0,
                payments_succeeded=report.payments_succeeded if report else 0,
                payments_missed=report.payments_missed if report else 0,
            ))

    def orphan_count(self) -> int:
        """Unresolved orphans, as `healer_orphan_payments` reports them (healer.health.metrics)."""
        with self.sessions() as session:
            return count_unresolved(session)

