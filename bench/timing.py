"""Where an order's time goes, measured from outside healer.

Nothing is replaced: the benchmark wraps the objects it builds and hands to `Pipeline` (the object
store, the payments client, the mailer, the render function) in pass-through wrappers that time
each call, and listens to SQLAlchemy events on its engine and session factory (statements,
commits, transactions). Every timed call is a `Span` of the thread that made it.

A worker thread works one order at a time, from its claim to its email. So a span belongs to the
order its thread was working: the last order that a span of that thread named (a statement's
parameters, an S3 key, the payment's order id, the email's order reference, the poster's audio
key). Spans are read in the order they ended, so a transaction belongs to the order its own
statements name, even when it began before the first of them.

`breakdown` turns the spans into one `OrderTime` per order: how long it waited in the queue (from
due to the statement that leased it) and how its work (from that claim to the last thing done for
it) splits into parts. `other` is the work no wrapper or event saw: Python between the calls,
thread hand-offs; a negative one would mean two parts overlapped (they do not: the wrapped calls
and the database transactions of one order never nest).

The render wrapper sees the whole call into the render pool. How much of it was spent waiting for
a free render process is not visible from outside; it is replayed from the spans: with `slots`
processes, a render that starts while `slots` others are still running waits (first come, first
served) until the earliest of them ends.
"""

from __future__ import annotations

import heapq
import re
import statistics
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from fulfilment.mailer import Email, Mailer
from fulfilment.payments import Payments, VerifiedPayment
from fulfilment.render import PosterInputs
from fulfilment.steps import RenderFn
from fulfilment.storage import ObjectStore

# The parts of an order's time, in the order the table shows them, with their labels.
PARTS: dict[str, str] = {
    "queue": "queue wait (due → claimed)",
    "verify": "verify payment (Stripe)",
    "s3_copy": "S3 copies (the uploads)",
    "s3_read": "S3 reads (render inputs)",
    "render_wait": "render: waiting for a slot",
    "render": "render: in the pool",
    "pdf_upload": "PDF upload",
    "s3_other": "S3, other calls",
    "email": "email (SendGrid)",
    "db_statements": "database: statements",
    "db_commits": "database: commits",
    "db_rest": "database: rest of transactions",
    "db_failed": "database: failed statements",
    "other": "other (between the parts)",
    "work": "work (claimed → emailed)",
}
WORK_PARTS = tuple(p for p in PARTS if p not in ("queue", "work", "other"))
OPTIONAL_PARTS = ("s3_other", "db_failed")  # rows shown only when such calls happened
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Span:
    thread: int
    kind: str  # a key of PARTS, or "db_transaction"
    start: float  # time.perf_counter()
    end: float
    order: uuid.UUID | None  # the order the call named, if it named one of this run's


