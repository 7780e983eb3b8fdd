"""Order completion against real peers: PostgreSQL, moto S3, and the SendGrid and Stripe servers."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import event, update
from sqlalchemy.exc import OperationalError

from fulfilment.errors import ErrorClass
from fulfilment.models import Order, OrderStatus, Outcome, Step, transaction, utcnow
from fulfilment.pipeline import OrderNotFound, PaymentNotSucceeded, Pipeline
from fulfilment.recording import RetryPolicy
from fulfilment.steps import final_pdf_key, permanent_key
from fulfilment.storage import S3Store
from healer import db
from tests.fakes.db_fixtures import postgresql_outage, restart_postgresql
from tests.fakes.shop_fixtures import PUBLIC_BASE_URL, Shop
from tests.faults.sendgrid_tap import TappedSendGrid

OWNER = "test-worker"


def complete(pipeline: Pipeline, order_id: uuid.UUID, owner: str = OWNER) -> OrderStatus:
    """Claim the order (due now) and run it as far as it goes."""
    _make_due(pipeline, order_id)
    assert pipeline.claim_order(order_id, owner)
    pipeline.run(order_id, owner)
    return pipeline.get(order_id).status


def _make_due(pipeline: Pipeline, order_id: uuid.UUID) -> None:
    with transaction(pipeline.sessions) as session:
        session.execute(update(Order).where(Order.id == order_id).values(next_attempt_at=utcnow()))


def test_paid_order_is_completed_with_files_pdf_and_one_email(shop: Shop) -> None:
    order_id = shop.paid_order()

    assert complete(shop.pipeline(), order_id) is OrderStatus.COMPLETED

    order = shop.order(order_id)
    for kind, key in (("photo", order.photo_key), ("audio", order.audio_key), ("waveform", order.waveform_key)):
        assert shop.store.exists(permanent_key(order_id, kind, key))
    assert order.final_pdf_key == final_pdf_key(order_id) == f"pdfs/final_{order_id}.pdf"
    assert shop.store.get(order.final_pdf_key).startswith(b"%PDF")
    assert order.payment_verified_at is not None and order.completed_at is not None
    assert order.lease_owner is None and order.next_attempt_at is None
    [email] = shop.emails_to("ada@example.com")
    assert order.email_message_id == email.message_id
    assert f"{PUBLIC_BASE_URL}/download/{order.download_token}" in email.text
    assert f"{PUBLIC_BASE_URL}/download/{order.download_token}" in email.html
    story = [(e.step, e.outcome) for e in shop.events(order_id)]
    assert story == [(s.value, "ok") for s in Step]
    assert [r.step for r in shop.results] == list(Step)
    assert shop.results[-1].completion_latency_seconds is not None


def test_an_attempt_reads_and_leases_its_order_once_and_each_step_starts_from_the_last_commit(shop: Shop) -> None:
    # The first step's lease and the order come back from one UPDATE ... RETURNING; every later
    # step starts from what the commit of the one before returned (a full lease stamped by it),
    # with no statement of its own: round trips an order no longer pays for.
    order_id = shop.paid_order()
    pipeline = shop.pipeline()
    _make_due(pipeline, order_id)
    assert pipeline.claim_order(order_id, OWNER)
    statements: list[str] = []

    def noted(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(" ".join(statement.split()))

    engine = pipeline.sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute", noted)
    try:
        results = pipeline.run(order_id, OWNER)
    finally:
        event.remove(engine, "before_cursor_execute", noted)

    assert [r.outcome for r in results] == [Outcome.OK] * len(Step)
    leases = [s for s in statements if s.startswith("UPDATE orders SET lease_expires_at=") and "RETURNING" in s]
    commits = [s for s in statements if s.startswith("UPDATE orders SET status=") and "RETURNING" in s]
    assert len(leases) == 1 and len(commits) == len(Step), statements
    assert [s for s in statements if s.startswith("SELECT") and "FROM orders" in s] == [], statements
    assert [r.order is not None for r in results] == [True] * (len(Step) - 1) + [False]  # none after the last


def test_completed_order_is_not_worked_again(shop: Shop) -> None:
    order_id = shop.paid_order()
    pipeline = shop.pipeline()
    complete(pipeline, order_id)

    assert pipeline.claim(OWNER, 10) == []
    assert complete_again_is_noop(pipeline, order_id)
    assert len(shop.emails_to("ada@example.com")) == 1


def complete_again_is_noop(pipeline: Pipeline, order_id: uuid.UUID) -> bool:
    return not pipeline.claim_order(order_id, OWNER) and pipeline.run(order_id, OWNER) == []


def test_migration_does_not_copy_again_what_is_already_there(shop: Shop) -> None:
    order_id = shop.paid_order()
    pipeline = shop.pipeline()
    complete(pipeline, order_id)
    order = shop.order(order_id)
    target = permanent_key(order_id, "photo", order.photo_key)
    before = shop.s3.client.head_object(Bucket=shop.s3.bucket, Key=target)["LastModified"]
    # A crash after the copies but before the commit: the step runs again from `paid`.
    shop.store.delete(order.photo_key)  # the temp upload has even expired since
    with transaction(shop.sessions) as session:
        session.execute(update(Order).where(Order.id == order_id).values(status="paid"))
    pipeline.claim_order(order_id, OWNER)
    result = pipeline.run_step(order_id, OWNER)

    assert result is not None and result.outcome is Outcome.OK
    assert shop.s3.client.head_object(Bucket=shop.s3.bucket, Key=target)["LastModified"] == before
    assert "copied nothing" in result.message


def test_payment_with_another_amount_is_not_fulfilled(shop: Shop) -> None:
    order_id = shop.paid_order(amount_cents=4900)
    order = shop.order(order_id)
    # The PaymentIntent says 1999: someone paid less than the order's price.
    pi = shop.stripe.create_payment_intent(1999, "eur", {"order_id": str(order_id)})
    with transaction(shop.sessions) as session:
        session.execute(update(Order).where(Order.id == order_id).values(stripe_payment_intent_id=pi["id"]))

    assert complete(shop.pipeline(), order_id) is OrderStatus.NEEDS_ATTENTION
    order = shop.order(order_id)
    assert order.last_error_class == ErrorClass.PAYMENT_UNVERIFIED.value
    assert "1999" in (order.last_error or "")
    assert not shop.store.exists(permanent_key(order_id, "photo", order.photo_key))
    assert shop.sendgrid.messages == []


def test_unpaid_order_is_refused_and_left_alone(shop: Shop) -> None:
    order_id = shop.paid_order(payment_status="requires_payment_method", queued=False)

    with pytest.raises(PaymentNotSucceeded):
        shop.pipeline().request_completion(order_id)

    order = shop.order(order_id)
    assert order.status == OrderStatus.PENDING_PAYMENT.value and order.next_attempt_at is None


def test_request_completion_verifies_payment_and_queues(shop: Shop) -> None:
    order_id = shop.paid_order(queued=False)
    pipeline = shop.pipeline()

    assert pipeline.request_completion(order_id) is OrderStatus.PAID
    assert pipeline.request_completion(order_id) is OrderStatus.PAID  # a second click changes nothing
    assert pipeline.claim(OWNER, 10) == [order_id]
    with pytest.raises(OrderNotFound):
        pipeline.request_completion(uuid.uuid4())


def test_request_completion_queues_when_stripe_is_down(shop: Shop) -> None:
    order_id = shop.paid_order(queued=False)
    shop.stripe.fail_next(503, count=1)

    assert shop.pipeline().request_completion(order_id) is OrderStatus.PENDING_PAYMENT
    assert complete(shop.pipeline(), order_id) is OrderStatus.COMPLETED


def test_wrong_s3_secret_is_retried_and_completes_once_fixed(shop: Shop, moto_iam_server) -> None:  # type: ignore[no-untyped-def]
    iam = moto_iam_server
    good = iam.store()
    shop.s3 = type(shop.s3)(iam.endpoint_url, iam.bucket, iam.admin_client, good)
    order_id = shop.paid_order()
    wrong = S3Store(iam.client(iam.app_access_key_id, "not-the-secret"), iam.bucket)

    assert complete(shop.pipeline(store=wrong), order_id) is OrderStatus.PAID
    order = shop.order(order_id)
    assert order.last_error_class == ErrorClass.S3_AUTH.value and order.attempts == 1
    assert "not-the-secret" not in (order.last_error or "")

    assert complete(shop.pipeline(), order_id) is OrderStatus.COMPLETED


def test_expired_temp_photo_needs_attention_and_spares_other_orders(shop: Shop) -> None:
    lost = shop.paid_order()
    fine = shop.paid_order()
    shop.store.delete(shop.order(lost).photo_key)
    pipeline = shop.pipeline()

    assert complete(pipeline, lost) is OrderStatus.NEEDS_ATTENTION
    assert complete(pipeline, fine) is OrderStatus.COMPLETED
    order = shop.order(lost)
    assert (order.last_error_step, order.last_error_class) == ("migrate_files", "s3_missing_file")
    assert order.photo_key in (order.last_error or "")


def test_lost_waveform_is_redrawn_from_the_audio(shop: Shop) -> None:
    order_id = shop.paid_order(with_waveform=False)

    assert complete(shop.pipeline(), order_id) is OrderStatus.COMPLETED
    render = [e for e in shop.events(order_id) if e.step == "render"][0]
    assert "waveform drawn from the audio" in render.message


def test_missing_font_is_retried_and_completes_once_restored(shop: Shop) -> None:
    order_id = shop.paid_order()
    fonts = sorted((shop.assets_dir / "fonts").glob("*.ttf"))
    hidden = [f.rename(f.with_suffix(".hidden")) for f in fonts]

    assert complete(shop.pipeline(), order_id) is OrderStatus.FILES_MIGRATED
    order = shop.order(order_id)
    assert order.last_error_class == ErrorClass.ASSET_MISSING.value
    assert ".ttf" in (order.last_error or "")

    for f in hidden:
        f.rename(f.with_suffix(".ttf"))
    assert complete(shop.pipeline(), order_id) is OrderStatus.COMPLETED


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(401, ErrorClass.EMAIL_AUTH), (429, ErrorClass.EMAIL_TRANSIENT), (500, ErrorClass.EMAIL_TRANSIENT),
     (503, ErrorClass.EMAIL_TRANSIENT)],
)
def test_sendgrid_failure_is_retried_then_exactly_one_email(shop: Shop, status: int, error_class: ErrorClass) -> None:
    order_id = shop.paid_order()
    shop.sendgrid.fail_next(status, count=1)

    assert complete(shop.pipeline(), order_id) is OrderStatus.PDF_RENDERED
    assert shop.order(order_id).last_error_class == error_class.value
    token = shop.order(order_id).download_token

    assert complete(shop.pipeline(), order_id) is OrderStatus.COMPLETED
    [email] = shop.emails_to("ada@example.com")
    assert token and token in email.text  # the retry carries the same link


def test_revoked_sendgrid_key_waits_without_giving_up(shop: Shop) -> None:
    order_id = shop.paid_order()
    shop.sendgrid.set_key_valid(False)
    pipeline = shop.pipeline(max_attempts=2)

    complete(pipeline, order_id)
    assert shop.order(order_id).attempts == 1
    assert complete(pipeline, order_id) is OrderStatus.NEEDS_ATTENTION  # out of attempts, ungated
    assert shop.order(order_id).last_error_class == ErrorClass.EMAIL_AUTH.value

    shop.sendgrid.set_key_valid(True)
    assert pipeline.requeue(order_id, "key rotated") is OrderStatus.PDF_RENDERED
    assert complete(pipeline, order_id) is OrderStatus.COMPLETED


def test_gated_step_waits_without_spending_attempts(shop: Shop) -> None:
    order_id = shop.paid_order()
    failing = {"s3": "s3 failing: access denied"}
    pipeline = shop.pipeline(gate=lambda checks: next((failing[c] for c in checks if c in failing), None))

    for _ in range(3):
        complete(pipeline, order_id)
    order = shop.order(order_id)
    assert order.status == OrderStatus.PAID.value and order.attempts == 0
    waiting = [e for e in shop.events(order_id) if e.outcome == "waiting"]
    assert len(waiting) == 1 and "access denied" in waiting[0].message

    failing.clear()
    assert pipeline.resume_waiting("sendgrid") == 0  # not what it waits for
    assert pipeline.resume_waiting("s3") == 1
    assert pipeline.claim(OWNER, 10) == [order_id]  # due at once, not after the gate's wait
    pipeline.run(order_id, OWNER)
    assert shop.order(order_id).status == OrderStatus.COMPLETED.value


def test_corrupt_photo_needs_attention_with_reason(shop: Shop) -> None:
    order_id = shop.paid_order(photo=b"\xff\xd8\xff not a jpeg at all")

    assert complete(shop.pipeline(), order_id) is OrderStatus.NEEDS_ATTENTION
    order = shop.order(order_id)
    assert (order.last_error_step, order.last_error_class) == ("render", "bad_input")
    assert order.last_error


def test_corrupt_audio_without_waveform_needs_attention(shop: Shop) -> None:
    order_id = shop.paid_order(audio=b"RIFF\x00\x00\x00\x00WAVEgarbage", with_waveform=False)

    assert complete(shop.pipeline(), order_id) is OrderStatus.NEEDS_ATTENTION
    assert shop.order(order_id).last_error_class == "bad_input"


def test_unknown_template_is_reported(shop: Shop) -> None:
    order_id = shop.paid_order(template="no-such-template")

    status = complete(shop.pipeline(max_attempts=1), order_id)
    assert status is OrderStatus.NEEDS_ATTENTION
    assert "no-such-template" in (shop.order(order_id).last_error or "")


def test_retries_stop_after_the_last_attempt(shop: Shop) -> None:
    order_id = shop.paid_order()
    shop.sendgrid.fail_next(503, count=10)
    pipeline = shop.pipeline(max_attempts=3)

    for _ in range(3):
        complete(pipeline, order_id)
    order = shop.order(order_id)
    assert order.status == OrderStatus.NEEDS_ATTENTION.value and order.attempts == 3
    assert [e.outcome for e in shop.events(order_id) if e.step == "email"] == ["failed", "failed", "gave_up"]


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base_seconds=30, max_seconds=1800)

    assert [policy.delay(n, rng=lambda: 1.0) for n in (1, 2, 3)] == [30, 60, 120]
    assert [policy.delay(n, rng=lambda: 0.0) for n in (1, 2, 3)] == [15, 30, 60]
    assert policy.delay(20, rng=lambda: 1.0) == 1800


@pytest.mark.serial  # stops PostgreSQL, which every other test shares
def test_database_restart_between_steps_is_survived(shop: Shop) -> None:
    order_id = shop.paid_order()
    pipeline = shop.pipeline()
    _make_due(pipeline, order_id)
    pipeline.claim_order(order_id, OWNER)
    pipeline.run_step(order_id, OWNER)

    restart_postgresql()

    pipeline.run(order_id, OWNER)
    assert shop.order(order_id).status == OrderStatus.COMPLETED.value
    assert len(shop.emails_to("ada@example.com")) == 1


def test_sqlite_embedded_database_completes_orders(shop: Shop, sqlite_engine) -> None:  # type: ignore[no-untyped-def]
    from healer import db

    shop.sessions = db.make_session_factory(sqlite_engine)
    order_id = shop.paid_order()

    assert complete(shop.pipeline(), order_id) is OrderStatus.COMPLETED


class _WebhookArrivesDuringVerify:
    """The real Stripe verifier, during whose call Stripe's succeeded webhook is committed."""

    enabled = True

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.inner = shop.pipeline().steps.payments

    def verify(self, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return self.inner.verify(**kwargs)
        finally:
            pipeline = self.shop.pipeline()
            with transaction(self.shop.sessions) as session:
                pipeline.mark_paid(session, uuid.UUID(kwargs["order_id"]), payment_intent_id=kwargs["payment_intent_id"],
                                   paid_at=utcnow(), message="payment_intent.succeeded webhook")


def test_a_stale_step_result_never_overwrites_a_payment_confirmed_meanwhile(shop: Shop) -> None:
    order_id = shop.paid_order(payment_status="requires_action")  # 3-D Secure still pending
    pipeline = shop.pipeline(payments=_WebhookArrivesDuringVerify(shop))
    _make_due(pipeline, order_id)
    assert pipeline.claim_order(order_id, OWNER)

    assert pipeline.run_step(order_id, OWNER) is None  # its "not succeeded" answer is stale: dropped

    order = shop.order(order_id)
    assert order.status == OrderStatus.PAID.value and order.lease_owner is None
    assert complete(shop.pipeline(), order_id) is OrderStatus.COMPLETED


def test_retry_after_a_failed_verification_verifies_again(shop: Shop) -> None:
    # The shop's checkout may fill paid_at itself; only a verified payment skips verification.
    order_id = shop.paid_order(status="needs_attention", last_error_step="verify_payment",
                               last_error_class="payment_unverified", paid_at=utcnow())

    assert shop.pipeline().requeue(order_id, "operator retry") is OrderStatus.PENDING_PAYMENT


@dataclass
class OutageRig:
    """An order at its email step, and a SendGrid that stops PostgreSQL the moment it accepts."""

    shop: Shop
    sendgrid: TappedSendGrid
    pipeline: Pipeline
    order_id: uuid.UUID
    outages: list[threading.Thread]

    def join(self) -> None:
        for outage in self.outages:
            outage.join(timeout=60)


@pytest.fixture
def outage_at_email(pg_engine, s3_bucket, stripe_server, assets_dir, request) -> Iterator[OutageRig]:  # type: ignore[no-untyped-def]
    seconds = request.param
    with TappedSendGrid() as sendgrid:
        shop = Shop(db.make_session_factory(pg_engine), s3_bucket, sendgrid, stripe_server, assets_dir)
        order_id = shop.paid_order()
        pipeline = shop.pipeline(lease_seconds=60)
        _make_due(pipeline, order_id)
        assert pipeline.claim_order(order_id, OWNER)
        while pipeline.get(order_id).status is not OrderStatus.PDF_RENDERED:
            pipeline.run_step(order_id, OWNER)
        rig = OutageRig(shop, sendgrid, pipeline, order_id, [])
        sendgrid.on_accepted = lambda _key: rig.outages.append(postgresql_outage(seconds=seconds))
        sendgrid.arm(1)
        try:
            yield rig
        finally:
            rig.join()  # PostgreSQL is back, whatever the test did


@pytest.mark.serial  # stops PostgreSQL, which every other test shares
@pytest.mark.parametrize("outage_at_email", [3.0], indirect=True)
def test_an_email_sent_during_a_database_outage_is_recorded_once_the_database_is_back(
        outage_at_email: OutageRig, caplog: pytest.LogCaptureFixture) -> None:
    # SendGrid accepts the email, then PostgreSQL goes down before the worker can record it: the
    # worker retries the commit instead of forgetting a sent email and sending it again next time.
    rig = outage_at_email
    with caplog.at_level(logging.WARNING, logger="fulfilment.recording"):
        result = rig.pipeline.run_step(rig.order_id, OWNER)
    rig.join()

    assert len(rig.outages) == 1 and f"Could not record email for order {rig.order_id}" in caplog.text
    assert result is not None and result.outcome is Outcome.OK
    assert rig.shop.order(rig.order_id).status == OrderStatus.COMPLETED.value
    assert len(rig.sendgrid.sends) == 1
    assert rig.shop.order(rig.order_id).email_message_id == rig.sendgrid.messages[0].message_id


def test_a_step_is_not_started_on_a_lease_that_has_run_out(shop: Shop) -> None:
    # Another daemon may claim an order the moment its lease runs out: its old holder, however
    # late, starts nothing more on it.
    order_id = shop.paid_order()
    pipeline = shop.pipeline()
    _make_due(pipeline, order_id)
    assert pipeline.claim_order(order_id, OWNER)
    with transaction(pipeline.sessions) as session:
        session.execute(update(Order).where(Order.id == order_id).values(lease_expires_at=utcnow()))

    assert pipeline.run_step(order_id, OWNER) is None
    assert shop.order(order_id).status == OrderStatus.PENDING_PAYMENT.value and shop.events(order_id) == []


@pytest.mark.serial  # stops PostgreSQL, which every other test shares
@pytest.mark.parametrize("outage_at_email", [8.0], indirect=True)
def test_a_done_step_waiting_out_a_database_outage_gives_up_at_shutdown(outage_at_email: OutageRig) -> None:
    # Shutdown does not wait out the whole outage: the step stays unrecorded (it is redone later,
    # the duplicate email the design allows), and the daemon stops within its stop timeout.
    rig = outage_at_email
    stop_at = time.monotonic() + 2.0

    with pytest.raises(OperationalError):
        rig.pipeline.run_step(rig.order_id, OWNER, stopping=lambda: time.monotonic() > stop_at)
    database_still_down = [outage.is_alive() for outage in rig.outages]
    rig.join()

    assert database_still_down == [True]  # it gave up at shutdown, not when the database came back
    assert rig.shop.order(rig.order_id).status == OrderStatus.PDF_RENDERED.value
    assert len(rig.sendgrid.sends) == 1
