"""Completes orders of customer-sized uploads end to end, and shows where each order's time goes,
beside the two floors measured on the same peers, at the same concurrency, in the same run.

The uploads (healer.demo.samples): a 12 MP phone photo (4032x3024, about 4 MB as a quality-90
JPEG; a PNG variant of the same photo, much slower to render, so it gets fewer orders), a
3-minute song (stereo MP3, 160 kbit/s) and the song's waveform image, as the shop's upload page
stores them.

For each upload and worker count (1, 2):
- rendering alone: the same posters rendered in a process pool of that size, nothing else;
- I/O alone: the same S3 copies of the three uploads, reads of the render's inputs (photo and
  waveform: the audio is not needed when the waveform is there), PDF upload and email, from that
  many threads, with no render, no Stripe and no database. The reads are on this side because
  rendering alone is handed its inputs in memory: without them neither side would pay for them;
- end to end: healer's Pipeline and Worker (with its RenderPool) on the same peers, the orders
  queued at once. The worker is asked for work every 20 ms (the daemon asks every
  HEALER_WORKER_INTERVAL_SECONDS, 2 s by default), so this measures the pipeline, not the poll.

The floor is the slower of rendering alone and I/O alone: what a pipeline that overlapped all its
I/O with rendering would take. Each end-to-end order's time is split into its parts (queue wait,
verify, S3 copies, S3 reads, render waiting for a slot and in the pool, PDF upload, email,
database statements, commits and the rest of its transactions, other) by bench/timing.py, from
outside: wrappers around the store, payments, mailer and render function handed to Pipeline, and
SQLAlchemy events on its engine. What they add is a few microseconds per call (two clock reads, a
search of the key or parameters for the order's id, a list append), against milliseconds per call.

Each end-to-end run also reads every process's CPU time (bench/cpu.py): healer's (this process),
the render processes', moto's and PostgreSQL's, per order. Their sum over the machine's cores is
the ceiling a run bound by CPU cannot pass, whatever overlaps: on a machine whose S3 and database
share the cores with healer, that, not the floor, is what end to end meets first.

Then a paced run, as a healthy shop sees it: the JPEG orders arrive paid one at a time (Poisson, a
mean gap of 3 s), as Stripe's webhook leaves them (paid, verified, due now), and the worker is
asked for work every 2 s as the daemon does; paid-to-emailed is the daemon's own figure (the
StepResult's completion latency, healer_order_completion_latency_seconds).

Peers are real and local: PostgreSQL on 127.0.0.1:5432 (a scratch database, dropped afterwards),
moto's S3 server over HTTP, the SendGrid and Stripe wire-format servers of tests/fakes.

    .venv/bin/python bench/completion_bench.py --orders 20 --png-orders 4 --workers 1 2
"""

from __future__ import annotations

import argparse
import functools
import io
import logging
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import soundfile  # noqa: E402
from cpu import GROUPS, CpuMeter, CpuUse  # noqa: E402
from PIL import Image  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from scratch_db import scratch_database  # noqa: E402
from sqlalchemy import Engine, insert, text, update  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402
from timing import (  # noqa: E402
    PARTS,
    OrderTime,
    TimedMailer,
    TimedPayments,
    TimedRender,
    TimedStore,
    Timeline,
    breakdown,
    percentile,
    summarise,
)

from fulfilment.leases import db_now  # noqa: E402
from fulfilment.mailer import SendGridMailer, download_email  # noqa: E402
from fulfilment.models import Order, OrderStatus, Outcome, transaction, utcnow  # noqa: E402
from fulfilment.payments import StripePayments  # noqa: E402
from fulfilment.pipeline import Pipeline  # noqa: E402
from fulfilment.recording import RetryPolicy, StepResult  # noqa: E402
from fulfilment.render import PosterInputs, render_poster  # noqa: E402
from fulfilment.steps import final_pdf_key, permanent_key  # noqa: E402
from fulfilment.storage import S3Store, make_s3_client  # noqa: E402
from healer import db  # noqa: E402
from healer.config import ORDERS_PER_RENDER_PROCESS  # noqa: E402
from healer.demo.samples import sample_phone_photo, sample_song, sample_waveform_png  # noqa: E402
from healer.render.pool import RenderPool  # noqa: E402
from healer.worker import Worker  # noqa: E402
from poster_assets import bundled_assets_dir  # noqa: E402
from tests.fakes.ports import free_port  # noqa: E402
from tests.fakes.sendgrid_server import SendGridServer  # noqa: E402
from tests.fakes.stripe_server import FakeStripeServer  # noqa: E402
from tests.fakes.subprocesses import terminate  # noqa: E402

