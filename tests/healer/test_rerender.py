"""Remediation `rerender_pdf`: a download link whose PDF is gone gets it rendered again.

Real peers: PostgreSQL, moto S3, the SendGrid server; the HTTP app through its test client, the
remediation through the same Remediator the daemon wires in.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from fulfilment.errors import StepError
from fulfilment.models import Order, OrderStatus, Outcome, Step, transaction
from fulfilment.pipeline import Pipeline
from fulfilment.steps import final_pdf_key
from healer.config import RemediationMode
from healer.health.metrics import Metrics
from healer.http.public import BEING_RESTORED, GONE
from healer.remediation.audit import Action, Audit, Remediation, Result
from healer.remediation.pdfs import PdfRestorer
from healer.remediation.remediator import Remediator
from tests.eventually import eventually
from tests.fakes.http_fixtures import public_client
from tests.fakes.shop_fixtures import Shop

OWNER = "test-worker"


@dataclass
class Rig:
    shop: Shop
    pipeline: Pipeline
    metrics: Metrics
    client: TestClient
    remediator: Remediator

    def completed_order(self) -> uuid.UUID:
        order_id = self.shop.paid_order()
        assert self.pipeline.claim_order(order_id, OWNER)
        self.pipeline.run(order_id, OWNER)
        assert self.shop.order(order_id).status == OrderStatus.COMPLETED.value
        return order_id

    def download(self, order_id: uuid.UUID) -> tuple[int, dict[str, str], str]:
        response = self.client.get(f"/download/{self.shop.order(order_id).download_token}")
        return response.status_code, dict(response.headers), response.text

    def rows(self) -> list[Remediation]:
        with self.shop.sessions() as session:
            return list(session.query(Remediation).order_by(Remediation.id))

    def counted(self, result: Result) -> float:
        value = self.metrics.registry.get_sample_value(
            "healer_remediations_total", {"action": Action.RERENDER_PDF.value, "result": result.value})
        assert value is not None
        return value


@pytest.fixture
def make_rig(shop: Shop) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(mode: RemediationMode = RemediationMode.ON, max_attempts: int = 3,
             render_blocked: Callable[[], str | None] = lambda: None) -> Rig:
        metrics = Metrics()
        pipeline = shop.pipeline()
        audit = Audit(shop.sessions, metrics, mode)
        restorer = PdfRestorer(pipeline.rerender, audit, max_attempts=max_attempts, render_blocked=render_blocked)
        remediator = Remediator(audit, pdfs=restorer)
        client = public_client(shop.sessions, pipeline, shop.store, restore_pdf=remediator.on_missing_download)
        made.append(Rig(shop, pipeline, metrics, client, remediator))
        return made[-1]

    yield make
    for r in made:
        r.remediator.shutdown()  # no render thread outlives the test's database


def test_a_lost_pdf_is_rendered_again_and_the_link_works_again_without_a_second_email(shop: Shop, make_rig: Callable[..., Rig]) -> None:
    r = make_rig()
    order_id = r.completed_order()
    key = final_pdf_key(order_id)
    original = shop.store.get(key)
    shop.store.delete(key)

    status, headers, body = r.download(order_id)

    assert status == 503 and headers["retry-after"] == "60" and BEING_RESTORED in body
    eventually(lambda: r.counted(Result.SUCCESS) == 1, timeout=30, what="the render to be recorded")
    assert shop.store.get(key) == original  # the same poster, byte for byte
    status, headers, _ = r.download(order_id)
    assert status == 307 and key in headers["location"]
    [row] = r.rows()
    assert (row.action, row.target, row.result) == ("rerender_pdf", str(order_id), "success")
    assert row.reason.startswith("the download link's PDF is unavailable: s3_missing_file:")
    order = shop.order(order_id)
    assert order.status == OrderStatus.COMPLETED.value and len(shop.emails_to("ada@example.com")) == 1
    last = shop.events(order_id)[-1]
    assert (last.step, last.outcome) == (Step.RENDER.value, Outcome.OK.value) and "again" in last.message


def test_a_broken_stored_key_is_replaced_by_the_orders_own(shop: Shop, make_rig: Callable[..., Rig]) -> None:
    r = make_rig()
    order_id = r.completed_order()
    with transaction(shop.sessions) as session:
        session.execute(update(Order).where(Order.id == order_id).values(final_pdf_key="../../etc/passwd"))

    assert r.download(order_id)[0] == 503
    eventually(lambda: r.counted(Result.SUCCESS) == 1, timeout=30, what="the render to be recorded")

    assert shop.order(order_id).final_pdf_key == final_pdf_key(order_id)
    assert r.download(order_id)[0] == 307


def test_a_pdf_that_keeps_vanishing_is_escalated_once_not_rendered_for_ever(shop: Shop, make_rig: Callable[..., Rig]) -> None:
    r = make_rig(max_attempts=1)
    order_id = r.completed_order()
    key = final_pdf_key(order_id)
    shop.store.delete(key)
    assert r.download(order_id)[0] == 503
    eventually(lambda: r.counted(Result.SUCCESS) == 1, timeout=30, what="the render to be recorded")
    shop.store.delete(key)  # lost again

    answers = [r.download(order_id) for _ in range(3)]

    assert [(status, GONE in body) for status, _, body in answers] == [(404, True)] * 3
    assert not shop.store.exists(key)
    assert [row.result for row in r.rows()] == ["success", "escalated"]
    assert "rendered again 1 time(s) in 24 h and lost each time" in r.rows()[-1].detail


def test_a_render_that_keeps_failing_is_recorded_then_escalated(shop: Shop, make_rig: Callable[..., Rig]) -> None:
    r = make_rig(max_attempts=2)
    order_id = r.completed_order()
    shop.store.delete(final_pdf_key(order_id))
    shop.store.delete(f"orders/{order_id}/photo.jpg")  # the permanent photo is gone too

    for attempt in (1, 2):
        assert r.download(order_id)[0] == 503
        eventually(lambda attempt=attempt: r.counted(Result.FAILURE) == attempt, timeout=30, what=f"failure {attempt} to be recorded")
    answers = [r.download(order_id)[0] for _ in range(2)]

    assert answers == [404, 404]
    assert [row.result for row in r.rows()] == ["failure", "failure", "escalated"]
    assert r.rows()[0].detail.startswith("s3_missing_file:")
    assert "rendering it again failed 2 time(s)" in r.rows()[-1].detail
    assert shop.order(order_id).status == OrderStatus.COMPLETED.value


def test_while_a_check_the_render_needs_is_failing_nothing_is_tried_and_the_customer_waits(
        shop: Shop, make_rig: Callable[..., Rig]) -> None:
    blocked: list[str | None] = ["check s3 failing"]
    r = make_rig(max_attempts=1, render_blocked=lambda: blocked[0])
    order_id = r.completed_order()
    shop.store.delete(final_pdf_key(order_id))

    answers = [r.download(order_id)[0] for _ in range(3)]

    assert answers == [503] * 3 and r.rows() == [] and not shop.store.exists(final_pdf_key(order_id))
    blocked[0] = None  # S3 is back
    assert r.download(order_id)[0] == 503
    eventually(lambda: r.counted(Result.SUCCESS) == 1, timeout=30, what="the render to be recorded")
    assert r.download(order_id)[0] == 307


def test_a_refunded_orders_lost_pdf_is_not_rendered_again(shop: Shop, make_rig: Callable[..., Rig]) -> None:
    r = make_rig()
    order_id = r.completed_order()
    shop.store.delete(final_pdf_key(order_id))
    with transaction(shop.sessions) as session:
        session.execute(update(Order).where(Order.id == order_id).values(status=OrderStatus.REFUNDED.value))

    assert r.download(order_id)[0] == 410  # gone for good: a refunded order has no poster to give
    assert r.rows() == []


@pytest.mark.parametrize("mode", [RemediationMode.DRY_RUN, RemediationMode.OFF])
def test_dry_run_and_off_render_nothing_and_answer_404(
        shop: Shop, make_rig: Callable[..., Rig], mode: RemediationMode) -> None:
    r = make_rig(mode)
    order_id = r.completed_order()
    shop.store.delete(final_pdf_key(order_id))

    answers = [r.download(order_id)[0] for _ in range(3)]

    assert answers == [404] * 3 and not shop.store.exists(final_pdf_key(order_id))
    expected = [("rerender_pdf", "dry_run")] if mode is RemediationMode.DRY_RUN else []
    assert [(row.action, row.result) for row in r.rows()] == expected


def test_only_a_completed_order_is_rendered_again(shop: Shop, make_rig: Callable[..., Rig]) -> None:
    r = make_rig()
    order_id = shop.paid_order()

    with pytest.raises(StepError, match="only a completed order's PDF is rendered again"):
        r.pipeline.rerender(order_id)
    assert shop.order(order_id).status == OrderStatus.PENDING_PAYMENT.value
