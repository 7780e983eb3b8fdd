"""The one polling helper of the suite: wait for a state instead of sleeping a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Unmet:
    """A "not yet" that keeps what the predicate saw, for the timeout message:
    `return result if result.ok else Unmet(result)`."""

    seen: Any

    def __bool__(self) -> bool:
        return False


class TimedOut(AssertionError):
    """What `eventually` raises on timeout; `last` is the last value the predicate returned."""

    def __init__(self, message: str, last: Any) -> None:
        super().__init__(message)
        self.last = last


def eventually(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,
    what: str = "the condition",
    interval: float = 0.05,
    step: Callable[[], Any] | None = None,
) -> T:
    """Call `predicate` until it returns something truthy and return that; `step`, if given, runs
    before each try (e.g. one probe of the code under test). Past `timeout` seconds, fails with an
    AssertionError (`TimedOut`) naming `what` and the last value seen. The predicate runs at least
    once, and once more at the deadline, so a slow machine is not failed between two tries."""
    deadline = time.monotonic() + timeout
    while True:
        if step is not None:
            step()
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimedOut(f"timed out after {timeout:g} s waiting for {what}; last value: {value!r}", value)
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
