"""One call in flight per key, and its answer reused for a few seconds.

A customer who clicks "complete" sixty times, or sixty customers' browsers retrying at once, must
not become sixty blocking Stripe requests: callers for the same key wait for the one call in
flight and share its answer (a value or an exception), and for `seconds` after it the answer is
reused without asking again. Different keys never wait for each other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class _Answer(Generic[T]):
    at: float
    value: T | None
    error: BaseException | None


class Coalescer(Generic[T]):
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._guard = threading.Lock()  # guards the two dicts below; never held during a call
        self._answers: dict[Hashable, _Answer[T]] = {}
        self._locks: dict[Hashable, tuple[threading.Lock, list[int]]] = {}

    def call(self, key: Hashable, fn: Callable[[], T]) -> T:
        with self._exclusive(key):
            answer = self._recent(key)
            if answer is None:
                try:
                    answer = _Answer(self.clock(), fn(), None)
                except Exception as error:  # shared with the callers waiting, then re-raised
                    answer = _Answer(self.clock(), None, error)
                self._store(key, answer)
        if answer.error is not None:
            raise answer.error
        return answer.value  # type: ignore[return-value]

    def _recent(self, key: Hashable) -> _Answer[T] | None:
        with self._guard:
            answer = self._answers.get(key)
        if answer is None or self.clock() - answer.at >= self.seconds:
            return None
        return answer

    def _store(self, key: Hashable, answer: _Answer[T]) -> None:
        with self._guard:
            self._answers[key] = answer
            cutoff = self.clock() - self.seconds
            for stale in [k for k, a in self._answers.items() if a.at < cutoff]:  # keeps memory bounded
                del self._answers[stale]

    @contextmanager
    def _exclusive(self, key: Hashable) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._locks[key]
