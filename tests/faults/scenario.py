"""The fault run: paid orders arrive while S3, SendGrid, Stripe, PostgreSQL, the assets, the disk and
the servers themselves fail on a fixed, seeded timeline.

The peers are real (PostgreSQL, moto's S3 server behind `S3FaultProxy`, the SendGrid and Stripe
servers of tests/fakes); the servers are real processes (`healer run`, or in bench/ the shop's
synchronous server), two of them on one database. What a run did is returned as a `RunRecord`;
`tests.faults.ledger` judges it. The test (tests/faults/test_fault_injection.py) and the benchmark
(bench/run.py) run the same scenario.

One cycle of the timeline (offsets for a 60 s cycle; a longer run repeats cycles):

     2- 8 s  S3 answers 403 AccessDenied to everything (credentials revoked)
    10-17 s  SendGrid keys revoked: 401
    18 s     Stripe: the next 14 requests get 429 (10 of them PaymentIntent retrievals)
    20-27 s  S3 answers 500 InternalError to 30% of requests
    24 s     trap armed: the next accepted email kills its sender before the 202 reaches it
    28 s     SendGrid: the next 6 sends get 429, then 4 get 500, then 4 get 503
    33 s     PostgreSQL restarted (only in the first cycle(s): it is the machine's shared server)
    38-44 s  a font removed from the assets directory, then put back
    46-53 s  the data/scratch file system (a tmpfs) filled to the last byte, then emptied
    50 s     trap armed again
    random   four SIGKILLs of a random server, each started again 0.5-2 s later
"""

from __future__ import annotations

import math
import os
import random
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError

from fulfilment.models import Order, transaction, utcnow
from fulfilment.storage import S3Store, make_s3_client
from healer import db
from healer.demo.samples import sample_audio, sample_photo, sample_waveform_png
from tests.eventually import TimedOut, eventually
from tests.fakes.s3_proxy import S3FaultProxy
from tests.fakes.stripe_server import FakeStripeServer
from tests.faults.processes import Incarnation, Slot, wait_until_answering
from tests.faults.sendgrid_tap import MAIL_SEND, TappedSendGrid

TEMPLATES = ("a4-portrait", "a3-portrait", "square-30x30", "print-50x70")
REMOVED_FONT = "DejaVuSerif-Bold.ttf"  # every template's title font
DATA_FS_BYTES = 1100 * 2**20  # room for both daemons' scratch and outbox; filled to the last byte by `fill`
FROM_EMAIL = "posters@shop.example"
PUBLIC_BASE_URL = "https://shop.example"
AMOUNT, CURRENCY = 4900, "eur"
# What a flawed payment looks like; none of these orders may ever be fulfilled. (An intent whose
# metadata names another order is judged in tests/badinput/test_payment_mismatch.py.)
FLAWS = ("requires_payment_method", "canceled", "amount", "currency")


