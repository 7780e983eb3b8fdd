"""Scale-out: several `healer run` replicas on one PostgreSQL while paid orders arrive, the replica
leading reconciliation is SIGKILLed (and started again), the next leader gets SIGTERM (and is
started again), and, if the plan says so, S3 and SendGrid fail for a while.

Each replica calls SendGrid and Stripe with keys of its own, so every email and every Stripe request
is known by its sender. What a run did is a `ReplicaRecord`: the fault run's `RunRecord` (judged by
tests.faults.ledger: orders completed, no order worked by two replicas at once, duplicate emails
only from a kill), plus the reconciliation runs as Stripe saw them and each leader's death with
its takeover. tests/e2e/test_replicas.py runs it small; bench/replicas.py runs it with 300 orders
and faults and prints the numbers.

The timeline, in shares of the arrivals (faults only when `plan.faults`):

    0.05-0.15  S3 answers 403 to everything
    0.20-0.45  S3 answers 500 to 30% of requests
    kill_at    the replica leading `reconcile` SIGKILLed; started again `restart_after_seconds` later
    0.50       SendGrid: the next 6 sends get 429, 4 get 500, 4 get 503
    term_at    the replica leading `reconcile` then gets SIGTERM; started again once it has exited
    0.70-0.85  SendGrid keys revoked: 401
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine

from tests.eventually import TimedOut, Unmet, eventually
from tests.fakes.s3_proxy import S3FaultProxy
from tests.faults.healer_target import HealerTarget
from tests.faults.processes import Incarnation, Slot, http, wait_until_answering
from tests.faults.scenario import FaultPlan, Faults, Peers, PlacedOrder, RunRecord, Shop

RECONCILE = "reconcile"
LIST_PAYMENT_INTENTS = "/v1/payment_intents"


@dataclass(frozen=True)
class ReplicaPlan:
    orders: int = 60
    replicas: int = 3
    arrivals_per_second: float = 4.0
    reconcile_seconds: float = 2.0  # HEALER_RECONCILE_INTERVAL_SECONDS: leadership moves within it
    workers: int = 1  # HEALER_WORKERS per replica
    kill_at: float = 0.3  # share of the orders placed when the reconcile leader is SIGKILLed
    term_at: float = 0.6  # ... when the reconcile leader then gets SIGTERM
    restart_after_seconds: float = 1.0
    faults: bool = False
    converge_seconds: float = 120.0
    seed: int = 18

    @property
    def arrival_seconds(self) -> float:
        return self.orders / self.arrivals_per_second


@dataclass(frozen=True)
class Handover:
    """A leader's death (`signal` sent at `at`) and the first reconciliation run after it."""

    signal: str  # SIGKILL | SIGTERM
    leader: str  # "healer-a pid 123"
    at: float
    taken_by: str | None
    taken_at: float | None

    @property
    def seconds(self) -> float | None:
        return None if self.taken_at is None else self.taken_at - self.at


@dataclass(frozen=True)
class ReconcileRun:
    at: float  # its first list call, as Stripe received it
    replica: str  # "healer-b pid 456": the incarnation whose key made the call


@dataclass
class ReplicaRecord:
    plan: ReplicaPlan
    run: RunRecord
    handovers: list[Handover] = field(default_factory=list)
    reconcile_runs: list[ReconcileRun] = field(default_factory=list)
    claims: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # at the end: role -> replicas claiming it

    @property
    def runner_changes(self) -> int:
        """How often the replica running reconciliation changed from one run to the next."""
        runs = self.reconcile_runs
        return sum(1 for earlier, later in zip(runs, runs[1:], strict=False) if earlier.replica != later.replica)

    @property
    def reconcile_window(self) -> float:
        runs = self.reconcile_runs
        return runs[-1].at - runs[0].at if runs else 0.0


def describe(slot: Slot, incarnation: Incarnation | None) -> str:
    return f"{slot.name} pid {incarnation.pid}" if incarnation is not None else f"{slot.name} (down)"