class Timeline:
    """Spans from every thread, and the orders of this run (only those are recognised)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.database_errors = 0  # statements or connections that failed: a healthy run has none
        self._known: set[uuid.UUID] = set()
        self._known_text: dict[str, uuid.UUID] = {}
        self._lock = threading.Lock()

    def expect(self, orders: Iterable[uuid.UUID]) -> None:
        with self._lock:
            for order in orders:
                self._known.add(order)
                self._known_text[str(order)] = order

    def add(self, kind: str, start: float, end: float, order: uuid.UUID | None = None) -> None:
        span = Span(threading.get_ident(), kind, start, end, order)
        with self._lock:
            self.spans.append(span)

    @contextmanager
    def timed(self, kind: str, *naming: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(kind, started, time.perf_counter(), self.named(*naming))

    def named(self, *texts: str) -> uuid.UUID | None:
        """The first of this run's orders that `texts` mention."""
        for text in texts:
            for found in _UUID.findall(text):
                if found in self._known_text:
                    return self._known_text[found]
        return None

    def _named_in_parameters(self, parameters: Any) -> uuid.UUID | None:
        values = parameters.values() if isinstance(parameters, dict) else parameters
        for value in values or ():
            if isinstance(value, (dict, list, tuple)):  # executemany: one set per row
                found = self._named_in_parameters(value)
                if found is not None:
                    return found
            elif isinstance(value, uuid.UUID) and value in self._known:
                return value
            elif isinstance(value, str) and value in self._known_text:
                return self._known_text[value]
        return None

    def watch_database(self, engine: Engine, sessions: sessionmaker[Session]) -> Callable[[], None]:
        """Time statements, commits and whole transactions; returns the function that stops it.

        A commit runs from the engine's `commit` event (just before the driver's COMMIT) to the
        session's `after_commit` (just after it), both in the committing thread. A transaction
        runs from its creation (`session.begin()`, or the first query) to its end (after the
        commit or rollback and the connection's return to the pool), so its rest, beyond the
        statements and the commit, is the pool check-out with its ping, the ORM's own work, BEGIN
        and the return to the pool."""
        commit_started: dict[int, float] = {}
        transaction_started: dict[int, float] = {}

        def before_statement(conn: Any, *_args: Any) -> None:
            conn.info.setdefault("bench_statements", []).append(time.perf_counter())

        def after_statement(conn: Any, _cursor: Any, _statement: str, parameters: Any, *_args: Any) -> None:
            started = conn.info["bench_statements"].pop()
            self.add("db_statements", started, time.perf_counter(), self._named_in_parameters(parameters))

        def failed_statement(context: Any) -> None:
            with self._lock:
                self.database_errors += 1
            stack = context.connection.info.get("bench_statements") if context.connection is not None else None
            if stack:  # no after_cursor_execute follows a statement that raised
                self.add("db_failed", stack.pop(), time.perf_counter(),
                         self._named_in_parameters(context.parameters))

        def before_commit(_conn: Any) -> None:
            commit_started[threading.get_ident()] = time.perf_counter()

        def after_commit(_session: Session) -> None:
            started = commit_started.pop(threading.get_ident(), None)
            if started is not None:
                self.add("db_commits", started, time.perf_counter())

        def transaction_created(_session: Session, transaction: SessionTransaction) -> None:
            if transaction.parent is None:
                transaction_started[id(transaction)] = time.perf_counter()

        def transaction_ended(_session: Session, transaction: SessionTransaction) -> None:
            started = transaction_started.pop(id(transaction), None)
            if started is not None:
                self.add("db_transaction", started, time.perf_counter())

        listeners: list[tuple[Any, str, Callable[..., None]]] = [
            (engine, "before_cursor_execute", before_statement),
            (engine, "after_cursor_execute", after_statement),
            (engine, "handle_error", failed_statement),
            (engine, "commit", before_commit),
            (sessions, "after_commit", after_commit),
            (sessions, "after_transaction_create", transaction_created),
            (sessions, "after_transaction_end", transaction_ended),
        ]
        for target, name, listener in listeners:
            event.listen(target, name, listener)

        def stop() -> None:
            for target, name, listener in listeners:
                event.remove(target, name, listener)

        return stop


# -- pass-through wrappers ----------------------------------------------------------------------


class TimedStore:
    """The object store, every call timed; the calls themselves unchanged."""

    def __init__(self, store: ObjectStore, timeline: Timeline) -> None:
        self._store = store
        self._timeline = timeline
        self.kind = store.kind

    def exists(self, key: str) -> bool:
        with self._timeline.timed("s3_read", key):
            return self._store.exists(key)

    def size(self, key: str) -> int:
        with self._timeline.timed("s3_read", key):
            return self._store.size(key)

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        with self._timeline.timed("s3_read", key):
            return self._store.get(key, max_bytes)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        with self._timeline.timed("pdf_upload" if content_type == "application/pdf" else "s3_other", key):
            self._store.put(key, data, content_type)

    def copy(self, src_key: str, dst_key: str) -> bool:
        with self._timeline.timed("s3_copy", dst_key, src_key):
            return self._store.copy(src_key, dst_key)

    def delete(self, key: str) -> None:
        with self._timeline.timed("s3_other", key):
            self._store.delete(key)

    def download_url(self, key: str, expires_seconds: int) -> str | None:
        with self._timeline.timed("s3_other", key):
            return self._store.download_url(key, expires_seconds)


class TimedPayments:
    def __init__(self, payments: Payments, timeline: Timeline) -> None:
        self._payments = payments
        self._timeline = timeline
        self.enabled = payments.enabled

    def verify(self, *, order_id: str, payment_intent_id: str, amount_cents: int, currency: str) -> VerifiedPayment:
        with self._timeline.timed("verify", order_id):
            return self._payments.verify(order_id=order_id, payment_intent_id=payment_intent_id,
                                         amount_cents=amount_cents, currency=currency)


class TimedMailer:
    def __init__(self, mailer: Mailer, timeline: Timeline) -> None:
        self._mailer = mailer
        self._timeline = timeline
        self.name = mailer.name

    def send(self, email: Email, *, sandbox: bool = False) -> str:
        with self._timeline.timed("email", email.text):  # the text carries the order reference
            return self._mailer.send(email, sandbox=sandbox)


