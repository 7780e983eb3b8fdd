"""The shop around the pipeline: real PostgreSQL, moto S3 over HTTP, the SendGrid and Stripe
servers of tests/fakes, and the real renderer on a temporary copy of the assets.

`shop.paid_order()` does what the shop's checkout does: uploads a photo, a sound and a waveform
to temporary keys, creates a succeeded PaymentIntent, and inserts the order row.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.mailer import SendGridMailer
from fulfilment.models import Order, OrderEvent, transaction, utcnow
from fulfilment.payments import StripePayments
from fulfilment.pipeline import Confirm, Gate, Pipeline, never_confirmed, never_gated
from fulfilment.recording import RetryPolicy, StepResult
from fulfilment.render import render_poster
from fulfilment.storage import ObjectStore, S3Store
from healer import db
from healer.demo.samples import sample_audio, sample_photo, sample_waveform_png
from tests.fakes.s3_fixtures import MotoBucket
from tests.fakes.sendgrid_server import SendGridServer
from tests.fakes.stripe_server import FakeStripeServer

FROM_EMAIL = "posters@shop.example"
PUBLIC_BASE_URL = "https://shop.example"


@dataclass
class Shop:
    sessions: sessionmaker[Session]
    s3: MotoBucket
    sendgrid: SendGridServer
    stripe: FakeStripeServer
    assets_dir: Path
    results: list[StepResult] = field(default_factory=list)
    _photo: bytes = field(default_factory=lambda: sample_photo(seed=1, size=(480, 640)))
    _audio: bytes = field(default_factory=lambda: sample_audio(seed=1, seconds=3.0))

    @property
    def store(self) -> S3Store:
        return self.s3.store

    def pipeline(
        self,
        *,
        gate: Gate = never_gated,
        confirm: Confirm = never_confirmed,
        max_attempts: int = 5,
        lease_seconds: int = 60,
        render: Callable[..., bytes] | None = None,
        mailer: Any = None,
        payments: Any = None,
        store: ObjectStore | None = None,
    ) -> Pipeline:
        return Pipeline(
            sessions=self.sessions,
            store=store or self.store,
            # Coalescing off: these tests script Stripe's answers call by call (tests/security covers it).
            payments=payments or StripePayments(self.stripe.api_key, api_base=self.stripe.url, timeout=5,
                                                coalesce_seconds=0),
            mailer=mailer or SendGridMailer(self.sendgrid.api_key, FROM_EMAIL, api_base=self.sendgrid.url, timeout=5),
            render=render or (lambda inputs: render_poster(self.assets_dir, inputs, preview=False)),
            public_base_url=PUBLIC_BASE_URL,
            retry=RetryPolicy(max_attempts=max_attempts, base_seconds=0.0, max_seconds=0.0),
            lease_seconds=lease_seconds,
            gate=gate,
            confirm=confirm,
            observe=self.results.append,
        )

    def paid_order(
        self,
        *,
        template: str = "a4-portrait",
        title: str = "Zoë & Ömer",
        photo: bytes | None = None,
        audio: bytes | None = None,
        with_waveform: bool = True,
        amount_cents: int = 4900,
        currency: str = "eur",
        payment_status: str = "succeeded",
        queued: bool = True,
        order_id: uuid.UUID | None = None,
        **columns: Any,
    ) -> uuid.UUID:
        order_id = order_id or uuid.uuid4()
        audio = self._audio if audio is None else audio
        keys = {
            "photo_key": f"tmp/{order_id}/photo.jpg",
            "audio_key": f"tmp/{order_id}/voice.wav",
            "waveform_key": f"tmp/{order_id}/waveform.png",
        }
        self.store.put(keys["photo_key"], self._photo if photo is None else photo, "image/jpeg")
        self.store.put(keys["audio_key"], audio, "audio/wav")
        if with_waveform:
            self.store.put(keys["waveform_key"], sample_waveform_png(audio), "image/png")
        intent = self.stripe.create_payment_intent(
            amount_cents, currency, {"order_id": str(order_id)}, status=payment_status
        )
        values: dict[str, Any] = dict(
            id=order_id,
            email="ada@example.com",
            session_token=f"sess-{order_id.hex}",
            stripe_payment_intent_id=intent["id"],
            amount_cents=amount_cents,
            currency=currency,
            template=template,
            title=title,
            subtitle="Our first dance",
            **keys,
        )
        values.update(columns)
        if queued:
            values.setdefault("next_attempt_at", utcnow())
        with transaction(self.sessions) as session:
            session.add(Order(**values))
        return order_id

    def order(self, order_id: uuid.UUID) -> Order:
        with self.sessions() as session:
            order = session.get(Order, order_id)
            assert order is not None
            return order

    def events(self, order_id: uuid.UUID) -> list[OrderEvent]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
                )
            )

    def emails_to(self, address: str) -> list[Any]:
        return [m for m in self.sendgrid.messages if address in m.to]


@pytest.fixture
def shop(
    pg_engine: Engine,
    s3_bucket: MotoBucket,
    sendgrid_server: SendGridServer,
    stripe_server: FakeStripeServer,
    assets_dir: Path,
) -> Shop:
    return Shop(db.make_session_factory(pg_engine), s3_bucket, sendgrid_server, stripe_server, assets_dir)


@pytest.fixture
def shop_env(shop: Shop, pg_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment a healer process needs to work on `shop`'s peers (secrets included)."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("HEALER_", "AWS_", "S3_", "STRIPE_", "SENDGRID_", "DATABASE_URL"))}
    return dict(
        keep,
        DATABASE_URL=pg_url,
        HEALER_DATA_DIR=str(tmp_path / "data"),
        HEALER_ASSETS_DIR=str(shop.assets_dir),
        AWS_ACCESS_KEY_ID="testing-access-key",
        AWS_SECRET_ACCESS_KEY="testing-secret-key-never-logged",
        S3_BUCKET=shop.s3.bucket,
        S3_REGION="us-east-1",
        S3_ENDPOINT_URL=shop.s3.endpoint_url,
        SENDGRID_API_KEY=shop.sendgrid.api_key,
        SENDGRID_API_BASE=shop.sendgrid.url,
        FROM_EMAIL=FROM_EMAIL,
        STRIPE_SECRET_KEY=shop.stripe.api_key,
        STRIPE_WEBHOOK_SECRET=shop.stripe.webhook_secret,
        STRIPE_API_BASE=shop.stripe.url,
        PUBLIC_BASE_URL=PUBLIC_BASE_URL,
    )
