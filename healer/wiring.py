"""Builds the daemon's clients and components from Settings: the one place that wires them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.mailer import Mailer, OutboxMailer, SendGridMailer
from fulfilment.payments import DisabledPayments, Payments, StripePayments
from fulfilment.pipeline import Gate, Pipeline, RenderFn, RetryPolicy, StepResult, never_gated
from fulfilment.storage import LocalStore, ObjectStore, S3Store, make_s3_client
from healer import db
from healer.config import Settings

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ObjectStore
    mailer: Mailer
    payments: Payments

    @classmethod
    def build(cls, settings: Settings) -> Services:
        engine = db.make_engine(settings.effective_database_url, pool_size=settings.workers + 4)
        return cls(
            settings=settings,
            engine=engine,
            sessions=db.make_session_factory(engine),
            store=build_store(settings),
            mailer=build_mailer(settings),
            payments=build_payments(settings),
        )

    def pipeline(
        self,
        render: RenderFn,
        *,
        gate: Gate = never_gated,
        observe: Callable[[StepResult], None] = lambda _r: None,
    ) -> Pipeline:
        s = self.settings
        return Pipeline(
            sessions=self.sessions,
            store=self.store,
            payments=self.payments,
            mailer=self.mailer,
            render=render,
            public_base_url=s.public_base_url,
            retry=RetryPolicy(s.max_attempts, s.retry_base_seconds, s.retry_max_seconds),
            lease_seconds=s.lease_seconds,
            gate=gate,
            gate_wait_seconds=min(s.check_interval_seconds, 30.0),
            observe=observe,
        )

    def close(self) -> None:
        self.engine.dispose()


def build_store(settings: Settings) -> ObjectStore:
    if settings.s3_bucket is None:
        return LocalStore(settings.local_store_dir)
    client = make_s3_client(
        access_key_id=settings.aws_access_key_id.value if settings.aws_access_key_id else None,
        secret_access_key=(
            settings.aws_secret_access_key.value if settings.aws_secret_access_key else None
        ),
        region=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
    )
    return S3Store(client, settings.s3_bucket)


def build_mailer(settings: Settings) -> Mailer:
    if settings.sendgrid_api_key is None:
        return OutboxMailer(settings.outbox_dir, settings.from_email)
    return SendGridMailer(
        settings.sendgrid_api_key.value, settings.from_email, api_base=settings.sendgrid_api_base
    )


def build_payments(settings: Settings) -> Payments:
    if settings.stripe_secret_key is None:
        return DisabledPayments()
    return StripePayments(settings.stripe_secret_key.value, api_base=settings.stripe_api_base)
