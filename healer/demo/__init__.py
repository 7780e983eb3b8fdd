"""`healer demo`: the daemon on its embedded defaults, with sample orders a newcomer can watch.

Everything stays under the data dir: SQLite, a local object store, an outbox of `.eml` files.
Payment verification is off (there is no Stripe here), and says so.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.table import Column, Table
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.models import Order, OrderStatus, transaction
from fulfilment.storage import ObjectStore
from fulfilment.templates import list_templates
from healer import orders
from healer.cli.consoles import id_column
from healer.cli.consoles import out as console
from healer.config import Settings
from healer.daemon import Daemon
from healer.demo.commands import CommandHint, healer_command
from healer.demo.samples import sample_audio, sample_photo, sample_waveform_png
from healer.errors import UsageError

log = logging.getLogger(__name__)

TITLES = [
    ("Zoë & Ömer", "Our first dance · 14.06.2025"),
    ("Grandpa's laugh", "Recorded at the lake, summer 1998"),
    ("Hello, little one", "Your first heartbeat"),
    ("Bohemian Rhapsody", "Live at Wembley"),
    ("Café de l'Été", "Où tout a commencé"),
]


@dataclass(frozen=True)
class SampleOrder:
    id: uuid.UUID
    session_token: str
    note: str


def demo_settings(settings: Settings) -> Settings:
    """Embedded defaults whatever the environment says, and quick retries so faults show fast."""
    return dataclasses.replace(
        settings,
        database_url=None,
        s3_bucket=None,
        sendgrid_api_key=None,
        stripe_secret_key=None,
        stripe_webhook_secret=None,
        worker_interval_seconds=min(settings.worker_interval_seconds, 1.0),
        retry_base_seconds=min(settings.retry_base_seconds, 2.0),
        retry_max_seconds=min(settings.retry_max_seconds, 10.0),
    )


def create_sample_orders(
    sessions: sessionmaker[Session], store: ObjectStore, templates: list[str], count: int
) -> list[SampleOrder]:
    """Upload generated photos and sounds the way the shop's checkout does, and insert orders.

    The second order has lost its waveform image (it is redrawn from the audio); with five or more
    orders, the fifth has a corrupt photo, to show an order that needs attention and its story.
    """
    created = []
    for n in range(count):
        order_id = uuid.uuid4()
        audio = sample_audio(seed=n, seconds=6.0)
        uploads = {
            "photo": (f"tmp/{order_id}/photo.jpg", sample_photo(seed=n)),
            "audio": (f"tmp/{order_id}/voice.wav", audio),
            "waveform": (f"tmp/{order_id}/waveform.png", sample_waveform_png(audio)),
        }
        note = "normal"
        if n == 1:
            del uploads["waveform"]
            note = "waveform image lost: redrawn from the audio"
        if n == 4:
            uploads["photo"] = (uploads["photo"][0], b"\xff\xd8\xff this is not really a JPEG")
            note = "corrupt photo: needs attention"
        for key, data in uploads.values():
            store.put(key, data, "application/octet-stream")
        title, subtitle = TITLES[n % len(TITLES)]
        token = secrets.token_urlsafe(24)
        with transaction(sessions) as session:
            session.add(
                Order(
                    id=order_id,
                    email=f"customer{n + 1}@example.com",
                    session_token=token,
                    stripe_payment_intent_id=f"pi_demo_{order_id.hex[:16]}",
                    amount_cents=4900,
                    currency="eur",
                    template=templates[n % len(templates)],
                    title=title,
                    subtitle=subtitle,
                    photo_key=uploads["photo"][0],
                    audio_key=uploads["audio"][0],
                    waveform_key=f"tmp/{order_id}/waveform.png",
                )
            )
        created.append(SampleOrder(order_id, token, note))
    return created


def run_demo(settings: Settings, *, orders: int, exit_when_done: bool) -> int:
    if orders < 1:  # with none, there is nothing to show, and nothing would end --exit-when-done
        raise UsageError(f"--orders {orders}: the demo needs at least one sample order")
    # The operator's own shell may name a database the demo does not use: the commands it
    # suggests must read the demo's SQLite file all the same.
    hint = CommandHint(healer_command(), settings.data_dir, clear_database_url=settings.database_url is not None)
    settings = demo_settings(settings)
    daemon = Daemon(settings, demo=True)
    daemon.prepare()  # a port in use stops the demo before it creates anything
    templates = list_templates(settings.assets_dir)
    samples = create_sample_orders(daemon.services.sessions, daemon.services.store, templates, orders)
    for sample in samples:
        # What the shop's web API does when the customer returns from checkout.
        daemon.pipeline.request_completion(sample.id)
    watcher = threading.Thread(
        target=_watch, args=(daemon, settings, samples, exit_when_done, hint), name="demo-watch", daemon=True
    )
    daemon.serve(on_started=watcher.start)
    return 0 if _all_final(daemon, samples) else 1


def _all_final(daemon: Daemon, samples: list[SampleOrder]) -> bool:
    views = [orders.story(daemon.services.sessions, s.id) for s in samples]
    return all(v is not None and v.status in ("completed", "needs_attention") for v in views)


def _watch(daemon: Daemon, settings: Settings, samples: list[SampleOrder], exit_when_done: bool,
           hint: CommandHint) -> None:
    deadline = time.monotonic() + 300
    while not _all_final(daemon, samples) and time.monotonic() < deadline:
        time.sleep(0.5)
    _report(daemon, settings, samples, hint, still_running=not exit_when_done)
    if exit_when_done:
        daemon.stop()


def _report(daemon: Daemon, settings: Settings, samples: list[SampleOrder], hint: CommandHint, *,
            still_running: bool) -> None:
    """Where the results are, and what to run next: each command as it works when pasted (the
    URLs only while the daemon still answers them)."""
    # Ids and paths folded, never cut short with an ellipsis: a shortened id or path finds nothing.
    table = Table(id_column("order"), "status", "template", "what it shows",
                  Column("PDF / last error", overflow="fold"), title="Sample orders")
    for sample in samples:
        view = orders.story(daemon.services.sessions, sample.id)
        assert view is not None
        where = (
            Path(view.final_pdf_key).name  # in the PDFs directory printed below the table
            if view.status == OrderStatus.COMPLETED and view.final_pdf_key
            else f"{view.last_error_class}: {view.last_error}"
        )
        table.add_row(str(sample.id), view.status, view.template, sample.note, where)
    console.print(table)
    first = samples[0]
    lines = [f"PDFs:            {settings.local_store_dir / 'pdfs'}",
             f"Emails (.eml):   {settings.outbox_dir}",
             f"Its story:       {hint.command(f'orders show {first.id}')}",
             f"Every order:     {hint.command('orders list')}"]
    if still_running:
        public, ops = (f"http://{daemon.listening_on(i)}" for i in range(2))
        lines += [f"Health:          {ops}/health   (operator listener; liveness: {ops}/livez?verbose)",
                  f"As the customer: curl -H 'X-Session-Token: {first.session_token}' {public}/api/orders/{first.id}",
                  f"Its story, HTTP: {ops}/api/orders/{first.id}",
                  "Download links are in the emails. Press Ctrl-C to stop the daemon."]
    for line in lines:
        # Never wrapped (a command split over two lines does not paste) nor read as markup.
        console.print(line, soft_wrap=True, markup=False, highlight=False)