@dataclass(frozen=True)
class FaultPlan:
    orders: int = 300
    bad_orders: int = 10  # orders whose payment is not good, spread among the rest
    arrivals_per_second: float = 6.0
    cycle_seconds: float = 60.0
    pg_restarts: int = 1
    random_kills_per_cycle: int = 4
    traps_per_cycle: int = 2
    seed: int = 8
    converge_seconds: float = 180.0  # after the last fault, for every good order to finish

    @property
    def cycles(self) -> int:
        return max(1, math.ceil(self.orders / self.arrivals_per_second / self.cycle_seconds))

    @classmethod
    def sized(cls, orders: int, **changes: Any) -> FaultPlan:
        """A plan for `orders`: the CI size (300) gets one PostgreSQL restart, longer runs two."""
        scale = max(1.0, orders / 300)
        defaults: dict[str, Any] = {"orders": orders, "bad_orders": max(5, orders // 30),
                                        "pg_restarts": 1 if orders <= 300 else 2,
                                        "converge_seconds": 180.0 * scale ** 0.5}
        defaults.update(changes)
        return cls(**defaults)


@dataclass
class Peers:
    db_url: str
    moto_url: str  # moto itself: the shop's uploads and the final checks go here, not via the proxy
    bucket: str
    sendgrid: TappedSendGrid
    stripe: FakeStripeServer
    assets_dir: Path  # a private copy the servers read (a font is removed from it)
    work_dir: Path  # logs, the tmpfs mount point
    restart_database: Callable[[], None]


@dataclass
class PlacedOrder:
    id: uuid.UUID
    flaw: str | None  # None: a good, paid order
    path: str  # how it reached the server: "queued", "customer", "webhook"
    payment_intent_id: str
    placed_at: float
    responses: list[int | str] = field(default_factory=list)  # HTTP statuses; "refused": no answer

    @property
    def good(self) -> bool:
        return self.flaw is None


@dataclass(frozen=True)
class FaultWindow:
    name: str
    started_at: float
    ended_at: float


@dataclass
class RunRecord:
    plan: FaultPlan
    target: str
    started_at: float
    orders: list[PlacedOrder]
    slots: list[Slot]
    faults: list[FaultWindow]
    proxy_injected: dict[int, int]
    finished_at: float = 0.0
    converged: bool = False
    errors: list[str] = field(default_factory=list)  # faults that could not be injected
    stop_codes: list[int | None] = field(default_factory=list)  # None: did not exit after SIGTERM
    stop_seconds: list[float] = field(default_factory=list)

    def windows(self, prefix: str) -> list[FaultWindow]:
        return [w for w in self.faults if w.name.startswith(prefix)]


class Target(Protocol):
    """What the scenario runs against: servers in slots, and how an order reaches them."""

    name: str
    slots: list[Slot]

    def path_for(self, rng: random.Random, flaw: str | None) -> str: ...

    def arrive(self, order: PlacedOrder, stripe: FakeStripeServer) -> None: ...

    def settled(self, engine: Engine, orders: list[PlacedOrder]) -> bool: ...


def peer_env(peers: Peers, s3_endpoint: str, data_dir: Path, sendgrid_key: str) -> dict[str, str]:
    """The environment of a server on these peers; nothing inherited that could change it."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("HEALER_", "AWS_", "S3_", "STRIPE_", "SENDGRID_", "DATABASE_URL",
                                 "DOCKER_HOST", "PUBLIC_BASE_URL", "FROM_EMAIL"))}
    return dict(
        keep,
        DATABASE_URL=peers.db_url,
        HEALER_DATA_DIR=str(data_dir),
        HEALER_ASSETS_DIR=str(peers.assets_dir),
        AWS_ACCESS_KEY_ID="fault-run-access-key",
        AWS_SECRET_ACCESS_KEY="fault-run-secret-key",
        S3_BUCKET=peers.bucket,
        S3_REGION="us-east-1",
        S3_ENDPOINT_URL=s3_endpoint,
        SENDGRID_API_KEY=sendgrid_key,
        SENDGRID_API_BASE=peers.sendgrid.url,
        FROM_EMAIL=FROM_EMAIL,
        STRIPE_SECRET_KEY=peers.stripe.api_key,
        STRIPE_API_BASE=peers.stripe.url,
        STRIPE_WEBHOOK_SECRET=peers.stripe.webhook_secret,
        PUBLIC_BASE_URL=PUBLIC_BASE_URL,
        PYTHONFAULTHANDLER="1",  # a server that will not stop is aborted with its threads' stacks
    )


# -- the shop's side: orders ----------------------------------------------------------------------


class Shop:
    """Places orders as the shop's checkout does: uploads, a PaymentIntent, the order row."""

    def __init__(self, peers: Peers, engine: Engine) -> None:
        self.peers = peers
        self.sessions = db.make_session_factory(engine)
        client = make_s3_client(access_key_id="shop", secret_access_key="shop-secret", region="us-east-1",
                                endpoint_url=peers.moto_url)
        self.store = S3Store(client, peers.bucket)
        self.photo = sample_photo(seed=1, size=(480, 640))
        self.audio = sample_audio(seed=1, seconds=3.0)
        self.waveform = sample_waveform_png(self.audio)

    def place(self, rng: random.Random, flaw: str | None, path: str, queued: bool) -> PlacedOrder:
        order_id = uuid.uuid4()
        keys = {"photo_key": f"tmp/{order_id}/photo.jpg", "audio_key": f"tmp/{order_id}/voice.wav",
                "waveform_key": f"tmp/{order_id}/waveform.png"}
        self.store.put(keys["photo_key"], self.photo, "image/jpeg")
        self.store.put(keys["audio_key"], self.audio, "audio/wav")
        if rng.random() < 0.8:  # a fifth lost their waveform: healer draws it from the audio
            self.store.put(keys["waveform_key"], self.waveform, "image/png")
        intent = self._payment(order_id, flaw)
        row = dict(id=order_id, email=f"c-{order_id.hex[:16]}@example.com", session_token=f"sess-{order_id.hex}",
                   stripe_payment_intent_id=intent["id"], amount_cents=AMOUNT, currency=CURRENCY,
                   template=rng.choice(TEMPLATES), title=f"Zoë & Ömer #{order_id.hex[:4]}",
                   subtitle="Our first dance", next_attempt_at=utcnow() if queued else None, **keys)
        placed = PlacedOrder(order_id, flaw, path, intent["id"], time.time())
        retrying(lambda: self._insert(row))
        return placed

    def _payment(self, order_id: uuid.UUID, flaw: str | None) -> dict[str, Any]:
        amount = AMOUNT + 1000 if flaw == "amount" else AMOUNT
        currency = "usd" if flaw == "currency" else CURRENCY
        paid_for = str(order_id)
        status = flaw if flaw in ("requires_payment_method", "canceled") else "succeeded"
        return self.peers.stripe.create_payment_intent(amount, currency, {"order_id": paid_for}, status=status)

    def _insert(self, row: dict[str, Any]) -> None:
        with transaction(self.sessions) as session:
            session.add(Order(**row))


def retrying(action: Callable[[], Any], seconds: float = 60.0) -> Any:
    """The shop's own writes wait out a PostgreSQL restart."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return action()
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)  # deliberate: a retry of a write, not a wait for a state


def count_by_status(engine: Engine, order_ids: list[uuid.UUID]) -> dict[str, int]:
    def query() -> dict[str, int]:
        with engine.connect() as conn:
            rows = conn.execute(select(Order.status, func.count()).where(Order.id.in_(order_ids))
                                .group_by(Order.status)).all()
        return dict(rows)

    return dict(retrying(query))


# -- faults ---------------------------------------------------------------------------------------


@contextmanager
def small_filesystem(mount_point: Path, size_bytes: int = DATA_FS_BYTES) -> Iterator[Path]:
    """A tmpfs of its own for the servers' data directories, so filling it fills nothing else."""
    mount_point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"cannot mount a tmpfs at {mount_point} ({result.stderr.strip()}): the fault run fills the "
            "servers' disk, which needs root (or CAP_SYS_ADMIN) to mount a small file system")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], capture_output=True)