ASSETS = bundled_assets_dir()  # the daemon's default HEALER_ASSETS_DIR
FROM_EMAIL = "bench@shop.example"
PUBLIC_BASE_URL = "https://shop.example"
TITLE, SUBTITLE = "Zoë & Ömer", "Our first dance"
FAST_TICK_SECONDS = 0.02  # see the module docstring: the pipeline's speed, not the poll's
DAEMON_TICK_SECONDS = 2.0  # HEALER_WORKER_INTERVAL_SECONDS' default, for the paced run
PACED_GAP_SECONDS = 3.0
JPEG, PNG = "12 MP JPEG", "12 MP PNG"
CORES = len(os.sched_getaffinity(0))
console = Console(width=int(os.environ.get("COLUMNS", "160")))  # tables fit, terminal or not


# -- uploads ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One customer's uploads, as the shop stores them before checkout."""

    label: str
    photo: bytes
    photo_name: str
    audio: bytes
    audio_name: str
    waveform: bytes

    def inputs(self, audio_key: str | None = None) -> PosterInputs:
        return PosterInputs("a4-portrait", TITLE, SUBTITLE, self.photo, self.waveform, self.audio,
                            audio_key or self.audio_name)

    def describe(self) -> dict[str, Any]:
        width, height = Image.open(io.BytesIO(self.photo)).size
        song = soundfile.info(io.BytesIO(self.audio))
        return {"label": self.label, "photo": f"{width}x{height} {self.photo_name}", "photo_bytes": len(self.photo),
                "audio": f"{song.duration:.0f} s, {song.channels} ch, {song.samplerate} Hz {self.audio_name}",
                "audio_bytes": len(self.audio), "waveform_bytes": len(self.waveform)}


def customer_uploads(labels: tuple[str, ...] = (JPEG, PNG)) -> list[Upload]:
    song = sample_song(seed=3)
    waveform = sample_waveform_png(song)
    make = {JPEG: ("JPEG", "photo.jpg"), PNG: ("PNG", "photo.png")}
    return [Upload(label, sample_phone_photo(seed=3, fmt=make[label][0]), make[label][1], song, "song.mp3", waveform)
            for label in labels]


def describe_line(upload: dict[str, Any]) -> str:
    return (f"{upload['label']}: photo {upload['photo']}, {upload['photo_bytes'] / 1e6:.2f} MB; song "
            f"{upload['audio']}, {upload['audio_bytes'] / 1e6:.2f} MB; waveform PNG {upload['waveform_bytes'] / 1e3:.1f} kB")


# -- peers --------------------------------------------------------------------------------------


@dataclass
class Peers:
    engine: Engine
    sessions: sessionmaker[Session]
    s3: Any  # the boto3 client: for emptying the bucket between runs
    store: S3Store
    sendgrid: SendGridServer
    stripe: FakeStripeServer
    scratch: Path