class ReplicaRun:
    def __init__(self, plan: ReplicaPlan, peers: Peers, engine: Engine,
                 log: Callable[[str], None] = lambda _line: None) -> None:
        self.plan = plan
        self.peers = peers
        self.engine = engine
        self.say = log
        self.rng = random.Random(plan.seed)

    def run(self) -> ReplicaRecord:
        proxy = S3FaultProxy(self.peers.moto_url, seed=self.plan.seed).start()
        try:
            data_dirs = [self.peers.work_dir / f"data-{n}" for n in range(self.plan.replicas)]
            target = HealerTarget(self.peers, proxy.url, data_dirs, stripe_keys=True,
                                  HEALER_WORKERS=str(self.plan.workers), HEALER_CHECK_INTERVAL_SECONDS="2",
                                  HEALER_RECONCILE_INTERVAL_SECONDS=f"{self.plan.reconcile_seconds:g}")
            return self._run(target, proxy)
        finally:
            proxy.stop()

    def _run(self, target: HealerTarget, proxy: S3FaultProxy) -> ReplicaRecord:
        slots = target.slots
        keys = {slot.env["SENDGRID_API_KEY"]: slot for slot in slots}
        faults = Faults(self.peers, proxy, self.peers.work_dir, slots, keys, self.rng)
        plan = FaultPlan(orders=self.plan.orders, bad_orders=0, pg_restarts=0, random_kills_per_cycle=0,
                         traps_per_cycle=0, converge_seconds=self.plan.converge_seconds, seed=self.plan.seed)
        record = ReplicaRecord(self.plan, RunRecord(plan, target.name, time.time(), [], slots, faults.log, {}))
        try:
            for incarnation in [slot.start() for slot in slots]:  # all at once, as a rollout would
                if not wait_until_answering(incarnation):
                    raise RuntimeError(f"{incarnation.slot} did not start:\n{incarnation.log_path.read_text()[-3000:]}")
            self.leader(slots)  # settled before the first order
            record.run.started_at = time.time()
            self._place_orders(target, record, faults)
            faults.clear_all()
            self.say("orders placed; waiting for the replicas to finish every order")
            record.run.converged = self._settled(target, record.run.orders)
            record.claims = {role: self.claims(slots, role) for role in (RECONCILE, "stuck")}
        finally:
            stopping = time.time()  # the final stops hand leadership over too: not part of the run
            faults.clear_all()
            for slot in slots:
                began = time.monotonic()
                record.run.stop_codes.append(slot.stop(timeout=60))
                record.run.stop_seconds.append(round(time.monotonic() - began, 1))
            record.run.finished_at = time.time()
        record.run.proxy_injected = dict(proxy.injected)
        record.reconcile_runs = self._reconcile_runs(slots, since=record.run.started_at, until=stopping)
        record.handovers = [self._taken_over(h, record.reconcile_runs) for h in record.handovers]
        return record

    # -- leaders, from the replicas' own /health --------------------------------------------------

    def claims(self, slots: list[Slot], role: str) -> list[str]:
        """The running replicas whose /health says they lead `role`."""
        claiming = []
        for slot in slots:
            incarnation = slot.current
            if incarnation is None:
                continue
            try:
                _, body = http("GET", incarnation.ops_url + "/health", timeout=5)
            except OSError:
                continue
            if json.loads(body).get("leader", {}).get(role):
                claiming.append(slot.name)
        return claiming

    def leader(self, slots: list[Slot], role: str = RECONCILE) -> Slot:
        def one() -> list[str] | Unmet:
            claiming = self.claims(slots, role)
            return claiming if len(claiming) == 1 else Unmet(claiming)

        [name] = eventually(one, timeout=60, interval=0.2, what=f"one replica to lead {role}")
        return next(slot for slot in slots if slot.name == name)

    # -- the run ----------------------------------------------------------------------------------

    def _place_orders(self, target: HealerTarget, record: ReplicaRecord, faults: Faults) -> None:
        plan = self.plan
        shop = Shop(self.peers, self.engine)
        events = self._timeline(target, record, faults)
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="customer") as customers:
            for i in range(plan.orders):
                while events and events[0][0] <= i / plan.orders:
                    _, name, action = events.pop(0)
                    self.say(f"t={time.time() - record.run.started_at:5.1f}s  {name}")
                    action()
                time.sleep(max(0.0, record.run.started_at + i / plan.arrivals_per_second - time.time()))  # deliberate: pace
                path = target.path_for(self.rng, None)
                order = shop.place(self.rng, None, path, queued=path == "queued")
                record.run.orders.append(order)
                customers.submit(target.arrive, order, self.peers.stripe)
            for _, name, action in events:  # what falls after the last arrival
                self.say(f"t={time.time() - record.run.started_at:5.1f}s  {name}")
                action()

    def _timeline(self, target: HealerTarget, record: ReplicaRecord,
                  faults: Faults) -> list[tuple[float, str, Callable[[], None]]]:
        plan = self.plan
        events: list[tuple[float, str, Callable[[], None]]] = [
            (plan.kill_at, "SIGKILL the reconcile leader", lambda: self._kill_leader(target.slots, record)),
            (plan.term_at, "SIGTERM the reconcile leader", lambda: self._stop_leader(target.slots, record)),
        ]
        if plan.faults:
            events += [
                (0.05, "s3 403 on", lambda: faults.s3(403, 1.0)), (0.15, "s3 403 off", lambda: faults.s3_ok(403)),
                (0.20, "s3 500 on", lambda: faults.s3(500, 0.3)), (0.45, "s3 500 off", lambda: faults.s3_ok(500)),
                (0.50, "sendgrid burst", faults.sendgrid_burst),
                (0.70, "sendgrid keys revoked", lambda: faults.sendgrid_keys(False)),
                (0.85, "sendgrid keys restored", lambda: faults.sendgrid_keys(True)),
            ]
        return sorted(events, key=lambda event: event[0])

    def _kill_leader(self, slots: list[Slot], record: ReplicaRecord) -> None:
        slot = self.leader(slots)
        incarnation = slot.current
        kill = slot.kill("leader")
        assert kill is not None, f"{slot.name} was not running"
        record.handovers.append(Handover("SIGKILL", describe(slot, incarnation), kill.at, None, None))
        slot.restart_later(self.plan.restart_after_seconds)

    def _stop_leader(self, slots: list[Slot], record: ReplicaRecord) -> None:
        slot = self.leader(slots)
        incarnation = slot.current
        at = time.time()

        def stop_and_start() -> None:  # a rolling restart: SIGTERM, wait for the exit, start again
            slot.stop(timeout=60)
            time.sleep(self.plan.restart_after_seconds)  # deliberate: the restart policy's delay
            slot.start()

        record.handovers.append(Handover("SIGTERM", describe(slot, incarnation), at, None, None))
        threading.Thread(target=stop_and_start, name=f"rollout-{slot.name}", daemon=True).start()

    def _settled(self, target: HealerTarget, orders: list[PlacedOrder]) -> bool:
        try:
            return eventually(lambda: target.settled(self.engine, orders), timeout=self.plan.converge_seconds,
                              interval=0.5, what="every order to settle")
        except TimedOut:
            return False

    # -- reconciliation, as Stripe saw it ---------------------------------------------------------

    def _reconcile_runs(self, slots: list[Slot], since: float, until: float) -> list[ReconcileRun]:
        """Each run's first page: a listing by creation time with no cursor yet (the stripe check
        lists one PaymentIntent, without `created`)."""
        by_key = {slot.env["STRIPE_SECRET_KEY"]: slot for slot in slots}
        runs = []
        for request in self.peers.stripe.requests:
            if (request.method, request.path) != ("GET", LIST_PAYMENT_INTENTS) or not since <= request.at < until:
                continue
            if "created" not in request.params or "starting_after" in request.params:
                continue
            slot = by_key.get(request.api_key or "")
            if slot is not None:
                runs.append(ReconcileRun(request.at, describe(slot, slot.incarnation_at(request.at))))
        return sorted(runs, key=lambda run: run.at)

    @staticmethod
    def _taken_over(handover: Handover, runs: list[ReconcileRun]) -> Handover:
        after = next((run for run in runs if run.at > handover.at and run.replica != handover.leader), None)
        if after is None:
            return handover
        return Handover(handover.signal, handover.leader, handover.at, after.replica, after.at)