def fill(mount_point: Path) -> Path:
    """Write until the file system says ENOSPC."""
    filler = mount_point / "filler.bin"
    block = b"\0" * 2**20
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(block)
                handle.flush()
        except OSError:
            pass
    return filler


class Faults:
    """Switches faults on and off, and keeps a record of each window."""

    def __init__(self, peers: Peers, proxy: S3FaultProxy, data_fs: Path, slots: list[Slot],
                 keys: dict[str, Slot], rng: random.Random) -> None:
        self.peers = peers
        self.proxy = proxy
        self.data_fs = data_fs
        self.slots = slots
        self.keys = keys
        self.rng = rng
        self.log: list[FaultWindow] = []
        self._open: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stash = peers.work_dir / "font-stash"
        self._stash.mkdir(parents=True, exist_ok=True)
        peers.sendgrid.on_accepted = self._kill_sender

    def begin(self, name: str) -> None:
        with self._lock:
            self._open[name] = time.time()

    def end(self, name: str) -> None:
        with self._lock:
            started = self._open.pop(name, None)
            if started is not None:
                self.log.append(FaultWindow(name, started, time.time()))

    def instant(self, name: str) -> None:
        now = time.time()
        with self._lock:
            self.log.append(FaultWindow(name, now, now))

    # the faults themselves

    def s3(self, status: int, share: float) -> None:
        self.begin(f"s3 {status}")
        self.proxy.set_fault(status, share)

    def s3_ok(self, status: int) -> None:
        self.proxy.clear()
        self.end(f"s3 {status}")

    def sendgrid_keys(self, valid: bool) -> None:
        (self.end if valid else self.begin)("sendgrid 401")
        for key in self.keys:
            self.peers.sendgrid.set_key_valid(valid, key)

    def sendgrid_burst(self) -> None:
        for status, count in ((429, 6), (500, 4), (503, 4)):
            self.peers.sendgrid.fail_next(status, count, path=MAIL_SEND)
        self.instant("sendgrid 429/500/503 burst")

    def stripe_burst(self) -> None:
        # Most on the retrieval the verify step makes, so the steps meet them, not only the checks.
        self.peers.stripe.fail_next(429, count=10, path="/v1/payment_intents/")
        self.peers.stripe.fail_next(429, count=4)
        self.instant("stripe 429 burst")

    def restart_database(self) -> None:
        self.begin("postgresql restart")
        try:
            self.peers.restart_database()
        finally:
            self.end("postgresql restart")

    def remove_font(self) -> None:
        self.begin("font removed")
        shutil.move(self.peers.assets_dir / "fonts" / REMOVED_FONT, self._stash / REMOVED_FONT)

    def restore_font(self) -> None:
        if (self._stash / REMOVED_FONT).exists():
            shutil.move(self._stash / REMOVED_FONT, self.peers.assets_dir / "fonts" / REMOVED_FONT)
        self.end("font removed")

    def fill_disk(self) -> None:
        self.begin("disk full")
        fill(self.data_fs)

    def free_disk(self) -> None:
        (self.data_fs / "filler.bin").unlink(missing_ok=True)
        self.end("disk full")

    def kill_random(self) -> None:
        slot = self.rng.choice(self.slots)
        if slot.kill("random") is not None:
            slot.restart_later(self.rng.uniform(0.5, 2.0))

    def arm_trap(self) -> None:
        self.peers.sendgrid.arm(1)
        self.instant("trap armed")

    def _kill_sender(self, key: str) -> None:
        slot = self.keys.get(key)
        if slot is not None and slot.kill("after-202") is not None:
            slot.restart_later(self.rng.uniform(0.5, 2.0))

    def clear_all(self) -> None:
        """Whatever is still on at the end goes off (a run cut short leaves no fault behind)."""
        self.peers.sendgrid.disarm()
        self.proxy.clear()
        for name in list(self._open):
            self.end(name)
        for key in self.keys:
            self.peers.sendgrid.set_key_valid(True, key)
        self.restore_font()
        (self.data_fs / "filler.bin").unlink(missing_ok=True)


