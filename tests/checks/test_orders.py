"""The orders check against real databases: stuck, needs_attention and expiring orders are seen in
one query, each named with its runbook, and the check is green again once they are dealt with."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, update
from sqlalchemy.orm import Session, sessionmaker

from checks.base import Runbook, Status, run_check
from checks.orders import OrdersCheck
from fulfilment.models import Order, OrderStatus, transaction, utcnow
from healer import db
from tests.fakes.shop_fixtures import Shop
from tests.fakes.tcp_proxy import TcpProxy

SLA = 600
EXPIRATION = 86400
MARGIN = 3600


def _check(sessions: sessionmaker[Session]) -> OrdersCheck:
    return OrdersCheck(sessions=sessions, sla_seconds=SLA, stuck_failing_seconds=3600,
                       session_expiration_seconds=EXPIRATION, expiry_margin_seconds=MARGIN)


def _order(
    sessions: sessionmaker[Session],
    status: OrderStatus,
    *,
    created_ago: float,
    paid_ago: float | None = None,
    last_error_class: str | None = None,
) -> uuid.UUID:
    now = utcnow()
    order = Order(
        id=uuid.uuid4(), status=status.value, email="ada@example.com", amount_cents=4900, currency="eur",
        template="a4-portrait", created_at=now - timedelta(seconds=created_ago),
        paid_at=None if paid_ago is None else now - timedelta(seconds=paid_ago),
        last_error_class=last_error_class,
    )
    with transaction(sessions) as session:
        session.add(order)
    return order.id


def _set(sessions: sessionmaker[Session], order_id: uuid.UUID, **values: Any) -> None:
    with transaction(sessions) as session:
        session.execute(update(Order).where(Order.id == order_id).values(**values))


def test_no_backlog_is_ok_with_zero_figures(sessions: sessionmaker[Session]) -> None:
    _order(sessions, OrderStatus.COMPLETED, created_ago=9 * EXPIRATION, paid_ago=9 * EXPIRATION)
    _order(sessions, OrderStatus.PENDING_PAYMENT, created_ago=2 * EXPIRATION)  # an abandoned cart
    _order(sessions, OrderStatus.PAID, created_ago=60, paid_ago=30)  # in progress, within the SLA

    result = run_check(_check(sessions))

    assert result.status is Status.OK, result.detail
    assert result.detail == "no paid order waiting longer than 10m"
    assert {k: v for k, v in result.data.items() if k != "soonest_upload_expiry_seconds"} == {
        "stuck": 0, "oldest_stuck_age_seconds": 0, "needs_attention": 0, "uploads_expiring": 0, "uploads_expired": 0,
    }
    assert EXPIRATION - 70 < result.data["soonest_upload_expiry_seconds"] <= EXPIRATION - 60


def test_orders_past_the_sla_warn_with_their_age_and_the_runbook_of_their_last_error(
    sessions: sessionmaker[Session],
) -> None:
    _order(sessions, OrderStatus.FILES_MIGRATED, created_ago=1300, paid_ago=1200, last_error_class="asset_missing")
    _order(sessions, OrderStatus.PDF_RENDERED, created_ago=1000, paid_ago=900, last_error_class="email_auth")
    _order(sessions, OrderStatus.PDF_RENDERED, created_ago=800, paid_ago=700, last_error_class="email_auth")

    result = run_check(_check(sessions))

    assert result.status is Status.WARNING
    assert result.detail == ("3 paid orders not completed within 10m, oldest paid 20m ago "
                             "(last errors email_auth: 2, asset_missing: 1)")
    assert "runbook 4 email sending failing, 3 PDF generation failing" in result.remedy
    assert result.data["stuck"] == 3
    assert 1200 <= result.data["oldest_stuck_age_seconds"] < 1260


def test_an_order_stuck_for_too_long_fails_and_clears_once_completed(sessions: sessionmaker[Session]) -> None:
    order_id = _order(sessions, OrderStatus.PAID, created_ago=7300, paid_ago=7200, last_error_class="s3_auth")
    check = _check(sessions)

    result = run_check(check)
    assert result.status is Status.FAILING
    assert result.detail.startswith("1 paid orders not completed within 10m, oldest paid 2.0h ago")
    assert "runbook 1 S3 permission denied" in result.remedy

    _set(sessions, order_id, status=OrderStatus.COMPLETED.value, completed_at=utcnow())
    assert run_check(check).status is Status.OK


def test_orders_in_needs_attention_fail_naming_their_runbook_until_dealt_with(
    sessions: sessionmaker[Session],
) -> None:
    lost = _order(sessions, OrderStatus.NEEDS_ATTENTION, created_ago=300, paid_ago=200,
                  last_error_class="s3_missing_file")
    refused = _order(sessions, OrderStatus.NEEDS_ATTENTION, created_ago=300, paid_ago=200,
                     last_error_class="bad_input")
    check = _check(sessions)

    result = run_check(check)
    assert result.status is Status.FAILING
    assert result.detail == "2 orders in needs_attention (last errors bad_input: 1, s3_missing_file: 1)"
    assert "(runbook 2 S3 files missing)" in result.remedy  # bad_input has no runbook: a refund
    assert "healer orders retry ID" in result.remedy and "refund" in result.remedy
    assert result.data["needs_attention"] == 2

    _set(sessions, lost, status=OrderStatus.FILES_MIGRATED.value)  # re-uploaded, re-queued, on its way
    _set(sessions, refused, status=OrderStatus.REFUNDED.value)
    assert run_check(check).status is Status.OK


def test_paid_orders_whose_uploads_expire_before_migration_fail_under_runbook_2(
    sessions: sessionmaker[Session],
) -> None:
    expiring = _order(sessions, OrderStatus.PAID, created_ago=EXPIRATION - 1800, paid_ago=120)
    expired = _order(sessions, OrderStatus.PENDING_PAYMENT, created_ago=EXPIRATION + 60, paid_ago=300)
    _order(sessions, OrderStatus.FILES_MIGRATED, created_ago=EXPIRATION - 60, paid_ago=200)  # safe already
    check = _check(sessions)

    result = run_check(check)
    assert result.status is Status.FAILING
    assert result.runbook is Runbook.S3_FILES_MISSING
    assert result.detail == (
        "1 paid orders' temporary uploads have expired before migration; "
        "1 paid orders' temporary uploads expire before migration (first in 30m)"
    )
    assert result.remedy.startswith("Runbook 2")
    assert (result.data["uploads_expiring"], result.data["uploads_expired"]) == (1, 1)
    assert -70 < result.data["soonest_upload_expiry_seconds"] <= -60

    for order_id in (expiring, expired):
        _set(sessions, order_id, status=OrderStatus.FILES_MIGRATED.value)
    assert run_check(check).status is Status.OK


def test_all_figures_come_from_one_query_however_many_orders(pg_engine: Engine) -> None:
    sessions = db.make_session_factory(pg_engine)
    for n in range(40):
        _order(sessions, list(OrderStatus)[n % len(OrderStatus)], created_ago=n * 3000, paid_ago=n * 2900,
               last_error_class=("s3_auth", "render_error", None)[n % 3])
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(pg_engine, "before_cursor_execute", count)
    try:
        result = run_check(_check(sessions))
    finally:
        event.remove(pg_engine, "before_cursor_execute", count)

    assert result.status is Status.FAILING
    assert len(statements) == 1, statements


def test_the_embedded_sqlite_database_gives_the_same_figures(sqlite_engine: Engine) -> None:
    sessions = db.make_session_factory(sqlite_engine)
    _order(sessions, OrderStatus.PAID, created_ago=EXPIRATION - 600, paid_ago=1200, last_error_class="s3_auth")
    _order(sessions, OrderStatus.NEEDS_ATTENTION, created_ago=900, paid_ago=800)

    result = run_check(_check(sessions))

    assert result.status is Status.FAILING
    assert result.data["stuck"] == 1 and result.data["needs_attention"] == 1
    assert result.data["uploads_expiring"] == 1
    assert 1200 <= result.data["oldest_stuck_age_seconds"] < 1260
    assert 540 < result.data["soonest_upload_expiry_seconds"] <= 600


def test_an_expiring_order_migrated_by_the_pipeline_clears_the_alarm(shop: Shop) -> None:
    now = utcnow()
    order_id = shop.paid_order(created_at=now - timedelta(seconds=EXPIRATION - 900),
                               paid_at=now - timedelta(seconds=60))
    check = _check(shop.sessions)
    assert run_check(check).status is Status.FAILING

    pipeline = shop.pipeline()
    assert pipeline.claim("daemon", 10) == [order_id]
    pipeline.run(order_id, "daemon")

    assert shop.order(order_id).status == OrderStatus.COMPLETED.value
    assert run_check(check).status is Status.OK


def test_the_check_depends_on_the_database_and_does_not_gate_readiness(sessions: sessionmaker[Session]) -> None:
    check = _check(sessions)
    assert check.depends_on == ("database",)
    assert check.critical is False



def test_a_database_gone_before_its_check_noticed_is_a_skip_not_a_second_alarm(
    pg_proxy: TcpProxy, pg_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    engine = db.make_engine(pg_proxy.replace_port(pg_url))
    check = _check(db.make_session_factory(engine))
    assert run_check(check).status is Status.OK
    pg_proxy.cut()

    result = run_check(check)

    assert result.status is Status.SKIPPED
    assert result.detail.startswith("skipped: database failing (OperationalError: ")
    assert result.remedy == "fix database first"
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a dependency's outage"
    engine.dispose()