@contextmanager
def local_peers(pool_size: int) -> Iterator[Peers]:
    scratch = Path(tempfile.mkdtemp(prefix="bench-completion-"))
    try:
        with (scratch_database("completion", pool_size) as (_, engine), s3_server() as s3_url,
              SendGridServer() as sendgrid, FakeStripeServer() as stripe):
            client = make_s3_client(access_key_id="bench", secret_access_key="bench-secret", region="us-east-1",
                                    endpoint_url=s3_url)
            client.create_bucket(Bucket="healer-bench")
            yield Peers(engine, db.make_session_factory(engine), client, S3Store(client, "healer-bench"),
                        sendgrid, stripe, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def s3_server(timeout: float = 30.0) -> Iterator[str]:
    """moto's S3 server in a process of its own, as S3 is: in this one it would share the
    interpreter lock with the pipeline under test, every multi-megabyte copy slowing its threads.
    (SendGrid's and Stripe's servers stay in this process: a few kilobytes per order.)"""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"moto's server did not start on port {port}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        terminate(process)


def empty_bucket(peers: Peers) -> None:
    """Between runs: moto holds every object in this process, and a full run would hold gigabytes."""
    for page in peers.s3.get_paginator("list_objects_v2").paginate(Bucket=peers.store.bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            peers.s3.delete_objects(Bucket=peers.store.bucket, Delete={"Objects": keys})


def stage(peers: Peers, upload: Upload, order_id: uuid.UUID) -> dict[str, str]:
    """The shop's upload page: the three files under temporary keys."""
    keys = {"photo": f"tmp/{order_id}/{upload.photo_name}", "audio": f"tmp/{order_id}/{upload.audio_name}",
            "waveform": f"tmp/{order_id}/waveform.png"}
    for kind, data in (("photo", upload.photo), ("audio", upload.audio), ("waveform", upload.waveform)):
        peers.store.put(keys[kind], data, "application/octet-stream")
    return keys


def insert_order(peers: Peers, order_id: uuid.UUID, keys: dict[str, str], *, paid: bool) -> None:
    """Checkout. Unpaid: not queued yet (`queue_all` queues them together). Paid: as Stripe's
    webhook leaves an order (Pipeline.mark_paid): verified and due now."""
    intent = peers.stripe.create_payment_intent(4900, "eur", {"order_id": str(order_id)})
    values: dict[str, Any] = {"id": order_id, "email": "customer@example.com", "stripe_payment_intent_id": intent["id"],
                              "amount_cents": 4900, "currency": "eur", "template": "a4-portrait", "title": TITLE,
                              "subtitle": SUBTITLE, "photo_key": keys["photo"], "audio_key": keys["audio"],
                              "waveform_key": keys["waveform"], "next_attempt_at": None}
    if paid:
        now = utcnow()
        values.update(status=OrderStatus.PAID, paid_at=now, payment_verified_at=now, next_attempt_at=db_now())
    with transaction(peers.sessions) as session:
        session.execute(insert(Order).values(**values))


def queue_all(peers: Peers, order_ids: list[uuid.UUID]) -> float:
    """All at once, on the database's clock as the daemon does; returns when (perf_counter)."""
    with transaction(peers.sessions) as session:
        session.execute(update(Order).where(Order.id.in_(order_ids)).values(next_attempt_at=db_now()))
    return time.perf_counter()


# -- the floors ---------------------------------------------------------------------------------


@dataclass
class RenderAlone:
    wall: float
    renders: list[float]  # seconds, each render as timed in its process


def render_only(upload: Upload, n: int, workers: int) -> RenderAlone:
    """`n` renders in a pool of `workers` processes (spawned, as the RenderPool's)."""
    render = functools.partial(_timed_render, ASSETS)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(render, [upload.inputs()] * (2 * workers)))  # started and warm (imports, fonts)
        started = time.perf_counter()
        renders = list(pool.map(render, [upload.inputs()] * n))
        return RenderAlone(time.perf_counter() - started, renders)


def _timed_render(assets: Path, inputs: PosterInputs) -> float:
    started = time.perf_counter()
    render_poster(assets, inputs, preview=False)  # the time only: no PDF back through the pipe
    return time.perf_counter() - started


@dataclass
class IoAlone:
    wall: float
    parts: dict[str, list[float]]  # seconds per order


def io_only(peers: Peers, upload: Upload, n: int, workers: int, pdf: bytes) -> IoAlone:
    staged = {order_id: stage(peers, upload, order_id) for order_id in (uuid.uuid4() for _ in range(n))}
    mailer = SendGridMailer(peers.sendgrid.api_key, FROM_EMAIL, api_base=peers.sendgrid.url)
    parts: dict[str, list[float]] = defaultdict(list)
    lock = threading.Lock()

    def one(order_id: uuid.UUID) -> None:
        keys = staged[order_id]
        marks = [time.perf_counter()]
        for kind, key in keys.items():
            peers.store.copy(key, permanent_key(order_id, kind, key))
        marks.append(time.perf_counter())
        for kind in ("photo", "waveform"):
            peers.store.get(permanent_key(order_id, kind, keys[kind]))
        marks.append(time.perf_counter())
        peers.store.put(final_pdf_key(order_id), pdf, "application/pdf")
        marks.append(time.perf_counter())
        mailer.send(download_email(to="customer@example.com", title=TITLE, order_id=str(order_id),
                                   link=f"{PUBLIC_BASE_URL}/download/{uuid.uuid4().hex}"))
        marks.append(time.perf_counter())
        with lock:
            for part, start, end in zip(("s3_copy", "s3_read", "pdf_upload", "email"), marks, marks[1:], strict=False):
                parts[part].append(end - start)

    with ThreadPoolExecutor(workers) as pool:
        started = time.perf_counter()
        list(pool.map(one, staged))
        return IoAlone(time.perf_counter() - started, dict(parts))


# -- healer -------------------------------------------------------------------------------------


class Progress:
    """The pipeline's `observe`: every StepResult, and when each order was emailed."""

    def __init__(self) -> None:
        self.results: list[StepResult] = []
        self.emailed: dict[uuid.UUID, float] = {}
        self._lock = threading.Lock()

    def observe(self, result: StepResult) -> None:
        with self._lock:
            self.results.append(result)
            if result.outcome is Outcome.OK and result.status is OrderStatus.COMPLETED:
                self.emailed[result.order_id] = time.perf_counter()

    def check(self, deadline: float) -> None:
        for result in list(self.results):
            if result.outcome is Outcome.GAVE_UP:  # it will never be emailed: nothing left to wait for
                raise SystemExit(f"order {result.order_id} gave up at {result.step}: {result.error_class}: "
                                 f"{result.message}")
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(self.emailed)} orders emailed before the deadline")

    def failures(self) -> list[StepResult]:
        """Failed attempts (retried): none in a healthy run, so any is a disturbance to report."""
        return [r for r in list(self.results) if r.outcome is not Outcome.OK]


