"""Concurrent callers of an expensive, side-effect-free read share one run of it.

A `/metrics` exposition costs milliseconds of CPU under the GIL (a few hundred samples, each
formatted in Python); sixteen scrapers arriving together would queue for sixteen renders on one
core. Here they queue for at most two: a caller never takes a result that began before it
arrived (it could miss an increment made just before its request), so it waits for the run in
progress to end and then shares the next one with every caller that arrived meanwhile. Each
answer is as fresh as its own run would have been.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalesced(Generic[T]):
    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read
        self._changed = threading.Condition()
        self._started = 0  # runs begun
        self._finished = 0  # the run `_latest` came from
        self._running = False
        self._latest: list[T] = []  # the latest result, once there is one
        self.runs = 0  # runs that returned a result (for tests and benchmarks)

    def __call__(self) -> T:
        with self._changed:
            wanted = self._started + 1  # the first run to begin after this call
            while self._running and self._finished < wanted:
                self._changed.wait()
            if self._finished >= wanted:
                return self._latest[0]
            self._running = True  # none runs, and none began since this call: this one
            self._started += 1
            run = self._started
        try:
            result = self._read()
        except BaseException:
            with self._changed:
                self._running = False  # a waiter runs it again, and meets its own error
                self._changed.notify_all()
            raise
        with self._changed:
            self._running, self._finished, self._latest = False, run, [result]
            self.runs += 1
            self._changed.notify_all()
        return result
