"""Completes N orders end to end and prints throughput, per-step latency, and the ratio of the
end-to-end time to the render step alone (the floor: rendering is the only CPU-bound step).

Peers are real: PostgreSQL on 127.0.0.1:5432 (a scratch database, dropped afterwards), moto's S3
server over HTTP, and the SendGrid and Stripe wire-format servers from tests/fakes.

    .venv/bin/python bench/completion_bench.py --orders 40 --workers 2
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moto.server import ThreadedMotoServer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from fulfilment.mailer import SendGridMailer  # noqa: E402
from fulfilment.models import Order, OrderStatus, transaction, utcnow  # noqa: E402
from fulfilment.payments import StripePayments  # noqa: E402
from fulfilment.pipeline import Pipeline  # noqa: E402
from fulfilment.recording import RetryPolicy, StepResult  # noqa: E402
from fulfilment.render import PosterInputs, render_poster  # noqa: E402
from fulfilment.storage import S3Store, make_s3_client  # noqa: E402
from healer import db  # noqa: E402
from healer.demo.samples import sample_audio, sample_photo, sample_waveform_png  # noqa: E402
from healer.worker import RenderPool, Worker  # noqa: E402
from tests.fakes.sendgrid_server import SendGridServer  # noqa: E402
from tests.fakes.stripe_server import FakeStripeServer  # noqa: E402

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/"
console = Console()


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--photo", default="1200x1600", help="sample photo size, WxH")
    args = parser.parse_args()
    width, height = (int(v) for v in args.photo.split("x"))
    photo = sample_photo(seed=3, size=(width, height))
    audio = sample_audio(seed=3, seconds=30.0)
    waveform = sample_waveform_png(audio)

    render_wall = render_only(args.orders, args.workers, photo, audio, waveform)
    results, e2e_wall = end_to_end(args.orders, args.workers, photo, audio, waveform)
    report(args, results, e2e_wall, render_wall)


def render_only(n: int, workers: int, photo: bytes, audio: bytes, waveform: bytes) -> float:
    inputs = PosterInputs("a4-portrait", "Zoë & Ömer", "Our first dance", photo, waveform, audio, "a.wav")
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_render, [inputs] * workers))  # warm the processes (imports, fonts)
        started = time.perf_counter()
        list(pool.map(_render, [inputs] * n))
        return time.perf_counter() - started


def _render(inputs: PosterInputs) -> int:
    return len(render_poster(ROOT, inputs, preview=False))


def end_to_end(n: int, workers: int, photo: bytes, audio: bytes, waveform: bytes) -> tuple[list[StepResult], float]:
    name = f"healer_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG + "postgres", isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        with SendGridServer() as sendgrid, FakeStripeServer() as stripe:
            return _run(name, moto, sendgrid, stripe, n, workers, photo, audio, waveform)
    finally:
        moto.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _run(name, moto, sendgrid, stripe, n, workers, photo, audio, waveform):  # type: ignore[no-untyped-def]
    engine = db.make_engine(PG + name, pool_size=workers + 4)
    db.upgrade(engine)
    sessions = db.make_session_factory(engine)
    host, port = moto.get_host_and_port()
    client = make_s3_client(access_key_id="bench", secret_access_key="bench-secret", region="us-east-1",
                            endpoint_url=f"http://{host}:{port}")
    client.create_bucket(Bucket="healer-bench")
    store = S3Store(client, "healer-bench")
    order_ids = [_paid_order(sessions, store, stripe, photo, audio, waveform) for _ in range(n)]
    results: list[StepResult] = []
    render = RenderPool(ROOT, workers, Path(tempfile.mkdtemp(prefix="bench-scratch-")))
    render(PosterInputs("a4-portrait", "warm", "", photo, waveform, audio, "a.wav"))  # warm, as above
    pipeline = Pipeline(
        sessions=sessions, store=store,
        payments=StripePayments(stripe.api_key, api_base=stripe.url),
        mailer=SendGridMailer(sendgrid.api_key, "bench@shop.example", api_base=sendgrid.url),
        render=render, public_base_url="https://shop.example",
        retry=RetryPolicy(3, 0.1, 1.0), lease_seconds=120, observe=results.append,
    )
    worker = Worker(pipeline, concurrency=workers, owner="bench")
    started = time.perf_counter()
    with console.status(f"completing {n} orders with {workers} worker(s)"):
        while not _all_completed(sessions, order_ids):
            worker.tick()
            time.sleep(0.02)
    wall = time.perf_counter() - started
    worker.shutdown()
    render.shutdown()
    engine.dispose()
    assert len(sendgrid.messages) == n, "every order gets exactly one email"
    return results, wall


def _paid_order(sessions, store, stripe, photo, audio, waveform) -> uuid.UUID:  # type: ignore[no-untyped-def]
    order_id = uuid.uuid4()
    keys = {"photo_key": f"tmp/{order_id}/p.jpg", "audio_key": f"tmp/{order_id}/a.wav",
            "waveform_key": f"tmp/{order_id}/w.png"}
    for key, data in zip(keys.values(), (photo, audio, waveform), strict=True):
        store.put(key, data, "application/octet-stream")
    pi = stripe.create_payment_intent(4900, "eur", {"order_id": str(order_id)})
    with transaction(sessions) as session:
        session.add(Order(id=order_id, email="bench@example.com", stripe_payment_intent_id=pi["id"],
                          amount_cents=4900, currency="eur", template="a4-portrait", title="Zoë & Ömer",
                          subtitle="Our first dance", next_attempt_at=utcnow(), **keys))
    return order_id


def _all_completed(sessions, order_ids) -> bool:  # type: ignore[no-untyped-def]
    with sessions() as session:
        done = session.query(Order).filter(Order.id.in_(order_ids),
                                           Order.status == OrderStatus.COMPLETED.value).count()
    return bool(done == len(order_ids))


def report(args, results: list[StepResult], e2e_wall: float, render_wall: float) -> None:  # type: ignore[no-untyped-def]
    by_step: dict[str, list[float]] = defaultdict(list)
    for r in results:
        by_step[r.step.value].append(r.duration_seconds)
    table = Table("step", "n", "p50 ms", "p95 ms", "max ms", title="Per-step latency")
    for step, values in by_step.items():
        values.sort()
        table.add_row(step, str(len(values)), f"{statistics.median(values) * 1000:.1f}",
                      f"{values[int(0.95 * (len(values) - 1))] * 1000:.1f}", f"{values[-1] * 1000:.1f}")
    console.print(table)
    latencies = sorted(r.completion_latency_seconds or 0 for r in results if r.completion_latency_seconds)
    console.print(f"orders: {args.orders}  workers: {args.workers}  photo: {args.photo}")
    console.print(f"end to end: {e2e_wall:.2f}s  = {args.orders / e2e_wall:.2f} orders/s")
    console.print(f"render alone (same pool size): {render_wall:.2f}s = {args.orders / render_wall:.2f} renders/s")
    console.print(f"ratio end-to-end / render alone: {e2e_wall / render_wall:.2f}")
    if latencies:
        console.print(f"paid-to-emailed p50 {statistics.median(latencies):.2f}s (all queued at once)")


if __name__ == "__main__":
    main()