@dataclass
class Run:
    upload: str
    workers: int
    wall: float
    results: list[StepResult]
    orders: list[OrderTime] = field(default_factory=list)
    disturbed: str = ""  # what disturbed the run from outside, if anything
    cpu: CpuUse | None = None  # by process, from the orders' queueing to the last email


def postgres_started_at(engine: Engine) -> datetime | None:
    """When the PostgreSQL server last started; None while it is down. The server is shared, and
    others' tests restart it: a run it restarted under has retries and waits in its figures."""
    try:
        with engine.connect() as conn:
            started: datetime | None = conn.scalar(text("SELECT pg_postmaster_start_time()"))
            return started
    except SQLAlchemyError:
        return None


def disturbance(before: datetime | None, after: datetime | None, timeline: Timeline, progress: Progress) -> str:
    said = ["PostgreSQL restarted"] if before is None or after is None or before != after else []
    if timeline.database_errors:
        said.append(f"{timeline.database_errors} database errors")
    if failures := progress.failures():
        classes = sorted({str(f.error_class) for f in failures})
        said.append(f"{len(failures)} failed steps ({', '.join(classes)})")
    return "; ".join(said)


@contextmanager
def daemon_parts(peers: Peers, upload: Upload, workers: int, timeline: Timeline) -> Iterator[tuple[Worker, Progress]]:
    """healer's Worker and Pipeline as `healer run` builds them, with the timing wrappers around
    what it hands them; the render pool's processes started first, as after a daemon's first order."""
    render = RenderPool(ASSETS, workers, peers.scratch)
    # One render per slot, all at once: renders one after another would all go to the warm slot.
    with ThreadPoolExecutor(workers) as warming:
        list(warming.map(lambda _: render(upload.inputs()), range(workers)))
    progress = Progress()
    pipeline = Pipeline(
        sessions=peers.sessions, store=TimedStore(peers.store, timeline),
        payments=TimedPayments(StripePayments(peers.stripe.api_key, api_base=peers.stripe.url), timeline),
        mailer=TimedMailer(SendGridMailer(peers.sendgrid.api_key, FROM_EMAIL, api_base=peers.sendgrid.url), timeline),
        render=TimedRender(render, timeline), public_base_url=PUBLIC_BASE_URL,
        retry=RetryPolicy(3, 0.1, 1.0), lease_seconds=120, observe=progress.observe,
    )
    worker = Worker(pipeline, concurrency=workers * ORDERS_PER_RENDER_PROCESS, owner=f"bench-{uuid.uuid4().hex[:6]}")
    stop_watching = timeline.watch_database(peers.engine, peers.sessions)
    try:
        yield worker, progress
    finally:
        stop_watching()
        worker.shutdown()
        render.shutdown()


