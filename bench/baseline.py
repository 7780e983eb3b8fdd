"""The shop's way, for comparison: one synchronous request completes the order, or answers 500.

`POST /api/orders/{order_id}/complete` verifies the payment with Stripe, copies the uploads in S3,
renders the PDF, uploads it, emails the link through SendGrid and marks the order completed, all
inside the customer's request, as the shop's web API does today. Any fault on the way is a 500; there
is no retry, no record of how far it got, and an order left half done stays so until an operator
works the runbook. It uses the same step code as healer (fulfilment/), so what differs between the
two in a benchmark is the orchestration alone.

    .venv/bin/python bench/baseline.py   # reads the same environment as `healer run`

`BaselineTarget` runs two of these as the fault scenario's target (tests/faults/scenario.py), with
customers who try once: a connection refused (the server is down) is tried again elsewhere, an
answer (200 or 500) or a connection cut mid-request is final.
"""

from __future__ import annotations

import logging
import random
import secrets
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import uvicorn  # noqa: E402
from fastapi import FastAPI, Header, HTTPException  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from sqlalchemy import Engine, update  # noqa: E402

from fulfilment.mailer import download_email  # noqa: E402
from fulfilment.models import Order, OrderStatus, transaction, utcnow  # noqa: E402
from fulfilment.render import PosterInputs, render_poster  # noqa: E402
from fulfilment.steps import final_pdf_key, permanent_key  # noqa: E402
from healer.config import Settings  # noqa: E402
from healer.wiring import Services  # noqa: E402
from tests.fakes.stripe_server import FakeStripeServer  # noqa: E402
from tests.faults.processes import Incarnation, Slot, http  # noqa: E402
from tests.faults.scenario import Peers, PlacedOrder, peer_env  # noqa: E402

log = logging.getLogger("baseline")
COMMAND = (sys.executable, str(Path(__file__).resolve()))


def create_app(services: Services, assets_dir: Path, public_base_url: str) -> FastAPI:
    app = FastAPI(title="shop completion (synchronous baseline)")

    @app.get("/livez")
    def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/orders/{order_id}/complete")
    def complete(order_id: uuid.UUID, x_session_token: str | None = Header(None)) -> Any:
        with services.sessions() as session:
            order = session.get(Order, order_id)
        if order is None:
            raise HTTPException(404, "unknown order")
        if x_session_token != order.session_token:
            raise HTTPException(403, "wrong session token")
        try:
            complete_synchronously(services, assets_dir, public_base_url, order)
        except Exception as error:
            log.error("Completion of order %s failed: %s: %s", order_id, type(error).__name__, error)
            return JSONResponse({"detail": "Internal Server Error"}, status_code=500)
        return {"order_id": str(order_id), "status": "completed"}

    return app


def complete_synchronously(services: Services, assets_dir: Path, public_base_url: str, order: Order) -> None:
    """Every step, in order, in the caller's thread."""
    services.payments.verify(order_id=str(order.id), payment_intent_id=order.stripe_payment_intent_id or "",
                             amount_cents=order.amount_cents, currency=order.currency)
    uploads = {"photo": order.photo_key, "audio": order.audio_key, "waveform": order.waveform_key}
    for kind, key in uploads.items():
        if key and (kind != "waveform" or services.store.exists(key)):
            services.store.copy(key, permanent_key(order.id, kind, key))
    waveform_key = permanent_key(order.id, "waveform", order.waveform_key or "")
    inputs = PosterInputs(
        template=order.template, title=order.title, subtitle=order.subtitle,
        photo=services.store.get(permanent_key(order.id, "photo", order.photo_key or "")),
        waveform_image=services.store.get(waveform_key) if order.waveform_key and services.store.exists(waveform_key) else None,
        audio=services.store.get(permanent_key(order.id, "audio", order.audio_key or "")),
        audio_name=order.audio_key or "",
    )
    pdf_key = final_pdf_key(order.id)
    services.store.put(pdf_key, render_poster(assets_dir, inputs, preview=False), "application/pdf")
    token = secrets.token_urlsafe(32)
    message_id = services.mailer.send(download_email(
        to=order.email, title=order.title, link=f"{public_base_url}/download/{token}", order_id=str(order.id)))
    with transaction(services.sessions) as session:
        session.execute(update(Order).where(Order.id == order.id).values(
            status=OrderStatus.COMPLETED.value, completed_at=utcnow(), paid_at=utcnow(),
            payment_verified_at=utcnow(), final_pdf_key=pdf_key, download_token=token,
            email_message_id=message_id))


class BaselineTarget:
    """Two baseline servers on one database, as the fault scenario's target."""

    name = "baseline"

    def __init__(self, peers: Peers, s3_endpoint: str, data_dirs: list[Path]) -> None:
        keys = [peers.sendgrid.api_key, peers.sendgrid.add_key()]
        self.slots = [Slot(f"baseline-{name}", COMMAND, peer_env(peers, s3_endpoint, data_dir, key), peers.work_dir)
                      for name, key, data_dir in zip("ab", keys, data_dirs, strict=True)]
        self._rng = random.Random(2)
        self._lock = threading.Lock()

    def path_for(self, rng: random.Random, flaw: str | None) -> str:
        return "customer"

    def arrive(self, order: PlacedOrder, stripe: FakeStripeServer) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            incarnation = self._pick()
            if incarnation is None:
                time.sleep(0.3)
                continue
            try:
                status, _ = http("POST", f"{incarnation.base_url}/api/orders/{order.id}/complete", b"",
                                 {"X-Session-Token": f"sess-{order.id.hex}"}, timeout=120)
            except OSError as error:
                if isinstance(getattr(error, "reason", error), ConnectionRefusedError):
                    order.responses.append("refused")  # down: the customer reloads, reaches a live one
                    time.sleep(0.3)
                    continue
                order.responses.append("reset")  # cut off mid-request: the customer saw an error page
                return
            order.responses.append(status)
            return

    def settled(self, engine: Engine, orders: list[PlacedOrder]) -> bool:
        return True  # nothing finishes an order after its one request: what is done is done

    def _pick(self) -> Incarnation | None:
        running = [i for i in (slot.current for slot in self.slots) if i is not None]
        with self._lock:
            return self._rng.choice(running) if running else None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3", "stripe"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = Settings.from_env()
    services = Services.build(settings)
    app = create_app(services, settings.assets_dir, settings.public_base_url)
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
