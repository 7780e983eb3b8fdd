"""`healer run` daemons on one database (two in the fault run, three in tests/faults/replicas.py),
as the fault run's target.

Orders reach them three ways, as in production: queued by the shop at checkout (the worker verifies
the payment), by the customer's `POST /api/orders/{id}/complete`, or by Stripe's signed
`payment_intent.succeeded` webhook. Customers and Stripe retry when a daemon is down or answers 503
(a customer clicks again; Stripe redelivers), against whichever daemon is up.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from fulfilment.models import OrderStatus
from tests.fakes.stripe_server import FakeStripeServer
from tests.faults.processes import HEALER_RUN, Incarnation, Slot, http
from tests.faults.scenario import Peers, PlacedOrder, count_by_status, peer_env

WORKERS_PER_DAEMON = 2
LEASE_SECONDS = 5
# Short clocks so that a run converges in minutes; attempts enough to outlast every fault window
# that is not gated (SendGrid 429/5xx, Stripe 429, the database restart) many times over.
DAEMON_SETTINGS = {
    "HEALER_WORKERS": str(WORKERS_PER_DAEMON),
    "HEALER_WORKER_INTERVAL_SECONDS": "0.2",
    "HEALER_CHECK_INTERVAL_SECONDS": "1",
    "HEALER_LEASE_SECONDS": str(LEASE_SECONDS),
    "HEALER_RETRY_BASE_SECONDS": "0.2",
    "HEALER_RETRY_MAX_SECONDS": "2",
    "HEALER_MAX_ATTEMPTS": "40",
}
SETTLED = (OrderStatus.COMPLETED.value, OrderStatus.NEEDS_ATTENTION.value, OrderStatus.REFUNDED.value)
DELIVERY_SECONDS = 300.0


class HealerTarget:
    name = "healer"

    def __init__(self, peers: Peers, s3_endpoint: str, data_dirs: list[Path], *, stripe_keys: bool = False,
                 **settings: str) -> None:
        """A daemon per data directory. Each sends email with a SendGrid key of its own, so every
        email is known by its sender; `stripe_keys`: each calls Stripe with a key of its own too,
        so every Stripe request is; `settings` add to or replace DAEMON_SETTINGS."""
        keys = [peers.sendgrid.api_key] + [peers.sendgrid.add_key() for _ in data_dirs[1:]]
        self.slots = []
        for name, key, data_dir in zip("abcdefgh"[:len(data_dirs)], keys, data_dirs, strict=True):
            env = {**peer_env(peers, s3_endpoint, data_dir, key), **DAEMON_SETTINGS, **settings}
            if stripe_keys:
                env["STRIPE_SECRET_KEY"] = f"sk_test_healer_{name}_{uuid.uuid4().hex[:12]}"
                peers.stripe.add_key(env["STRIPE_SECRET_KEY"])
            self.slots.append(Slot(f"healer-{name}", HEALER_RUN, env, peers.work_dir))
        self._rng = random.Random(1)
        self._lock = threading.Lock()

    def path_for(self, rng: random.Random, flaw: str | None) -> str:
        draw = rng.random()
        return "queued" if draw < 0.5 else "customer" if draw < 0.8 else "webhook"

    def arrive(self, order: PlacedOrder, stripe: FakeStripeServer) -> None:
        if order.path == "customer":
            headers = {"X-Session-Token": f"sess-{order.id.hex}"}
            self._deliver(order, f"/api/orders/{order.id}/complete", lambda: (b"", headers), done={202, 409})
        elif order.path == "webhook":
            self._deliver(order, "/stripe/webhook", lambda: _webhook(order, stripe), done={200})

    def settled(self, engine: Engine, orders: list[PlacedOrder]) -> bool:
        good = [o.id for o in orders if o.good]
        counts = count_by_status(engine, good)
        return sum(counts.get(status, 0) for status in SETTLED) == len(good)

    def _deliver(self, order: PlacedOrder, path: str, request: Callable[[], tuple[bytes, dict[str, str]]],
                 done: set[int]) -> None:
        # Retries of a customer's or Stripe's request, each one recorded: its sleeps are deliberate
        # (the retry pace), not a wait for a state.
        deadline = time.monotonic() + DELIVERY_SECONDS
        while time.monotonic() < deadline:
            incarnation = self._pick()
            if incarnation is None:
                time.sleep(0.3)
                continue
            body, headers = request()  # signed afresh each time, as each Stripe delivery is
            try:
                status, _ = http("POST", incarnation.base_url + path, body, headers, timeout=15)
            except OSError:  # down, starting, or killed mid-request
                order.responses.append("refused")
                time.sleep(0.3)
                continue
            order.responses.append(status)
            if status in done or status < 500:
                return  # answered; anything but `done` is judged by the ledger
            time.sleep(0.5)  # 503 while the database restarts: try again (a 500 is judged too)

    def _pick(self) -> Incarnation | None:
        running = [i for i in (slot.current for slot in self.slots) if i is not None]
        with self._lock:
            return self._rng.choice(running) if running else None


def _webhook(order: PlacedOrder, stripe: FakeStripeServer) -> tuple[bytes, dict[str, str]]:
    intent = stripe.payment_intent(order.payment_intent_id)
    kind = "payment_intent.payment_failed" if intent["status"] != "succeeded" else "payment_intent.succeeded"
    # One event id per order: redeliveries of it are deduplicated by the daemons, as Stripe's are.
    return stripe.webhook_payload(kind, intent, event_id=f"evt_fault_{uuid.uuid5(uuid.NAMESPACE_URL, str(order.id)).hex}")