def end_to_end(peers: Peers, upload: Upload, n: int, workers: int, tick_seconds: float = FAST_TICK_SECONDS) -> Run:
    order_ids = [uuid.uuid4() for _ in range(n)]
    for order_id in order_ids:
        insert_order(peers, order_id, stage(peers, upload, order_id), paid=False)
    emails_before = len(peers.sendgrid.messages)
    timeline = Timeline()
    timeline.expect(order_ids)
    postgres_before = postgres_started_at(peers.engine)
    meter = CpuMeter()
    with daemon_parts(peers, upload, workers, timeline) as (worker, progress):
        meter.start()
        queued = queue_all(peers, order_ids)
        deadline = time.monotonic() + 120 + 10 * n
        while len(progress.emailed) < n:
            progress.check(deadline)
            worker.tick()
            time.sleep(tick_seconds)
        cpu = meter.stop()
        wall = max(progress.emailed.values()) - queued
    if len(peers.sendgrid.messages) - emails_before != n:
        raise SystemExit("every order gets exactly one email, and did not")
    return Run(upload.label, workers, wall, progress.results,
               breakdown(timeline, dict.fromkeys(order_ids, queued), render_slots=workers),
               disturbance(postgres_before, postgres_started_at(peers.engine), timeline, progress), cpu)


def paced(peers: Peers, upload: Upload, n: int, workers: int, *, mean_gap: float = PACED_GAP_SECONDS,
          tick_seconds: float = DAEMON_TICK_SECONDS, seed: int = 7) -> Run:
    """Paid orders arriving one at a time (Poisson), the worker asked every `tick_seconds`."""
    rng = random.Random(seed)
    order_ids = [uuid.uuid4() for _ in range(n)]
    staged = {order_id: stage(peers, upload, order_id) for order_id in order_ids}
    offsets = list(_cumulative(rng.expovariate(1 / mean_gap) for _ in range(n)))
    timeline = Timeline()
    timeline.expect(order_ids)
    due: dict[uuid.UUID, float] = {}
    postgres_before = postgres_started_at(peers.engine)
    with daemon_parts(peers, upload, workers, timeline) as (worker, progress):
        started = time.perf_counter()
        next_tick, arrived = started, 0
        deadline = time.monotonic() + offsets[-1] + 120
        while len(progress.emailed) < n:
            progress.check(deadline)
            now = time.perf_counter()
            if arrived < n and now >= started + offsets[arrived]:
                insert_order(peers, order_ids[arrived], staged[order_ids[arrived]], paid=True)
                due[order_ids[arrived]] = time.perf_counter()
                arrived += 1
            elif now >= next_tick:
                worker.tick()
                next_tick += tick_seconds
            else:
                wake = min(next_tick, started + offsets[arrived] if arrived < n else math.inf)
                time.sleep(min(0.05, max(0.0, wake - now)))
        wall = max(progress.emailed.values()) - started
    return Run(upload.label, workers, wall, progress.results, breakdown(timeline, due, render_slots=workers),
               disturbance(postgres_before, postgres_started_at(peers.engine), timeline, progress))


def _cumulative(gaps: Iterator[float]) -> Iterator[float]:
    total = 0.0
    for gap in gaps:
        total += gap
        yield total


# -- the whole measurement ----------------------------------------------------------------------


def measure(orders: dict[str, int], workers: tuple[int, ...] = (1, 2), paced_orders: int = 10,
            log: Callable[[str], None] = console.log) -> dict[str, Any]:
    """Every run on one set of peers; returns the figures (JSON-ready)."""
    uploads = customer_uploads(tuple(label for label, n in orders.items() if n))
    described = [u.describe() for u in uploads]
    for line in described:
        log(describe_line(line))
    rows: list[dict[str, Any]] = []
    paced_row: dict[str, Any] | None = None
    with local_peers(pool_size=max(workers) * ORDERS_PER_RENDER_PROCESS + 4) as peers:
        for upload in uploads:
            n = orders[upload.label]
            pdf = render_poster(ASSETS, upload.inputs(), preview=False)  # what the I/O alone uploads
            for count in workers:
                log(f"{upload.label}, {count} worker(s), {n} orders: rendering alone, I/O alone, end to end")
                render_alone = render_only(upload, n, count)
                io_alone = io_only(peers, upload, n, count, pdf)
                empty_bucket(peers)
                run = end_to_end(peers, upload, n, count)
                empty_bucket(peers)
                rows.append(_row(n, render_alone, io_alone, run, len(pdf)))
        if paced_orders and uploads[0].label == JPEG:
            count = max(workers)
            log(f"{JPEG}: {paced_orders} paid orders arriving a mean {PACED_GAP_SECONDS:.0f} s apart, "
                f"{count} worker(s) asked every {DAEMON_TICK_SECONDS:.0f} s")
            paced_row = _paced_row(paced(peers, uploads[0], paced_orders, count), paced_orders)
            empty_bucket(peers)
    for row in rows:
        one = next(r for r in rows if r["upload"] == row["upload"] and r["workers"] == min(workers))
        row["speedup_vs_1_worker"] = row["orders_per_second"] / one["orders_per_second"]
    return {"tick_seconds": FAST_TICK_SECONDS, "uploads": described, "rows": rows, "paced": paced_row}


