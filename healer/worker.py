"""The completion worker: claims due orders and runs them, a few at a time.

Orders run on a small thread pool (their steps mostly wait on S3, Stripe and SendGrid); renders,
which are CPU-bound, go to a process pool of the same size so they run on every core. A render
takes the trace context of the step that asked for it (W3C traceparent) to its process, which
makes its `render` span there under the step's (healer.tracing).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import ClassVar, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from fulfilment.errors import ErrorClass, StepError
from fulfilment.pipeline import Pipeline
from fulfilment.render import PosterInputs, RenderLimits
from fulfilment.secrets import Redactor, url_passwords
from healer.config import DEFAULT_RENDER_MEMORY_MB, DEFAULT_RENDER_TIMEOUT_SECONDS
from healer.render_process import draw_waveform, render_to_scratch, start_render_process
from healer.tracing import carrier

log = logging.getLogger(__name__)

T = TypeVar("T")


def worker_identity() -> str:
    """Unique per process: leases name their owner, and a restarted daemon is a new owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# Spawned, not forked: a fork of this many-threaded daemon can inherit a held lock (and deadlock),
# its signal handlers and its listening socket. A spawned process imports the daemon's main module
# again (`healer`, kept tiny for this: healer/__main__.py) and healer.render_process.
_SPAWN = multiprocessing.get_context("spawn")


class _NotStarted(Exception):
    pass


class RenderPool:
    """Renders in worker processes, each under a memory cap, each render under a time limit.

    One single-process executor per slot, not one executor of `processes` processes: a render
    that dies or is stopped takes only its own process with it, so the failure is that render's
    alone (`bad_input`: the order is not retried) and no sibling render is broken by it. A caller
    waits for a free slot, and the time limit starts when its render does.
    """

    def __init__(
        self,
        assets_dir: Path,
        processes: int,
        scratch_dir: Path,
        timeout_seconds: float = DEFAULT_RENDER_TIMEOUT_SECONDS,
        *,
        memory_mb: int | None = DEFAULT_RENDER_MEMORY_MB,
        max_photo_megapixels: float = RenderLimits.max_photo_pixels / 1e6,
    ) -> None:
        self.assets_dir = assets_dir
        self.scratch_dir = scratch_dir
        self.processes = processes
        self.timeout = timeout_seconds
        self.limits = RenderLimits(max_photo_pixels=round(max_photo_megapixels * 1e6), memory_mb=memory_mb)
        self._lock = threading.Lock()
        self._slots: set[ProcessPoolExecutor] = set()  # every live executor, busy or free
        self._up: set[ProcessPoolExecutor] = set()  # those whose process has started
        self._free: queue.SimpleQueue[ProcessPoolExecutor] = queue.SimpleQueue()
        self._closed = False
        for _ in range(processes):
            self._free.put(self._new_slot())  # processes start on first use

    def __call__(self, inputs: PosterInputs) -> bytes:
        """The pipeline's render function: the final poster as PDF bytes."""
        return self.render(inputs)

    def render(self, inputs: PosterInputs, *, preview: bool = False) -> bytes:
        args = (self.assets_dir, inputs, self.scratch_dir, self.limits, preview, carrier())
        path = Path(self._run(render_to_scratch, *args))
        try:
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)

    def waveform_png(self, audio: bytes, audio_name: str) -> bytes:
        """A waveform image redrawn from the audio, decoded under the same limits as a render."""
        return self._run(draw_waveform, audio, audio_name, self.limits, carrier())

    def _run(self, function: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise RuntimeError("the render pool is shut down")
        slot = self._free.get()
        try:
            return self._submit(slot, function, *args).result(timeout=self.timeout)
        except _NotStarted as error:
            slot = self._replace(slot, kill=True)
            message = f"no render process to take the render ({error}): one could not start, or died idle"
            raise StepError(ErrorClass.RESOURCES, message) from None
        except FutureTimeout:
            # A running render cannot be cancelled: stop its process, or it holds a slot for ever.
            slot = self._replace(slot, kill=True)
            raise StepError(ErrorClass.BAD_INPUT, f"render took longer than {self.timeout:g} s; stopped") from None
        except BrokenProcessPool:
            slot = self._replace(slot, kill=False)
            raise self._died() from None
        except CancelledError:  # shutting down
            raise StepError(ErrorClass.RESOURCES, "render cancelled: the daemon is stopping") from None
        except StepError as error:
            if error.error_class is ErrorClass.BAD_INPUT:
                # A process that met a hostile input is not trusted with the next order: one that
                # ran out of memory keeps its heap at the cap, and would fail the next render.
                slot = self._replace(slot, kill=True)
            raise
        finally:
            self._free.put(slot)

    def _submit(self, slot: ProcessPoolExecutor, function: Callable[..., T], *args: object) -> Future[T]:
        """Hand the work to the slot's process once it is known to be up. One that cannot start (a
        broken install, a failed initializer) or died idle is the machine's fault, not the order's."""
        try:
            if slot not in self._up:
                slot.submit(os.getpid).result(timeout=self.timeout)
                with self._lock:
                    self._up.add(slot)
            return slot.submit(function, *args)
        except (BrokenProcessPool, FutureTimeout) as error:
            raise _NotStarted(type(error).__name__) from None

    def _died(self) -> StepError:
        if self.limits.memory_mb is None:  # no cap of ours: the kernel's OOM killer, most likely
            return StepError(ErrorClass.RESOURCES, "render process died (out of memory?)")
        return StepError(
            ErrorClass.BAD_INPUT,
            f"render process died, most likely over its memory limit of {self.limits.memory_mb} MB",
        )

    def _new_slot(self) -> ProcessPoolExecutor:
        slot = ProcessPoolExecutor(
            max_workers=1,
            mp_context=_SPAWN,
            initializer=start_render_process,
            initargs=(self.limits.memory_mb, self.limits.max_photo_pixels),
        )
        with self._lock:
            self._slots.add(slot)
        return slot

    def _replace(self, broken: ProcessPoolExecutor, *, kill: bool) -> ProcessPoolExecutor:
        """Swap a fresh executor in for one whose process died or must be stopped."""
        if kill:
            for process in list((getattr(broken, "_processes", None) or {}).values()):
                process.kill()
        broken.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._slots.discard(broken)
            self._up.discard(broken)
        return self._new_slot()

    def shutdown(self) -> None:
        self._closed = True
        with self._lock:
            slots = list(self._slots)
        for slot in slots:
            slot.shutdown(wait=True, cancel_futures=True)


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
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # (when the outage was first seen, when it was last logged at WARNING); None: database fine.
        # Only tick() touches it, and the scheduler never runs two ticks at once (max_instances=1).
        self._outage: tuple[float, float] | None = None

    def tick(self) -> int:
        """Claim as many due orders as there are free slots and start them; returns how many.

        A database outage is not raised: the scheduler would log a traceback per tick. It is
        logged here in one line (see `_database_down`) and the next tick simply tries again. The
        `database` check (critical) takes the daemon out of readiness meanwhile; the worker job
        keeps counting as alive, since restarting the daemon would not bring the database back.
        """
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