@dataclass(frozen=True, order=True)
class _Step:
    at: float
    name: str
    action: Callable[[], None] = field(compare=False)


def timeline(plan: FaultPlan, faults: Faults, rng: random.Random) -> list[_Step]:
    steps: list[_Step] = []
    scale = plan.cycle_seconds / 60.0
    for cycle in range(plan.cycles):
        base = cycle * plan.cycle_seconds

        def at(offset: float, name: str, action: Callable[[], None], base: float = base) -> None:
            steps.append(_Step(base + offset * scale, name, action))

        at(2, "s3 403 on", lambda: faults.s3(403, 1.0))
        at(8, "s3 403 off", lambda: faults.s3_ok(403))
        at(10, "sendgrid keys revoked", lambda: faults.sendgrid_keys(False))
        at(17, "sendgrid keys restored", lambda: faults.sendgrid_keys(True))
        at(18, "stripe 429 burst", faults.stripe_burst)
        at(20, "s3 500 on", lambda: faults.s3(500, 0.3))
        at(27, "s3 500 off", lambda: faults.s3_ok(500))
        at(28, "sendgrid burst", faults.sendgrid_burst)
        if cycle < plan.pg_restarts:
            at(33, "postgresql restart", faults.restart_database)
        at(38, "font removed", faults.remove_font)
        at(44, "font restored", faults.restore_font)
        at(46, "disk filled", faults.fill_disk)
        at(53, "disk freed", faults.free_disk)
        for offset in (24, 50)[: plan.traps_per_cycle]:
            at(offset + rng.uniform(0, 3), "trap armed", faults.arm_trap)
        for _ in range(plan.random_kills_per_cycle):
            at(rng.uniform(1, 58), "random kill", faults.kill_random)
    return sorted(steps)