class TimedRender:
    def __init__(self, render: RenderFn, timeline: Timeline) -> None:
        self._render = render
        self._timeline = timeline

    def __call__(self, inputs: PosterInputs) -> bytes:
        with self._timeline.timed("render", inputs.audio_name):  # the permanent key names the order
            return self._render(inputs)


# -- from spans to orders -----------------------------------------------------------------------


@dataclass
class OrderTime:
    order: uuid.UUID
    due: float
    claimed: float | None = None
    done: float | None = None
    parts: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # db_rest: transactions


def breakdown(timeline: Timeline, due: dict[uuid.UUID, float], render_slots: int) -> list[OrderTime]:
    """One OrderTime per order in `due` (when each was queued, perf_counter): queue wait and parts."""
    with timeline._lock:
        spans = list(timeline.spans)
    times = {order: OrderTime(order, at) for order, at in due.items()}
    _claims(spans, times)
    render_waits = _slot_waits([s for s in spans if s.kind == "render"], render_slots)
    working = {s.thread for s in spans if not s.kind.startswith("db_")}  # threads that ran steps
    transactions: dict[uuid.UUID, float] = defaultdict(float)
    for thread in working:
        current: uuid.UUID | None = None
        for span in sorted((s for s in spans if s.thread == thread), key=lambda s: s.end):
            current = span.order if span.order is not None else current
            entry = times.get(current) if current is not None else None
            if entry is None or (entry.claimed is not None and span.start < entry.claimed):
                continue  # not one of these orders, or before its claim (the shop placing it)
            entry.done = max(entry.done or span.end, span.end)
            duration = span.end - span.start
            entry.calls["db_rest" if span.kind == "db_transaction" else span.kind] += 1
            if span.kind == "db_transaction":
                transactions[entry.order] += duration
            elif span.kind == "render":
                wait = render_waits.get(span, 0.0)
                entry.parts["render_wait"] += wait
                entry.parts["render"] += duration - wait
            else:
                entry.parts[span.kind] += duration
    for entry in times.values():
        _close(entry, transactions[entry.order])
    return [times[order] for order in due]


def _claims(spans: list[Span], times: dict[uuid.UUID, OrderTime]) -> None:
    """Claimed: the end of the first statement naming the order after it was due (the lease's
    compare-and-set UPDATE, in the thread that ticks the worker)."""
    for span in sorted((s for s in spans if s.kind == "db_statements" and s.order in times), key=lambda s: s.end):
        entry = times[span.order]  # type: ignore[index]
        if entry.claimed is None and span.start >= entry.due:
            entry.claimed = span.end


def _slot_waits(renders: list[Span], slots: int) -> dict[Span, float]:
    busy: list[float] = []  # when each busy slot is free again
    waits: dict[Span, float] = {}
    for span in sorted(renders, key=lambda s: s.start):
        while busy and busy[0] <= span.start:
            heapq.heappop(busy)
        waits[span] = max(0.0, heapq.heappop(busy) - span.start) if len(busy) >= slots else 0.0
        heapq.heappush(busy, span.end)
    return waits


def _close(entry: OrderTime, transactions: float) -> None:
    parts = entry.parts
    parts["db_rest"] = transactions - parts["db_statements"] - parts["db_commits"]
    if entry.claimed is None or entry.done is None:
        return  # never claimed or never worked: left out of the figures
    parts["queue"] = entry.claimed - entry.due
    parts["work"] = entry.done - entry.claimed
    parts["other"] = parts["work"] - sum(parts[p] for p in WORK_PARTS)


def summarise(orders: Collection[OrderTime]) -> dict[str, dict[str, float | None]]:
    """Per part: p50 and p99 in ms over the orders, its share of the mean work (%), and the calls
    per order (mean; for the rest of transactions, the transactions)."""
    complete = [o for o in orders if o.claimed is not None and o.done is not None]
    if not complete:
        return {}
    mean_work = statistics.fmean(o.parts["work"] for o in complete)
    out: dict[str, dict[str, float | None]] = {}
    for part in PARTS:
        values = sorted(o.parts[part] for o in complete)
        if part in OPTIONAL_PARTS and not any(values):
            continue  # no such calls: no row
        share = None if part == "queue" else statistics.fmean(values) / mean_work * 100
        out[part] = {"p50_ms": statistics.median(values) * 1000, "p99_ms": percentile(values, 0.99) * 1000,
                     "mean_ms": statistics.fmean(values) * 1000, "share_pct": share,
                     "calls_per_order": statistics.fmean(o.calls[part] for o in complete)}
    return out


def percentile(values: list[float], share: float) -> float:
    """Nearest rank on sorted values; with fewer than 100 values, p99 is the largest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")
