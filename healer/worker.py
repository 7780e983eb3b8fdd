"""The completion worker: claims due orders and runs them, a few at a time.

Orders run on a small thread pool (their steps mostly wait on S3, Stripe and SendGrid); renders,
which are CPU-bound, go to a process pool so they run on every core (healer.render.pool, handed to
the pipeline by healer.wiring). There are more order threads than render processes
(healer.config.ORDERS_PER_RENDER_PROCESS), so the I/O of some orders overlaps the render of another.

The scheduler ticks the worker every few seconds, and an order that ends claims the next at once:
a slot freed in the middle of a backlog is not left empty until the next tick.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from fulfilment.pipeline import Pipeline
from fulfilment.secrets import Redactor, url_passwords

log = logging.getLogger(__name__)


def worker_identity() -> str:
    """Unique per process: leases name their owner, and a restarted daemon is a new owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# While the database is down, one WARNING when it starts and then one per this many seconds: the
# worker polls every couple of seconds, and a line per poll buries everything else.
DATABASE_WARNING_EVERY_SECONDS = 30.0


class Worker:
    # Claiming needs the database: while its check fails, the scheduler does not tick the worker.
    # Orders already running go on; their steps record through the outage (fulfilment.recording).
    depends_on: ClassVar[tuple[str, ...]] = ("database",)

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        concurrency: int,
        owner: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pipeline = pipeline
        self.owner = owner or worker_identity()
        self.concurrency = concurrency
        self.clock = clock
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="order")
        self._in_flight: set[uuid.UUID] = set()
        self._lock = threading.Lock()  # guards _in_flight
        # One claim at a time: the scheduler's tick and an ending order's refill would otherwise
        # both count the same free slots and claim more orders than there are threads.
        self._claiming = threading.Lock()
        self._stopping = threading.Event()
        # (when the outage was first seen, when it was last logged at WARNING); None: database fine.
        # Only tick() touches it, under _claiming.
        self._outage: tuple[float, float] | None = None

    def tick(self) -> int:
        """Claim as many due orders as there are free slots and start them; returns how many.

        A database outage is not raised: the scheduler would log a traceback per tick. It is
        logged here in one line (see `_database_down`) and the next tick simply tries again. The
        `database` check (critical) takes the daemon out of readiness meanwhile; the worker job
        keeps counting as alive, since restarting the daemon would not bring the database back.
        """
        with self._claiming:
            if self._stopping.is_set():
                return 0
            with self._lock:
                free = self.concurrency - len(self._in_flight)
                busy = set(self._in_flight)
            if free <= 0:
                return 0
            try:
                claimed = self.pipeline.claim(self.owner, free, exclude=busy)
            except SQLAlchemyError as error:
                self._database_down(error)
                return 0
            self._database_up()
            for order_id in claimed:
                self._start(order_id)
            return len(claimed)

    def _start(self, order_id: uuid.UUID) -> None:
        with self._lock:
            self._in_flight.add(order_id)
        try:
            self._threads.submit(self._run, order_id)
        except RuntimeError:  # shutting down between claim and submit: hand the lease back
            with self._lock:
                self._in_flight.discard(order_id)
            try:
                self.pipeline.release(order_id, self.owner)
            except SQLAlchemyError as error:
                log.warning("Lease of order %s not handed back (it expires by itself): %s", order_id,
                            _database_problem(error, self.pipeline.sessions.kw.get("bind")))

    def _database_down(self, error: SQLAlchemyError) -> None:
        now = self.clock()
        problem = _database_problem(error, self.pipeline.sessions.kw.get("bind"))
        if self._outage is None:
            self._outage = (now, now)
            log.warning("Worker cannot reach the database, claiming no orders until it can: %s "
                        "(retried every tick; repeated here every %.0fs while it lasts)",
                        problem, DATABASE_WARNING_EVERY_SECONDS)
            return
        since, logged = self._outage
        if now - logged < DATABASE_WARNING_EVERY_SECONDS:
            log.debug("Worker still cannot reach the database: %s", problem)
            return
        self._outage = (since, now)
        log.warning("Worker still cannot reach the database after %.0fs: %s", now - since, problem)

    def _database_up(self) -> None:
        if self._outage is not None:
            since, _ = self._outage
            self._outage = None
            log.info("Worker reached the database again after %.0fs; claiming orders", self.clock() - since)

    def _run(self, order_id: uuid.UUID) -> None:
        try:
            self.pipeline.run(order_id, self.owner, stopping=self._stopping.is_set)
        except SQLAlchemyError as error:
            # The database went away between steps: our lease lets us (or another) resume later.
            log.error("Database error while working order %s: %s", order_id, str(error).splitlines()[0])
        except Exception:
            log.exception("Worker crashed on order %s; its lease will expire and it will resume", order_id)
        finally:
            with self._lock:
                self._in_flight.discard(order_id)
        self._refill()

    def _refill(self) -> None:
        """Claim for the slot this thread just freed. Not while the database is known to be down:
        the scheduler's tick waits for its check then, and so does this."""
        if self._outage is None:
            try:
                self.tick()
            except Exception:  # a bug: said, not lost in this thread's future; the next tick tries again
                log.exception("Claiming the next order after one ended failed")

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def shutdown(self, wait: bool = True) -> None:
        """Stop claiming; let running steps finish (their results are committed) or leave them
        to their lease."""
        self._stopping.set()
        self._threads.shutdown(wait=wait, cancel_futures=True)


def _database_problem(error: SQLAlchemyError, bind: object) -> str:
    """One line: the error's class and the driver's first line, never the URL's password.

    The driver's words do not carry the password, but a DSN echoed by some driver or pool message
    could: it is scrubbed all the same. No traceback: the class and the words say what is wrong.
    """
    said = str(getattr(error, "orig", None) or error).strip().splitlines()
    text = f"{type(error).__name__}: {said[0].strip() if said else '(no message)'}"[:300]
    url = bind.url.render_as_string(hide_password=False) if isinstance(bind, Engine) else ""
    return Redactor(url_passwords(url))(text)