# -- the run --------------------------------------------------------------------------------------


class Scenario:
    def __init__(self, plan: FaultPlan, peers: Peers, make_target: Callable[[Peers, str, list[Path]], Target],
                 log: Callable[[str], None] = lambda _line: None) -> None:
        self.plan = plan
        self.peers = peers
        self.make_target = make_target
        self.say = log
        self.rng = random.Random(plan.seed)

    def run(self) -> RunRecord:
        engine = db.make_engine(self.peers.db_url, pool_size=4)
        proxy = S3FaultProxy(self.peers.moto_url, seed=self.plan.seed).start()
        try:
            with small_filesystem(self.peers.work_dir / "data-fs") as data_fs:
                data_dirs = [data_fs / "a", data_fs / "b"]
                target = self.make_target(self.peers, proxy.url, data_dirs)
                return self._run(target, engine, proxy, data_fs)
        finally:
            proxy.stop()
            engine.dispose()

    def _run(self, target: Target, engine: Engine, proxy: S3FaultProxy, data_fs: Path) -> RunRecord:
        keys = {slot.env["SENDGRID_API_KEY"]: slot for slot in target.slots}
        faults = Faults(self.peers, proxy, data_fs, target.slots, keys, self.rng)
        for slot in target.slots:
            self._start_and_wait(slot)
        shop = Shop(self.peers, engine)
        record = RunRecord(self.plan, target.name, time.time(), [], target.slots, faults.log, {})
        steps = timeline(self.plan, faults, self.rng)
        stop = threading.Event()
        clock = threading.Thread(target=self._play, args=(steps, record, stop), daemon=True)
        clock.start()
        try:
            self._place_orders(shop, target, record)
            clock.join(timeout=self.plan.cycles * self.plan.cycle_seconds + 120)
            faults.clear_all()
            self.say("faults over; waiting for the servers to finish every order")
            record.converged = self._wait_settled(target, engine, record)
        finally:
            stop.set()
            faults.clear_all()
            for slot in target.slots:
                stopping = time.monotonic()
                record.stop_codes.append(slot.stop(timeout=60))
                record.stop_seconds.append(round(time.monotonic() - stopping, 1))
            record.finished_at = time.time()
        record.proxy_injected = dict(proxy.injected)
        return record

    def _start_and_wait(self, slot: Slot) -> Incarnation:
        incarnation = slot.start()
        if not wait_until_answering(incarnation):
            raise RuntimeError(f"{slot.name} did not start:\n{incarnation.log_path.read_text()[-3000:]}")
        return incarnation

    def _play(self, steps: list[_Step], record: RunRecord, stop: threading.Event) -> None:
        for step in steps:
            if stop.wait(max(0.0, record.started_at + step.at - time.time())):
                return
            self.say(f"t={time.time() - record.started_at:6.1f}s  {step.name}")
            try:
                step.action()
            except Exception as error:
                record.errors.append(f"{step.name}: {error!r}")
                self.say(f"fault {step.name!r} could not be injected: {error!r}")

    def _place_orders(self, shop: Shop, target: Target, record: RunRecord) -> None:
        plan = self.plan
        flawed = set(self.rng.sample(range(plan.orders), plan.bad_orders))
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="customer") as customers:
            for i in range(plan.orders):
                time.sleep(max(0.0, record.started_at + i / plan.arrivals_per_second - time.time()))  # deliberate: pace
                flaw = FLAWS[i % len(FLAWS)] if i in flawed else None
                path = target.path_for(self.rng, flaw)
                order = shop.place(self.rng, flaw, path, queued=path == "queued")
                record.orders.append(order)
                customers.submit(target.arrive, order, self.peers.stripe)

    def _wait_settled(self, target: Target, engine: Engine, record: RunRecord) -> bool:
        try:
            return eventually(lambda: target.settled(engine, record.orders), timeout=self.plan.converge_seconds,
                              interval=1.0, what="every good order to settle")
        except TimedOut:
            return False

