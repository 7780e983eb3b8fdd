"""The render process pool: each render in a process of its own, under a memory cap and a time
limit, on processes started when renders come and retired when they stop coming.

Built on pebble's ProcessPool (a per-render time limit that stops the process, a dead process
reported rather than waited on), arranged so that a process that fails costs its own render and
nothing else:
- One single-process pebble pool per slot, not one pool of `processes` workers. A pool's workers
  share one channel and its lock, a POSIX semaphore that nobody releases for a process that dies
  holding it (killed while it took a photo in or sent a result out): it would stall every sibling
  and every replacement. A slot whose process failed a render is thrown away whole, channel and
  lock included, and the next render starts a fresh one.
- How the process failed decides the order's fate (`classify_death`): over the time limit, over
  the memory cap (in the render, or already taking its input in) or crashed on the input is
  `bad_input`, not retried; killed from outside (the kernel's OOM killer, an operator) is
  `resources`, retried once the memory check is green. A process is asked to answer before it is
  handed a render, so one that died idle or cannot start costs nothing: a fresh one takes it.
- Processes start on a slot's first render and are retired after `idle_seconds` without one, so an
  idle daemon holds none (each holds the renderer, about 45 MiB).
- Nothing waits without a bound: a render whose process never takes it is given up, and stopping
  a process is SIGTERM, SIGKILL 3 s later (pebble), and at most STOP_SECONDS of waiting for it.

Render processes end with the daemon however it ends: healer.render.process.end_with_parent. A
render takes the trace context of the step that asked for it (W3C traceparent) to its process,
which makes its `render` span there under the step's (healer.tracing).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TypeVar

from pebble import ProcessExpired, ProcessPool

from fulfilment.errors import ErrorClass, StepError, one_line
from fulfilment.render import PosterInputs, RenderLimits
from healer.config import DEFAULT_RENDER_MEMORY_MB, DEFAULT_RENDER_TIMEOUT_SECONDS
from healer.render.process import draw_waveform, render_to_scratch, start_render_process
from healer.tracing import carrier

log = logging.getLogger(__name__)

T = TypeVar("T")

# Renders come in bursts (a checkout rush, a retry sweep). Starting a process costs about 0.3 s of
# CPU against 0.1 to 30 s for a render: a minute keeps a burst on warm processes, and leaves an
# idle daemon with none.
IDLE_SECONDS = 60.0
# pebble times a render from the moment a process takes it. This bounds the wait before that: a
# process starts in well under a second, so one that has not taken the render by then never will.
START_SECONDS = 60.0
# pebble stops a process with SIGTERM, then SIGKILL after 3 s; only a process the kernel holds
# (uninterruptible I/O) takes longer to join. Past this, shutdown goes on without waiting for it.
STOP_SECONDS = 10.0
# How often a render waiting on its process looks whether the pool is being shut down: pebble
# leaves the futures of a stopped pool unresolved.
_POLL_SECONDS = 0.2

# Spawned, not forked: a fork of this many-threaded daemon can inherit a held lock (and deadlock),
# its signal handlers and its listening socket. A spawned process imports the daemon's main module
# again (`healer`, kept tiny for this: healer/__main__.py) and healer.render.process.
_SPAWN = multiprocessing.get_context("spawn")

# What one process sends another to stop it: the kernel's OOM killer and `docker kill` send
# SIGKILL, runtimes and operators SIGTERM, SIGINT, SIGHUP or SIGQUIT. None is the input's doing.
_STOP_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT})


class _Slot:
    """Room for one render process: its pebble pool while one may be up, and since when it waits."""

    def __init__(self) -> None:
        self.pool: ProcessPool | None = None
        self.idle_since = 0.0


class _NotTaken(Exception):
    """The slot's process did not answer before the render was handed over: it could not start,
    or it had died idle."""


class _Stopping(Exception):
    """The pool was shut down while the render waited."""


class _Unanswered(Exception):
    """The slot's process did not answer in time (pebble's time limit runs only once it has)."""


class RenderPool:
    """Renders in processes of their own, each under a memory cap, each render under a time limit.

    At most `processes` renders run at once; a caller waits for a free slot, and the time limit
    starts when its render does.
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
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.assets_dir = assets_dir
        self.scratch_dir = scratch_dir
        self.processes = processes
        self.timeout = timeout_seconds
        self.idle_seconds = idle_seconds
        self.limits = RenderLimits(max_photo_pixels=round(max_photo_megapixels * 1e6), memory_mb=memory_mb)
        self._slots = tuple(_Slot() for _ in range(processes))
        self._free = list(self._slots)  # a stack: the slot used last, whose process is warm, goes first
        self._changed = threading.Condition()  # guards the slots, _free, _closed and _retirer
        self._closed = False
        self._retirer: threading.Thread | None = None  # started with the first process

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

    def shutdown(self) -> None:
        """Stop every render process, busy or idle; a render still waiting is `resources` (retried
        later). Returns within STOP_SECONDS, whatever state the processes are in."""
        with self._changed:
            self._closed = True
            pools = [pool for pool in map(self._detach, self._slots) if pool is not None]
            retirer = self._retirer
            self._changed.notify_all()
        _stop(pools)
        if retirer is not None:
            retirer.join(STOP_SECONDS)

    # -- one render ------------------------------------------------------------------------------

    def _run(self, function: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise RuntimeError("the render pool is shut down")
        try:
            slot = self._take()
            try:
                return self._run_on(slot, function, args)
            finally:
                self._give_back(slot)
        except _Stopping:
            raise StepError(ErrorClass.RESOURCES, "render cancelled: the daemon is stopping") from None

    def _run_on(self, slot: _Slot, function: Callable[..., T], args: tuple[object, ...]) -> T:
        """Twice if need be: a process that died idle or could not start has cost the render nothing."""
        reasons = []
        for _ in range(2):
            try:
                return self._attempt(slot, function, args)
            except _NotTaken as error:
                reasons.append(str(error))
        raise StepError(
            ErrorClass.RESOURCES,
            f"no render process could take the render ({'; '.join(reasons)}): none could start, or each died idle",
        )

    def _attempt(self, slot: _Slot, function: Callable[..., T], args: tuple[object, ...]) -> T:
        pool = self._pool_of(slot)
        self._make_sure_up(slot, pool)
        try:
            future: Future[T] = pool.schedule(function, args=args, timeout=self.timeout)
        except (BrokenProcessPool, RuntimeError) as error:  # pebble saw it die since it answered
            self._discard(slot)
            raise _NotTaken(one_line(error)) from None
        try:
            return self._outcome(future, self.timeout + START_SECONDS)
        except BrokenProcessPool:
            # Up and idle a moment ago (it answered), it died before it began the render: taking
            # the render's input in (unpickling it), the one thing it did meanwhile.
            self._discard(slot)
            raise self._died_taking_input() from None
        except TimeoutError:  # pebble's time limit: it has stopped the process
            self._discard(slot)
            raise StepError(ErrorClass.BAD_INPUT, f"render took longer than {self.timeout:g} s; stopped") from None
        except ProcessExpired as death:
            self._discard(slot)
            raise classify_death(death.exitcode, self.limits.memory_mb) from None
        except _Unanswered:
            self._discard(slot)
            raise StepError(ErrorClass.RESOURCES, "render process stopped answering; stopped") from None
        except StepError as error:
            if error.error_class is ErrorClass.BAD_INPUT:
                # A process that met a hostile input is not trusted with the next order: one that
                # ran out of memory keeps its heap at the cap, and would fail the next render.
                self._discard(slot)
            raise

    def _make_sure_up(self, slot: _Slot, pool: ProcessPool) -> None:
        """Have the slot's process answer before it is handed the render (a round trip of a
        millisecond, or its start): one that died idle or cannot start is then known for what it
        is, the machine's trouble and not the render's, and the render goes to a fresh process."""
        try:
            self._outcome(pool.schedule(os.getpid), START_SECONDS)
        except (BrokenProcessPool, RuntimeError, ProcessExpired, _Unanswered) as error:
            self._discard(slot)
            raise _NotTaken(one_line(error)) from None

    def _died_taking_input(self) -> StepError:
        if self.limits.memory_mb is None:
            return StepError(ErrorClass.RESOURCES, "render process died taking in the render's input")
        return StepError(
            ErrorClass.BAD_INPUT,
            f"render process died taking in the render's input, most likely over its memory limit of "
            f"{self.limits.memory_mb} MB",
        )

    def _outcome(self, future: Future[T], limit: float) -> T:
        """The work's result (or its error), waited for without missing a shutdown, and at most
        `limit` seconds: pebble's own time limit counts only from when a process takes the work."""
        deadline = time.monotonic() + limit
        while not wait([future], timeout=_POLL_SECONDS).done:
            if self._closed:
                raise _Stopping
            if time.monotonic() > deadline:
                raise _Unanswered
        if self._closed and future.exception() is not None:
            # Stopping the pool breaks its channel and its process under the work: whatever the
            # error says, the shutdown ended it (or may have), not the input nor the machine.
            raise _Stopping
        return future.result()

    # -- slots and their processes -----------------------------------------------------------------

    def _take(self) -> _Slot:
        with self._changed:
            while not self._free and not self._closed:
                self._changed.wait()
            if self._closed:
                raise _Stopping
            return self._free.pop()

    def _give_back(self, slot: _Slot) -> None:
        with self._changed:
            slot.idle_since = time.monotonic()
            self._free.append(slot)
            if slot.pool is not None and self._retirer is None and not self._closed:
                self._retirer = threading.Thread(target=self._retire_idle, name="render-retirer", daemon=True)
                self._retirer.start()
            self._changed.notify_all()

    def _pool_of(self, slot: _Slot) -> ProcessPool:
        """The slot's pebble pool; a new one (its process starts with the first render) if it had none."""
        with self._changed:
            if self._closed:
                raise _Stopping
            if slot.pool is None:
                slot.pool = ProcessPool(
                    max_workers=1,
                    initializer=start_render_process,
                    initargs=(self.limits.memory_mb, self.limits.max_photo_pixels),
                    context=_SPAWN,
                )
            return slot.pool

    def _detach(self, slot: _Slot) -> ProcessPool | None:
        """Take the slot's pool away (under the lock): whoever detaches a pool stops it, once."""
        pool, slot.pool = slot.pool, None
        return pool

    def _discard(self, slot: _Slot) -> None:
        with self._changed:
            pool = self._detach(slot)
        if pool is not None:
            _stop([pool])

    def _retire_idle(self) -> None:
        """Stop the processes of slots that have waited `idle_seconds` for a render."""
        while True:
            with self._changed:
                if self._closed:
                    return
                now = time.monotonic()
                waiting = [slot for slot in self._free if slot.pool is not None]
                due = [slot for slot in waiting if now - slot.idle_since >= self.idle_seconds]
                if not due:
                    next_due = min((slot.idle_since + self.idle_seconds - now for slot in waiting), default=None)
                    self._changed.wait(next_due)
                    continue
                pools = [pool for pool in map(self._detach, due) if pool is not None]
            log.debug("Retiring %d idle render process(es)", len(pools))
            _stop(pools)


def classify_death(exitcode: int | None, memory_mb: int | None) -> StepError:
    """What a render process's death in the middle of a render means for the order.

    multiprocessing reports a death by signal N as exit code -N; a render process turns SIGTERM
    into exit status 15 (pebble's handler). Stopped from outside, the render tells nothing about
    its input; crashed by itself under a memory cap, allocations failing in C code is the likely
    cause, and the same input would do it again.
    """
    signum = -exitcode if exitcode is not None and exitcode < 0 else None
    how = _how_it_ended(exitcode)
    if signum in _STOP_SIGNALS or exitcode == signal.SIGTERM:
        return StepError(
            ErrorClass.RESOURCES,
            f"render process was killed from outside ({how}: the machine's OOM killer, an operator or "
            "the container runtime), not by its own limits",
        )
    if signum is None:  # it exited by itself: pebble does when its channel fails, no fault of the input
        return StepError(ErrorClass.RESOURCES, f"render process ended in the middle of the render ({how})")
    if memory_mb is not None:
        return StepError(
            ErrorClass.BAD_INPUT, f"render process died ({how}), most likely over its memory limit of {memory_mb} MB"
        )
    return StepError(ErrorClass.BAD_INPUT, f"render process crashed ({how}) on this order's input")


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is None:
        return "no exit status"
    if exitcode == signal.SIGTERM:
        return "SIGTERM"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit status {exitcode}"


def _stop(pools: Sequence[ProcessPool]) -> None:
    """Stop these pools and their processes, all at once, waiting at most STOP_SECONDS in all."""
    stoppers = [threading.Thread(target=_stop_one, args=(pool,), name="render-stop", daemon=True) for pool in pools]
    for stopper in stoppers:
        stopper.start()
    deadline = time.monotonic() + STOP_SECONDS
    for stopper in stoppers:
        stopper.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(stopper.is_alive() for stopper in stoppers)
    if stuck:
        log.warning("%d render process(es) did not stop within %g s; not waiting for them", stuck, STOP_SECONDS)


def _stop_one(pool: ProcessPool) -> None:
    pool.stop()  # type: ignore[no-untyped-call]  # pebble leaves stop() unannotated
    try:
        pool.join()
    except Exception as error:  # pebble's "unable to terminate": logged, never raised into a shutdown
        log.warning("A render process did not stop cleanly: %s", one_line(error))
