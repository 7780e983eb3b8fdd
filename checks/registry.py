"""The names of the health checks, in the order people read them, and lookup of names.

The names are public interface (labels in metrics, keys in `/health`, arguments of `healer check`),
so they are written down once here, in DESIGN.md's order: the peers first, then the machine, then
the work.
"""

from __future__ import annotations

from collections.abc import Iterable

CHECK_NAMES: tuple[str, ...] = (
    "database",
    "s3",
    "sendgrid",
    "stripe",
    "disk",
    "memory",
    "assets",
    "docker",
    "orders",
    "scheduler",
)


class UnknownCheck(ValueError):
    """A name that is not a check here; the message names the valid ones."""


def display_order(names: Iterable[str]) -> list[str]:
    """`names` in CHECK_NAMES order; names it does not know (a plug-in's) follow, alphabetically."""
    known = {name: position for position, name in enumerate(CHECK_NAMES)}
    return sorted(set(names), key=lambda name: (known.get(name, len(known)), name))


def resolve(requested: Iterable[str], available: Iterable[str]) -> list[str]:
    """The requested names (all available ones when none are), validated and in display order.

    Raises UnknownCheck for a name that is not available, saying whether it is a check that is
    merely not set up here or no check at all.
    """
    offered = display_order(available)
    wanted = list(dict.fromkeys(requested))
    for name in wanted:
        if name not in offered:
            raise UnknownCheck(_unknown_message(name, offered))
    return display_order(wanted) if wanted else offered


def _unknown_message(name: str, offered: list[str]) -> str:
    valid = ", ".join(offered)
    if name in CHECK_NAMES:
        return f"check {name!r} is not set up in this daemon; available: {valid}"
    return f"unknown check {name!r}; valid checks: {valid}"
