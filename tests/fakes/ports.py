"""A port on 127.0.0.1: free for a server to listen on, or, left alone, one where nothing listens
(a peer that is down: connection refused)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """Bound, then released: nothing listens on it until someone binds it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
