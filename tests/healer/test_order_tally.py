"""Issue 17: orders by status come from the tally the database keeps as it writes (migration 0009,
healer.db.tally), so counting them costs the same at a million orders as at ten. The tally must be
exactly what counting every order would say: after inserts, status changes, canary orders and
deletes, on both databases; under concurrent writers and folds, where no reader ever sees an order
counted twice or not at all; and from the orders there were when the migration ran.
"""

from __future__ import annotations

import random
import threading
import uuid

import pytest
from alembic import command
from sqlalchemy import Engine, func, inspect, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.models import Order, OrderStatus, transaction
from healer import db
from healer.db import tally
from healer.db.models import OrderStatusTally
from healer.health.metrics import OrderFigures

STATUSES = [status.value for status in OrderStatus]


def add_orders(sessions: sessionmaker[Session], *statuses: str, canary: bool = False) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in statuses]
    with transaction(sessions) as session:
        session.add_all(Order(id=order_id, email="c@example.com", amount_cents=4900, currency="eur",
                              template="a4-portrait", status=status, is_canary=canary)
                        for order_id, status in zip(ids, statuses, strict=True))
    return ids


def counted(engine: Engine) -> dict[str, int]:
    """What counting every order says: the truth the tally must match."""
    with engine.connect() as conn:
        rows = conn.execute(select(Order.status, func.count()).where(Order.is_canary.is_(False))
                            .group_by(Order.status)).all()
    return {str(status): n for status, n in rows}


def tallied(engine: Engine) -> dict[str, int]:
    with db.make_session_factory(engine)() as session:
        return tally.counts(session)[0]


def tally_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(OrderStatusTally))


def test_the_tally_follows_inserts_status_changes_and_deletes(any_engine: Engine) -> None:
    sessions = db.make_session_factory(any_engine)
    paid = add_orders(sessions, "paid", "paid", "paid", "pending_payment")
    add_orders(sessions, "paid", canary=True)  # never counted
    assert tallied(any_engine) == counted(any_engine) == {"paid": 3, "pending_payment": 1}

    with transaction(sessions) as session:
        session.execute(update(Order).where(Order.id == paid[0]).values(status="completed"))
        session.execute(update(Order).where(Order.id == paid[1]).values(status="needs_attention"))
        session.execute(update(Order).where(Order.id == paid[2]).values(attempts=Order.attempts + 1))  # no move
    with transaction(sessions) as session:
        session.execute(update(Order).where(Order.id == paid[1]).values(status="paid"))
        session.execute(Order.__table__.delete().where(Order.id == paid[0]))
    assert tallied(any_engine) == counted(any_engine) == {"paid": 2, "pending_payment": 1}

    # An order that becomes a canary leaves the counts; one that stops being one joins them.
    with transaction(sessions) as session:
        session.execute(update(Order).where(Order.id == paid[2]).values(is_canary=True))
        session.execute(update(Order).where(Order.is_canary.is_(True), Order.id != paid[2])
                        .values(is_canary=False, status="refunded"))
    assert tallied(any_engine) == counted(any_engine) == {"paid": 1, "pending_payment": 1, "refunded": 1}


def test_a_rolled_back_write_leaves_the_tally_as_it_was(any_engine: Engine) -> None:
    sessions = db.make_session_factory(any_engine)
    add_orders(sessions, "paid")
    with pytest.raises(RuntimeError), transaction(sessions) as session:
        session.execute(update(Order).values(status="completed"))
        session.add(Order(email="c@example.com", amount_cents=1, currency="eur", template="a4-portrait"))
        session.flush()
        raise RuntimeError("the writer fails before it commits")
    assert tallied(any_engine) == counted(any_engine) == {"paid": 1}


def test_folding_keeps_one_row_per_status_and_the_same_counts(any_engine: Engine) -> None:
    sessions = db.make_session_factory(any_engine)
    ids = add_orders(sessions, *(["paid"] * 40))
    for order_id in ids:  # row by row, as the worker moves orders: rows pile up
        for status in ("files_migrated", "pdf_rendered", "completed"):
            with transaction(sessions) as session:
                session.execute(update(Order).where(Order.id == order_id).values(status=status))
    before = tally_rows(any_engine)
    assert before > 200

    with transaction(sessions) as session:
        removed = tally.fold(session)

    assert removed == before - 1 and tally_rows(any_engine) == 1  # all completed now: one status, one row
    assert tallied(any_engine) == counted(any_engine) == {"completed": 40}
    with transaction(sessions) as session:
        assert tally.fold(session) == 0  # nothing left to fold


def test_the_metrics_refresh_folds_once_the_rows_pile_up(pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tally, "FOLD_AFTER_ROWS", 10)
    sessions = db.make_session_factory(pg_engine)
    for _ in range(12):
        add_orders(sessions, "paid")  # one statement each: one row each
    figures = OrderFigures(sessions, sla_seconds=600, ttl_seconds=0)

    snapshot = figures.snapshot()

    assert snapshot is not None and snapshot.by_status["paid"] == 12 and snapshot.by_status["completed"] == 0
    assert tally_rows(pg_engine) == 1
    assert figures.snapshot().by_status["paid"] == 12  # type: ignore[union-attr]


def test_a_statement_over_many_orders_adds_one_row_per_status(pg_engine: Engine) -> None:
    """PostgreSQL's statement triggers: a bulk import or a bulk update adds a row per status it
    changed, however many orders it wrote; a write that moves no order adds none."""
    with pg_engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO orders (id, status, email, amount_cents, currency, template) "
            "SELECT gen_random_uuid(), CASE WHEN i % 4 = 0 THEN 'paid' ELSE 'completed' END, 'c@example.com', "
            "4900, 'eur', 'a4-portrait' FROM generate_series(1, 2000) AS i"))
    assert tally_rows(pg_engine) == 2
    with pg_engine.begin() as conn:
        conn.execute(text("UPDATE orders SET lease_owner = 'w1' WHERE status = 'paid'"))  # a lease, no move
    assert tally_rows(pg_engine) == 2
    with pg_engine.begin() as conn:
        conn.execute(text("UPDATE orders SET status = 'completed' WHERE status = 'paid'"))
    assert tally_rows(pg_engine) == 4  # -500 paid, +500 completed
    assert tallied(pg_engine) == counted(pg_engine) == {"completed": 2000}


def test_concurrent_writers_and_folds_never_miscount(pg_engine: Engine) -> None:
    """Writers move orders between statuses in transactions of several orders, committing or rolling
    back, while two folders fold as often as they can and a reader keeps reading: every read sums
    to the number of orders (no order counted twice or missed mid-move), and at the end the tally
    is exactly the count."""
    sessions = db.make_session_factory(pg_engine)
    ids = add_orders(sessions, *(["paid"] * 60))
    stop = threading.Event()
    errors: list[BaseException] = []
    reads: list[int] = []

    def guarded(work):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                work()
            except BaseException as error:
                errors.append(error)
                stop.set()
        return run

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        mine = ids[seed::3]
        for n in range(150):
            with sessions() as session:
                for order_id in sorted(rng.sample(mine, 3)):
                    session.execute(update(Order).where(Order.id == order_id).values(status=rng.choice(STATUSES)))
                if n % 7 == 0:
                    session.rollback()
                else:
                    session.commit()

    def folder() -> None:
        while not stop.is_set():
            with sessions() as session, session.begin():
                tally.fold(session)

    def reader() -> None:
        while not stop.is_set():
            reads.append(sum(tallied(pg_engine).values()))

    writers = [threading.Thread(target=guarded(lambda s=s: writer(s))) for s in range(3)]
    others = [threading.Thread(target=guarded(folder)) for _ in range(2)] + [threading.Thread(target=guarded(reader))]
    for thread in writers + others:
        thread.start()
    for thread in writers:
        thread.join(timeout=120)
    stop.set()
    for thread in others:
        thread.join(timeout=30)

    assert not errors, errors
    assert len(reads) > 10 and set(reads) == {60}
    assert tallied(pg_engine) == counted(pg_engine)
    assert sum(counted(pg_engine).values()) == 60


def test_truncating_the_orders_empties_the_tally(fresh_pg_engine: Engine) -> None:
    db.upgrade(fresh_pg_engine)
    add_orders(db.make_session_factory(fresh_pg_engine), "paid", "completed")
    with fresh_pg_engine.begin() as conn:
        conn.execute(text("TRUNCATE orders CASCADE"))
    assert tallied(fresh_pg_engine) == {} and tally_rows(fresh_pg_engine) == 0


def test_the_migration_counts_the_orders_already_there_and_its_downgrade_removes_only_the_tally(
        empty_engine: Engine) -> None:
    db.upgrade(empty_engine, "0008")
    sessions = db.make_session_factory(empty_engine)
    add_orders(sessions, "completed", "completed", "paid")
    add_orders(sessions, "paid", canary=True)

    db.upgrade(empty_engine, "0009")

    assert tallied(empty_engine) == counted(empty_engine) == {"completed": 2, "paid": 1}
    add_orders(sessions, "paid")
    assert tallied(empty_engine) == {"completed": 2, "paid": 2}

    command.downgrade(db.alembic_config(empty_engine), "0008")

    assert "order_status_tally" not in inspect(empty_engine).get_table_names()
    add_orders(sessions, "paid")  # the shop's writes go on without the triggers
    with transaction(sessions) as session:
        session.execute(update(Order).values(status="completed"))
    assert counted(empty_engine) == {"completed": 5}
    db.upgrade(empty_engine)
    assert tallied(empty_engine) == {"completed": 5}