def _row(n: int, render_alone: RenderAlone, io_alone: IoAlone, run: Run, pdf_bytes: int) -> dict[str, Any]:
    render_wall = render_alone.wall
    floor_wall = max(render_wall, io_alone.wall)
    latencies = sorted(r.completion_latency_seconds for r in run.results if r.completion_latency_seconds is not None)
    disturbed = [run.disturbed] if run.disturbed else []
    if run.wall < floor_wall:  # end to end does every render and every call of the floor, and more
        disturbed.append("the floor ran slower than end to end: outside load")
    return {
        "upload": run.upload, "workers": run.workers, "orders": n, "pdf_bytes": pdf_bytes,
        "wall_s": run.wall, "orders_per_second": n / run.wall,
        "render_alone_wall_s": render_wall, "renders_per_second": n / render_wall,
        "io_alone_wall_s": io_alone.wall, "io_alone_per_second": n / io_alone.wall,
        "floor_wall_s": floor_wall, "floor": "render" if render_wall >= io_alone.wall else "I/O",
        "e2e_over_render": run.wall / render_wall, "e2e_over_io": run.wall / io_alone.wall,
        "e2e_over_floor": run.wall / floor_wall,
        # verified→emailed: the orders were queued together, so their wait shows in orders/s, not here
        "latency_p50_s": statistics.median(latencies), "latency_p99_s": percentile(latencies, 0.99),
        "alone_p50_ms": {"render": statistics.median(render_alone.renders) * 1000,
                         **{part: statistics.median(v) * 1000 for part, v in io_alone.parts.items()}},
        "parts": summarise(run.orders), "disturbed": "; ".join(disturbed),
        **(_cpu_figures(run.cpu, n) if run.cpu else {}),
    }


def _cpu_figures(cpu: CpuUse, n: int) -> dict[str, Any]:
    """CPU per order by process, and the ceiling it sets: the most orders/s these cores could give
    at that CPU per order, every core busy (the floors assume rendering and I/O each have cores of
    their own; on a machine shared with the peers they do not)."""
    per_order = cpu.per_item_ms(n)
    return {"cpu_ms_per_order": per_order, "cores_busy": cpu.cores_busy,
            "cpu_ceiling_per_second": CORES * 1000 / sum(per_order.values())}


def _paced_row(run: Run, n: int) -> dict[str, Any]:
    latencies = sorted(r.completion_latency_seconds for r in run.results if r.completion_latency_seconds is not None)
    return {"upload": run.upload, "workers": run.workers, "orders": n, "mean_gap_s": PACED_GAP_SECONDS,
            "tick_s": DAEMON_TICK_SECONDS, "wall_s": run.wall,
            "paid_to_emailed_p50_s": statistics.median(latencies),
            "paid_to_emailed_p99_s": percentile(latencies, 0.99), "paid_to_emailed_max_s": latencies[-1],
            "parts": summarise(run.orders), "disturbed": run.disturbed}


# -- tables -------------------------------------------------------------------------------------


