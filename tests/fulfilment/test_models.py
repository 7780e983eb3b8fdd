"""The order columns hold enums: Python reads and writes members, the table holds their plain
strings (VARCHAR, as the migrations made it), and a string that is no member never gets in."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.errors import ErrorClass
from fulfilment.models import Order, OrderStatus, Step, transaction


def _order(sessions: sessionmaker[Session], **values: object) -> uuid.UUID:
    order_id = uuid.uuid4()
    with transaction(sessions) as session:
        session.add(Order(id=order_id, email="a@example.com", amount_cents=4900, currency="eur",
                          template="a4-portrait", **values))
    return order_id


def test_status_columns_read_back_as_members_and_are_stored_as_their_values(any_engine: Engine) -> None:
    sessions = sessionmaker(any_engine)
    order_id = _order(sessions, status=OrderStatus.NEEDS_ATTENTION, last_error_step=Step.RENDER,
                      last_error_class=ErrorClass.ASSET_MISSING)

    with sessions() as session:
        order = session.get(Order, order_id)
        assert order is not None
        assert order.status is OrderStatus.NEEDS_ATTENTION
        assert order.last_error_step is Step.RENDER and order.last_error_class is ErrorClass.ASSET_MISSING
        stored = session.execute(text("SELECT status, last_error_step, last_error_class FROM orders WHERE id = :id"),
                                 {"id": order_id.hex if any_engine.dialect.name == "sqlite" else order_id}).one()
    assert tuple(stored) == ("needs_attention", "render", "asset_missing")


def test_a_status_that_is_not_a_member_is_refused_and_changes_nothing(any_engine: Engine) -> None:
    sessions = sessionmaker(any_engine)
    order_id = _order(sessions, status=OrderStatus.PAID)

    with pytest.raises(StatementError, match="'shipped' is not among the defined enum values"):
        with transaction(sessions) as session:
            session.execute(update(Order).where(Order.id == order_id).values(status="shipped"))

    with sessions() as session:
        assert session.scalars(select(Order.status).where(Order.id == order_id)).one() is OrderStatus.PAID
