"""A peer that hangs: it accepts every connection, reads the request, and then answers one byte a
second without ever finishing the status line.

A peer that only accepted and said nothing would not keep a probe hanging for long: the probe's
own socket timeout (5 s for the SendGrid check) ends the request, and the next probe comes a
minute later. Trickling keeps every read under that timeout, so the probe stays hung for as long
as the tarpit runs, past the monitor's timeout too: the monitor abandons it and reports the check
as hanging, which is the case `/readyz` must be answered through, from memory.

    with Tarpit() as tarpit:
        env["SENDGRID_API_BASE"] = tarpit.url
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress
from types import TracebackType

_STATUS_LINE = b"HTTP/1.1 200 OK"  # never followed by its CRLF, so never parsed
_TRICKLE_SECONDS = 1.0


class Tarpit:
    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(0.2)  # how soon the accept loop notices close()
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0  # connections taken in all
        self.holding = 0  # connections held open right now
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Tarpit:
        self._spawn(self._accept, "tarpit-accept")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._listener.close()

    def _spawn(self, target: object, name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self.holding += 1
            self._spawn(self._hold, f"tarpit-{self.accepted}", conn)

    def _hold(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(_TRICKLE_SECONDS)
            with suppress(TimeoutError):
                conn.recv(65536)  # the request (or as much as came at once): read, never answered
            sent = 0
            while not self._closed.wait(_TRICKLE_SECONDS):
                conn.sendall(_STATUS_LINE[sent:sent + 1] or b" ")
                sent += 1
        except OSError:
            pass  # the client gave up: nothing to hold any more
        finally:
            conn.close()
            with self._lock:
                self.holding -= 1