def tables(measured: dict[str, Any]) -> list[Table]:
    rows = measured["rows"]
    throughput = Table("upload", "workers", "orders", "orders/s", "render alone /s", "I/O alone /s", "floor",
                       "e2e ÷ render", "e2e ÷ I/O", "e2e ÷ floor", "speed-up ÷ 1 worker",
                       "verified→emailed p50 / p99 s", "disturbed by",
                       title="Completion: orders queued at once; the floor is the slower of rendering alone and "
                             "I/O alone, same peers, same concurrency, same run")
    for r in rows:
        throughput.add_row(r["upload"], str(r["workers"]), str(r["orders"]), f"{r['orders_per_second']:.2f}",
                           f"{r['renders_per_second']:.2f}", f"{r['io_alone_per_second']:.2f}", r["floor"],
                           f"{r['e2e_over_render']:.2f}", f"{r['e2e_over_io']:.2f}", f"{r['e2e_over_floor']:.2f}",
                           f"{r['speedup_vs_1_worker']:.2f}", f"{r['latency_p50_s']:.2f} / {r['latency_p99_s']:.2f}",
                           r["disturbed"])
    out = [throughput]
    for upload in dict.fromkeys(r["upload"] for r in rows):
        columns = [(f"{r['workers']} worker(s){_flag(r)}", r["parts"], r["alone_p50_ms"])
                   for r in rows if r["upload"] == upload]
        paced = measured.get("paced")
        if paced and paced["upload"] == upload:
            columns.append((f"paced, {paced['workers']} worker(s){_flag(paced)}", paced["parts"], None))
        out.append(_parts_table(upload, columns))
    out.append(_cpu_table(rows))
    return out


def _cpu_table(rows: list[dict[str, Any]]) -> Table:
    """Whose CPU an order costs end to end: on two cores shared with the peers, the bound."""
    table = Table("process", title="CPU per order end to end, by process (ms of CPU; bench/cpu.py), and the cores "
                  "busy on average over the run")
    measured = [r for r in rows if "cpu_ms_per_order" in r]
    for r in measured:
        table.add_column(f"{r['upload']}\n{r['workers']} worker(s)", justify="right")
    for group in GROUPS:
        table.add_row(group, *(f"{r['cpu_ms_per_order'][group]:.0f}" for r in measured))
    table.add_row("all", *(f"{sum(r['cpu_ms_per_order'].values()):.0f}" for r in measured))
    table.add_row("cores busy", *(f"{r['cores_busy']:.2f}" for r in measured))
    table.add_row(f"ceiling: {CORES} cores ÷ CPU per order, orders/s", *(f"{r['cpu_ceiling_per_second']:.2f}" for r in measured))
    table.add_row("orders/s ÷ ceiling", *(f"{r['orders_per_second'] / r['cpu_ceiling_per_second']:.2f}" for r in measured))
    return table


def _flag(row: dict[str, Any]) -> str:
    return f" ({row['disturbed']})" if row.get("disturbed") else ""


def _parts_table(upload: str, columns: list[tuple[str, dict[str, Any], dict[str, float] | None]]) -> Table:
    table = Table("part of an order's time", "calls", title=f"Where an order's time goes, {upload} (ms per order; "
                  "calls per order, for transactions the transactions; share of the mean work; alone: the same calls, "
                  "p50, in the runs alone)")
    for label, _, alone in columns:
        table.add_column(f"{label}\np50", justify="right")
        table.add_column("p99", justify="right")
        table.add_column("share", justify="right")
        if alone is not None:
            table.add_column("alone", justify="right")
    present = [p for p in PARTS if any(p in parts for _, parts, _ in columns)]
    for part in present:
        calls = next((parts[part]["calls_per_order"] for _, parts, _ in columns if part in parts), 0.0)
        cells = [PARTS[part], f"{calls:.1f}" if calls else ""]
        for _, parts, alone in columns:
            figures = parts.get(part)
            if figures is None:
                cells += ["-", "-", "-"]
            else:
                share = figures["share_pct"]
                cells += [f"{figures['p50_ms']:.0f}", f"{figures['p99_ms']:.0f}",
                          "" if share is None else f"{share:.0f} %"]
            if alone is not None:
                cells.append(f"{alone[part]:.0f}" if part in alone else "")
        table.add_row(*cells)
    return table


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=20, help="orders of the 12 MP JPEG per run")
    parser.add_argument("--png-orders", type=int, default=4, help="orders of the 12 MP PNG per run (0: none)")
    parser.add_argument("--paced-orders", type=int, default=10, help="orders in the paced run (0: none)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    measured = measure({JPEG: args.orders, PNG: args.png_orders}, tuple(args.workers), args.paced_orders)
    for table in tables(measured):
        console.print(table)
    paced = measured["paced"]
    if paced:
        console.print(f"paced: paid→emailed p50 {paced['paid_to_emailed_p50_s']:.2f} s, "
                      f"p99 {paced['paid_to_emailed_p99_s']:.2f} s over {paced['orders']} orders")


if __name__ == "__main__":
    main()
