"""Scratch PostgreSQL databases for the benchmarks, and orders by the hundred thousand in them.

Each benchmark works in a database of its own on the shared server (127.0.0.1:5432), created at
the latest migration and dropped afterwards, whatever happens meanwhile.
"""

from __future__ import annotations

import csv
import io
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from healer import db

log = logging.getLogger(__name__)

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/"
ORDER_MIX = (("completed", 0.95), ("pending_payment", 0.03), ("needs_attention", 0.01), ("refunded", 0.01))
COPY_COLUMNS = ("id", "status", "email", "amount_cents", "currency", "template", "title", "subtitle", "created_at",
                "paid_at", "completed_at", "attempts", "last_error_step", "last_error_class", "last_error")


@contextmanager
def scratch_database(label: str, pool_size: int = 5) -> Iterator[tuple[str, Engine]]:
    """A PostgreSQL database of its own at the latest migration (its URL and an engine), dropped after."""
    name = f"healer_bench_{label.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG + "postgres", isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = db.make_engine(PG + name, pool_size=pool_size)
    try:
        db.upgrade(engine)
        yield PG + name, engine
    finally:
        engine.dispose()
        drop_scratch_database(admin, name)
        admin.dispose()


def drop_scratch_database(admin: Engine, name: str, patience: float = 120.0) -> None:
    """Drop it even if the shared server is restarting just now (others' tests restart it): a
    scratch database left behind would stay on everyone's server."""
    deadline = time.monotonic() + patience
    while True:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except SQLAlchemyError:
            if time.monotonic() > deadline:
                log.error("could not drop the scratch database %s: drop it by hand", name)
                return
            time.sleep(2)


def bulk_insert_orders(engine: Engine, n: int) -> float:
    """`n` orders in one COPY, in the shop's proportions: mostly completed, some unpaid or failed."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    thresholds, total = [], 0.0
    for status, share in ORDER_MIX:
        total += share
        thresholds.append((total, status))
    for i in range(n):
        status = next(s for limit, s in thresholds if (i % 1000) / 1000 < limit)
        created = now - timedelta(seconds=(n - i) * 30)
        paid = created + timedelta(seconds=60) if status in ("completed", "refunded", "needs_attention") else None
        writer.writerow([uuid.uuid4(), status, f"c{i}@example.com", 4900, "eur", "a4-portrait", "Zoë & Ömer", "Our first dance",
                         created.isoformat(), paid.isoformat() if paid else "",
                         (paid + timedelta(seconds=40)).isoformat() if status == "completed" and paid else "", 0,
                         "render" if status == "needs_attention" else "",
                         "bad_input" if status == "needs_attention" else "",
                         "photo is not a readable image" if status == "needs_attention" else ""])
    buffer.seek(0)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.copy_expert(f"COPY orders ({', '.join(COPY_COLUMNS)}) FROM STDIN WITH (FORMAT csv, NULL '')", buffer)
        raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - started
