"""A Pipeline for what only reads and claims orders (query plans, the scale benchmark): its peers
are local and inert, since nothing here verifies a payment, renders or sends an email."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from fulfilment.mailer import OutboxMailer
from fulfilment.payments import StripePayments
from fulfilment.pipeline import Pipeline
from fulfilment.recording import RetryPolicy
from fulfilment.storage import LocalStore


def claims_only_pipeline(sessions: sessionmaker[Session], scratch: Path) -> Pipeline:
    return Pipeline(sessions=sessions, store=LocalStore(scratch / "store"),
                    payments=StripePayments("sk_test_unused", api_base="http://127.0.0.1:9"),
                    mailer=OutboxMailer(scratch / "outbox", "queries@shop.example"),
                    render=lambda _inputs: b"", public_base_url="https://shop.example",
                    retry=RetryPolicy(), lease_seconds=120)
