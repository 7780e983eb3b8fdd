"""A migration's downgrade never destroys orders: `alembic downgrade base` on a database that holds
an order refuses, says why and what to do instead, and leaves the order and the schema as they were.
The same for the payments no order claims (orphan_payments, migration 0002). An empty database
still goes all the way down and back up.

Real PostgreSQL (a database of each test's own: downgrades must not touch the session's) and
SQLite, the two databases the daemon runs on.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.util import CommandError
from sqlalchemy import Engine, inspect, text

from fulfilment.models import Order, OrderEvent, Outcome, Step, transaction
from healer import db
from healer.db.models import OrphanPayment

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


def add_order(engine: Engine) -> uuid.UUID:
    order_id = uuid.uuid4()
    with transaction(db.make_session_factory(engine)) as session:
        session.add(Order(id=order_id, status="completed", email="customer@example.com", amount_cents=2500,
                          currency="eur", template="classic", stripe_payment_intent_id="pi_paid"))
    return order_id


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def downgrade_base(engine: Engine) -> None:
    command.downgrade(db.alembic_config(engine), "base")


def test_downgrade_to_base_refuses_while_an_order_exists_and_keeps_it(empty_engine: Engine) -> None:
    engine = empty_engine
    db.upgrade(engine)
    order_id = add_order(engine)
    before = tables(engine)

    with pytest.raises(CommandError) as refused:
        downgrade_base(engine)

    message = str(refused.value)
    assert "Refusing to downgrade" in message and "orders" in message
    assert "destroying 1 order(s)" in message
    assert "backup" in message and "pg_dump" in message
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM orders")) == 1
        assert connection.scalar(text("SELECT id FROM orders")) in (order_id, str(order_id), order_id.hex)
    assert db.current_revision(engine) == db.head_revision()  # one transaction: nothing was undone
    # SQLite commits a CREATE TABLE at once: the copies 0005's and 0004's batches make stay behind, empty.
    assert tables(engine) - {"_alembic_tmp_orphan_payments", "_alembic_tmp_order_events"} == before
    if engine.dialect.name == "postgresql":
        assert tables(engine) == before

    with pytest.raises(CommandError, match="destroying 1 order"):  # and again: the same refusal
        downgrade_base(engine)


def test_the_refusal_counts_the_orders_story_too(empty_engine: Engine) -> None:
    engine = empty_engine
    db.upgrade(engine)
    add_order(engine)
    with transaction(db.make_session_factory(engine)) as session:
        order = session.query(Order).one()
        session.add_all([OrderEvent(order_id=order.id, step=Step.VERIFY_PAYMENT, outcome=Outcome.OK),
                         OrderEvent(order_id=order.id, step=Step.EMAIL, outcome=Outcome.OK)])

    with pytest.raises(CommandError, match=r"destroying 1 order\(s\) and 2 order event\(s\)"):
        downgrade_base(engine)

    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM order_events")) == 2


def test_downgrade_refuses_to_forget_payments_no_order_claims(empty_engine: Engine) -> None:
    engine = empty_engine
    db.upgrade(engine)
    with transaction(db.make_session_factory(engine)) as session:
        session.add(OrphanPayment(payment_intent_id="pi_orphan", amount_cents=4900, currency="eur",
                                  created=T0, metadata_order_id=None, first_seen_at=T0))

    with pytest.raises(CommandError) as refused:
        downgrade_base(engine)

    message = str(refused.value)
    assert "orphan_payments" in message and "1 payment(s)" in message
    assert "healer orphans list" in message
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT payment_intent_id FROM orphan_payments")) == "pi_orphan"
    assert db.current_revision(engine) == db.head_revision()


def test_an_empty_database_still_goes_down_to_base_and_back_up(empty_engine: Engine) -> None:
    engine = empty_engine
    db.upgrade(engine)

    downgrade_base(engine)

    assert tables(engine) <= {"alembic_version"}
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    assert add_order(engine)


@pytest.mark.parametrize("revision, table", [("0001", "orders and order_events tables"),
                                                  ("0002", "orphan_payments table")])
def test_offline_sql_generation_of_the_downgrade_refuses(fresh_pg_engine: Engine, revision: str, table: str) -> None:
    """`alembic downgrade --sql` cannot count rows, so it will not write their DROP TABLE."""
    with pytest.raises(CommandError, match=f"Refusing to generate SQL that drops the {table}"):
        command.downgrade(db.alembic_config(fresh_pg_engine), f"{revision}:base", sql=True)
    assert tables(fresh_pg_engine) == set()  # --sql only prints
