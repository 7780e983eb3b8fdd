"""The suite's polling helper: returns the first truthy value, fails naming what it waited for."""

from __future__ import annotations

import itertools

import pytest

from tests.eventually import TimedOut, Unmet, eventually


def test_returns_the_first_truthy_value_after_running_the_step_before_each_try() -> None:
    counter = itertools.count()
    steps: list[int] = []

    value = eventually(lambda: [n for n in [len(steps)] if n >= 3], what="three steps", interval=0.001,
                       step=lambda: steps.append(next(counter)))

    assert value == [3] and steps == [0, 1, 2]


def test_on_timeout_fails_naming_what_and_the_last_value_seen() -> None:
    with pytest.raises(AssertionError) as failure:
        eventually(lambda: Unmet({"status": "failing"}), timeout=0.05, interval=0.01, what="the check to be ok")

    assert isinstance(failure.value, TimedOut) and failure.value.last == Unmet({"status": "failing"})
    message = str(failure.value)
    assert "the check to be ok" in message and "'status': 'failing'" in message


def test_a_zero_timeout_tries_once() -> None:
    tries = itertools.count(1)
    with pytest.raises(TimedOut) as failure:
        eventually(lambda: next(tries) and 0, timeout=0, what="nothing")
    assert next(tries) == 2 and failure.value.last == 0
