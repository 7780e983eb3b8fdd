"""The four steps that complete a paid order: verify payment, migrate files, render, email.

Each step is idempotent and runs outside any database transaction (the download token, committed
before the email is sent, is the one exception); it returns what it achieved as a `Done`, or
raises `StepError`. Recording that result, and catching the error, is the pipeline's business.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.errors import ErrorClass, StepError, WaveformUnusable
from fulfilment.mailer import Mailer, download_email
from fulfilment.models import Order, OrderStatus, Step, transaction
from fulfilment.payments import Payments
from fulfilment.recording import Done
from fulfilment.render import PosterInputs
from fulfilment.storage import ObjectStore

log = logging.getLogger(__name__)

# The most the render step reads of each upload: more than any real one, less than a bad day.
MAX_PHOTO_BYTES = 60 * 1024 * 1024
MAX_AUDIO_BYTES = 250 * 1024 * 1024
MAX_WAVEFORM_BYTES = 20 * 1024 * 1024

RenderFn = Callable[[PosterInputs], bytes]


def permanent_key(order_id: uuid.UUID, kind: str, temp_key: str) -> str:
    suffix = PurePosixPath(temp_key).suffix.lower()[:10]
    return f"orders/{order_id}/{kind}{suffix}"


def final_pdf_key(order_id: uuid.UUID) -> str:
    return f"pdfs/final_{order_id}.pdf"


def mask_email(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local[:1]}…@{domain}" if domain else "…"


@dataclass(frozen=True)
class Steps:
    """The steps' work, with the clients it needs; `run(step, order)` does one of them."""

    sessions: sessionmaker[Session]  # for the download token only
    store: ObjectStore
    payments: Payments
    mailer: Mailer
    renderer: RenderFn
    public_base_url: str  # without a trailing slash
    clock: Callable[[], datetime]

    def run(self, step: Step, order: Order) -> Done:
        return {
            Step.VERIFY_PAYMENT: self.verify_payment,
            Step.MIGRATE_FILES: self.migrate_files,
            Step.RENDER: self.render,
            Step.EMAIL: self.email,
        }[step](order)

    def verify_payment(self, order: Order) -> Done:
        now = self.clock()
        paid_at = order.paid_at or now
        if not self.payments.enabled:
            return Done(OrderStatus.PAID, {"paid_at": paid_at}, "payment verification disabled")
        payment = self.payments.verify(
            order_id=str(order.id),
            payment_intent_id=order.stripe_payment_intent_id or "",
            amount_cents=order.amount_cents,
            currency=order.currency,
        )
        log.info("Payment succeeded: %s for order %s", payment.payment_intent_id, order.id)
        return Done(
            OrderStatus.PAID,
            {"paid_at": paid_at, "payment_verified_at": now},
            f"Payment succeeded: {payment.payment_intent_id} ({payment.amount_cents} {payment.currency})",
        )

    def migrate_files(self, order: Order) -> Done:
        copied: list[str] = []
        skipped: list[str] = []
        for kind, temp_key in _uploads(order):
            target = permanent_key(order.id, kind, temp_key)
            try:
                # Idempotent: a copy already made (same size) is not made again.
                (copied if self.store.copy(temp_key, target) else skipped).append(kind)
            except StepError as error:
                if error.error_class is not ErrorClass.S3_MISSING_FILE:
                    raise
                if self.store.exists(target):  # copied on an earlier run; the upload expired since
                    skipped.append(kind)
                elif kind == "waveform":
                    log.warning("Waveform %s missing for order %s: it will be regenerated", temp_key, order.id)
                    skipped.append("waveform (missing, regenerated at render)")
                else:
                    raise
        log.info("File migration completed successfully for order %s", order.id)
        detail = f"copied {', '.join(copied) or 'nothing'}"
        if skipped:
            detail += f"; already there or skipped: {', '.join(skipped)}"
        return Done(OrderStatus.FILES_MIGRATED, {}, detail)

    def render(self, order: Order) -> Done:
        """Render the final PDF from the permanent files and store it; also what a completed
        order's lost PDF is rendered again with (the same bytes as the first time).

        The customer's audio (megabytes) is read only if the shop's waveform image is gone or
        turns out unusable: the poster is drawn from the image."""
        inputs = self._poster_inputs(order, with_audio=False)
        try:
            pdf = self.renderer(inputs)
        except WaveformUnusable as unusable:
            if inputs.waveform_image is None:
                raise
            log.warning("Order %s: %s; drawing the waveform from the audio", order.id, unusable.message)
            inputs = self._poster_inputs(order, with_audio=True)
            pdf = self.renderer(inputs)
        key = final_pdf_key(order.id)
        self.store.put(key, pdf, "application/pdf")
        log.info("PDF generated: %s for order %s", key, order.id)
        note = "" if inputs.audio is None else " (waveform drawn from the audio)"
        return Done(OrderStatus.PDF_RENDERED, {"final_pdf_key": key}, f"PDF generated: {key}{note}")

    def _poster_inputs(self, order: Order, *, with_audio: bool) -> PosterInputs:
        """The render's inputs; the audio only if asked for, or if there is no waveform image."""
        assert order.photo_key and order.audio_key  # migrate_files guarantees both
        photo = self.store.get(permanent_key(order.id, "photo", order.photo_key), MAX_PHOTO_BYTES)
        audio_key = permanent_key(order.id, "audio", order.audio_key)
        waveform = None
        if order.waveform_key:
            waveform_key = permanent_key(order.id, "waveform", order.waveform_key)
            try:
                waveform = self.store.get(waveform_key, MAX_WAVEFORM_BYTES)
            except StepError as error:  # gone since the copy (or never copied): drawn from the audio
                if error.error_class is not ErrorClass.S3_MISSING_FILE:
                    raise
        audio = self.store.get(audio_key, MAX_AUDIO_BYTES) if with_audio or waveform is None else None
        return PosterInputs(
            template=order.template,
            title=order.title,
            subtitle=order.subtitle,
            photo=photo,
            waveform_image=waveform,
            audio=audio,
            audio_name=audio_key,
        )

    def email(self, order: Order, *, sandbox: bool = False) -> Done:
        """`sandbox`: the provider validates the email and delivers nothing (the canary's order)."""
        token = order.download_token or self._issue_download_token(order)
        link = f"{self.public_base_url}/download/{token}"
        email = download_email(to=order.email, title=order.title, link=link, order_id=str(order.id))
        message_id = self.mailer.send(email, sandbox=sandbox)
        # At-least-once: a crash between the provider's 202 and this commit resends the email.
        now = self.clock()
        sent = "validated in sandbox mode, not delivered," if sandbox else "sent"
        log.info("Download email %s to %s for order %s", sent, mask_email(order.email), order.id)
        return Done(
            OrderStatus.COMPLETED,
            {"email_message_id": message_id, "completed_at": now},
            f"Download email {sent} to {mask_email(order.email)} (message {message_id or 'without id'})",
        )

    def _issue_download_token(self, order: Order) -> str:
        # Committed before sending, so a resent email carries the same link as the first.
        token = secrets.token_urlsafe(32)
        with transaction(self.sessions) as session:
            stored = session.scalar(
                update(Order)
                .where(Order.id == order.id, Order.download_token.is_(None))
                .values(download_token=token)
                .returning(Order.download_token)
            )
            if stored is None:  # issued since this order was read: the link already sent, if any
                stored = session.scalar(select(Order.download_token).where(Order.id == order.id))
        return stored or token


def _uploads(order: Order) -> Iterator[tuple[str, str]]:
    for kind in ("photo", "audio"):
        key = getattr(order, f"{kind}_key")
        if not key:
            raise StepError(ErrorClass.BAD_INPUT, f"order has no {kind}_key")
        yield kind, key
    if order.waveform_key:
        yield "waveform", order.waveform_key
