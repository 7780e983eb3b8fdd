"""The SendGrid server of tests/fakes, with a record of who sent what when, and a trap.

Each daemon sends with its own API key, so every accepted message is known by its sender. The trap
reaches the one window where a second email is allowed: once armed, the next accepted mail/send
calls `on_accepted(api_key)` after SendGrid has stored the message and before its 202 leaves, so
the sender is killed with the message out and nothing recorded.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.fakes.sendgrid_server import Request, Response, SendGridServer

MAIL_SEND = "/v3/mail/send"
_ORDER_REFERENCE = re.compile(r"Order reference: ([0-9a-f-]{36})")


@dataclass(frozen=True)
class Send:
    """One accepted download email."""

    at: float  # time.time() when SendGrid stored it
    api_key: str
    order_id: str | None  # from the "Order reference" line the download email carries
    to: str


class TappedSendGrid(SendGridServer):
    def __init__(self) -> None:
        super().__init__()
        self.sends: list[Send] = []
        self._tap_lock = threading.Lock()
        self._armed = 0
        self.on_accepted: Callable[[str], None] | None = None

    def __enter__(self) -> TappedSendGrid:
        self.start()
        return self

    def arm(self, count: int = 1) -> None:
        """Call `on_accepted` for the next `count` accepted messages."""
        with self._tap_lock:
            self._armed += count

    def disarm(self) -> int:
        with self._tap_lock:
            left, self._armed = self._armed, 0
            return left

    def handle(self, request: Request) -> Response | None:
        response = super().handle(request)
        if response is None or response.status != 202 or request.path != MAIL_SEND:
            return response
        key = request.headers.get("authorization", "").partition(" ")[2]
        self._note_send(key, request)
        with self._tap_lock:
            trap = self._armed > 0 and self.on_accepted is not None
            if trap:
                self._armed -= 1
        if trap and self.on_accepted is not None:
            self.on_accepted(key)  # the sender dies before our 202 reaches it
        return response

    def _note_send(self, key: str, request: Request) -> None:
        body = request.json()
        text = next((c["value"] for c in body.get("content", []) if c.get("type") == "text/plain"), "")
        match = _ORDER_REFERENCE.search(text)
        to = body["personalizations"][0]["to"][0]["email"]
        with self._tap_lock:
            self.sends.append(Send(time.time(), key, match.group(1) if match else None, to))

    def answers_by_status(self) -> dict[int | None, int]:
        """Answers to every request (sends and the health check's scope reads) by status, faults
        included (None: hung up)."""
        counts: dict[int | None, int] = {}
        for r in self.requests:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts
