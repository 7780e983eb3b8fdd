"""Orphan payments after they are found: migration 0004 on databases that already hold some, and
`healer orphans list|resolve` as an operator runs them (a subprocess, PostgreSQL behind it)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, Table, insert, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.models import Base, transaction, utcnow
from healer import db
from healer.db.models import OrphanPayment
from healer.health.metrics import Metrics
from healer.stripe.orphans import count_unresolved

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


# -- migration 0004 --------------------------------------------------------------------------------


def orphan_columns(engine: Engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("orphan_payments")}


def test_upgrade_to_0004_keeps_existing_orphans_and_leaves_them_unresolved(empty_engine: Engine) -> None:
    db.upgrade(empty_engine, "0003")
    as_of_0003 = Table("orphan_payments", MetaData(), autoload_with=empty_engine)
    with empty_engine.begin() as connection:
        connection.execute(insert(as_of_0003), [
            {"payment_intent_id": "pi_old_1", "amount_cents": 2500, "currency": "eur", "created": T0,
             "metadata_order_id": None, "first_seen_at": T0, "reported_at": T0},
            {"payment_intent_id": "pi_old_2", "amount_cents": 900, "currency": "usd", "created": T0,
             "metadata_order_id": "deleted-order", "first_seen_at": T0, "reported_at": T0},
        ])
    assert "resolved_at" not in orphan_columns(empty_engine)

    db.upgrade(empty_engine, "0004")

    assert db.current_revision(empty_engine) == "0004"
    sessions = db.make_session_factory(empty_engine)
    with sessions() as session:
        rows = session.scalars(select(OrphanPayment).order_by(OrphanPayment.payment_intent_id)).all()
        assert [(o.payment_intent_id, o.amount_cents, o.resolved_at, o.resolution) for o in rows] == [
            ("pi_old_1", 2500, None, None), ("pi_old_2", 900, None, None)]
        assert rows[1].created == T0 and count_unresolved(session) == 2
    with empty_engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert [d for d in diffs if "orphan_payments" in repr(d)] == []


def test_downgrade_from_0004_drops_only_the_resolution(empty_engine: Engine) -> None:
    db.upgrade(empty_engine, "0004")
    sessions = db.make_session_factory(empty_engine)
    with transaction(sessions) as session:
        session.add(OrphanPayment(payment_intent_id="pi_kept", amount_cents=100, currency="eur", created=T0,
                                  resolved_at=T0, resolution="by operator: refunded by hand"))

    command.downgrade(db.alembic_config(empty_engine), "0003")

    assert {"resolved_at", "resolution"} & orphan_columns(empty_engine) == set()
    with empty_engine.connect() as connection:
        assert connection.scalar(text("SELECT payment_intent_id FROM orphan_payments")) == "pi_kept"
    db.upgrade(empty_engine, "0004")
    assert db.current_revision(empty_engine) == "0004"


# -- `healer orphans` ------------------------------------------------------------------------------


def healer(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "healer", *args], env=dict(env, COLUMNS="200"),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def add_orphan(sessions: sessionmaker[Session], pi: str, *, created: datetime, amount: int = 2500,
               resolution: str | None = None, order: str | None = None) -> None:
    with transaction(sessions) as session:
        session.add(OrphanPayment(payment_intent_id=pi, amount_cents=amount, currency="eur", created=created,
                                  metadata_order_id=order, first_seen_at=created + timedelta(minutes=5),
                                  reported_at=created + timedelta(minutes=5),
                                  resolved_at=created + timedelta(hours=1) if resolution else None,
                                  resolution=resolution))


def stored(sessions: sessionmaker[Session], pi: str) -> OrphanPayment | None:
    with sessions() as session:
        return session.get(OrphanPayment, pi)


@pytest.fixture
def three_orphans(sessions: sessionmaker[Session]) -> None:
    add_orphan(sessions, "pi_oldest", created=T0, order="0d9a7c1e-0000-4000-8000-000000000001")
    add_orphan(sessions, "pi_newest", created=T0 + timedelta(days=2), amount=4900)
    add_orphan(sessions, "pi_refunded", created=T0 + timedelta(days=1),
               resolution="refunded in Stripe (event evt_123)")


def test_list_shows_unresolved_orphans_newest_first(
    shop_env: dict[str, str], three_orphans: None
) -> None:
    listed = healer(shop_env, "orphans", "list", "--json")
    everything = healer(shop_env, "orphans", "list", "--all", "--json")
    table = healer(shop_env, "orphans", "list")

    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["payment_intent_id"] for r in rows] == ["pi_newest", "pi_oldest"]
    assert rows[1] == {
        "payment_intent_id": "pi_oldest", "amount_cents": 2500, "currency": "eur",
        "created": "2026-11-20T09:30:00+00:00", "metadata_order_id": "0d9a7c1e-0000-4000-8000-000000000001",
        "first_seen_at": "2026-11-20T09:35:00+00:00", "resolved_at": None, "resolution": None}
    assert [(r["payment_intent_id"], r["resolution"]) for r in json.loads(everything.stdout)] == [
        ("pi_newest", None), ("pi_refunded", "refunded in Stripe (event evt_123)"), ("pi_oldest", None)]
    assert table.returncode == 0 and "2 unresolved orphan payment(s)" in table.stdout
    assert "pi_newest" in table.stdout and "4900 eur" in table.stdout and "pi_refunded" not in table.stdout


def test_resolve_marks_the_orphan_dealt_with_and_it_stops_counting(
    shop_env: dict[str, str], sessions: sessionmaker[Session], three_orphans: None
) -> None:
    metrics = Metrics()
    metrics.watch_orders(sessions, sla_seconds=600, ttl_seconds=0)  # as a running daemon scrapes it
    assert metrics.registry.get_sample_value("healer_orphan_payments") == 2
    before = utcnow()

    result = healer(shop_env, "orphans", "resolve", "pi_oldest", "--note", "order found in the old shop,\n ticket 42")

    assert result.returncode == 0, result.stderr
    assert "orphan payment pi_oldest (2500 eur) resolved: by operator: order found in the old shop, ticket 42" \
        in result.stdout
    assert "Orphan payment pi_oldest resolved by an operator" in result.stderr
    assert "ticket 42" not in result.stderr  # the note is stored, not logged
    row = stored(sessions, "pi_oldest")
    assert row is not None and row.resolved_at is not None and row.resolved_at >= before
    assert row.resolution == "by operator: order found in the old shop, ticket 42"
    assert metrics.registry.get_sample_value("healer_orphan_payments") == 1
    listed = json.loads(healer(shop_env, "orphans", "list", "--json").stdout)
    assert [r["payment_intent_id"] for r in listed] == ["pi_newest"]


def test_resolving_an_unknown_or_resolved_orphan_is_a_clear_error_and_changes_nothing(
    shop_env: dict[str, str], sessions: sessionmaker[Session], three_orphans: None
) -> None:
    unknown = healer(shop_env, "orphans", "resolve", "pi_nobody", "--note", "refunded")
    already = healer(shop_env, "orphans", "resolve", "pi_refunded", "--note", "refunded by hand")

    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.strip().splitlines()[-1] == (
        "healer: no orphan payment 'pi_nobody' (`healer orphans list --all` shows them all)")
    assert already.returncode == 1 and already.stdout == ""
    assert already.stderr.strip().splitlines()[-1] == (
        "healer: orphan payment pi_refunded was resolved already, at 2026-11-21T10:30:00+00:00: "
        "refunded in Stripe (event evt_123)")
    row = stored(sessions, "pi_refunded")
    assert row is not None and row.resolution == "refunded in Stripe (event evt_123)"
    assert row.resolved_at == T0 + timedelta(days=1, hours=1)
    assert stored(sessions, "pi_nobody") is None


@pytest.mark.parametrize("note", [None, "   \n "])
def test_resolve_requires_a_note(
    shop_env: dict[str, str], sessions: sessionmaker[Session], three_orphans: None, note: str | None
) -> None:
    result = healer(shop_env, "orphans", "resolve", "pi_newest", *(["--note", note] if note is not None else []))

    assert result.returncode == 64 and "--note" in result.stderr
    row = stored(sessions, "pi_newest")
    assert row is not None and row.resolved_at is None
