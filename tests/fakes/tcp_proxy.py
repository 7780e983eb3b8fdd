"""A TCP proxy on 127.0.0.1 that can be cut and restored: an outage of one peer, as the daemon under
test sees it, while the peer itself (the shared PostgreSQL server, moto, the SendGrid server) keeps
serving every other test.

    proxy = TcpProxy(5432).start()    # or the `tcp_proxy` fixture: tcp_proxy(5432)
    url = proxy.replace_port("postgresql://postgres@127.0.0.1:5432/shop")
    proxy.cut()                       # open connections closed, new ones refused: the peer is down
    proxy.restore()                   # listening again, on the same port
    proxy.stop()

It moves bytes and nothing else, so it works for any protocol; tests/fakes/s3_proxy.py is the
HTTP-aware one that answers with S3's own errors.
"""

from __future__ import annotations

import selectors
import socket
import threading
from contextlib import suppress
from urllib.parse import urlsplit, urlunsplit

_ACCEPT_POLL_SECONDS = 0.05  # how soon the accept loop notices a cut


class TcpProxy:
    """Forwards every connection on 127.0.0.1:`port` to `upstream_host`:`upstream_port`."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0  # chosen when started, kept across cuts
        self.accepted = 0  # connections taken in all
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener: _Listener | None = None

    def start(self) -> TcpProxy:
        self._listen()
        return self

    def stop(self) -> None:
        self.cut()

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def cut(self) -> None:
        """Stop listening (a new connection is refused) and close every open one (the next read on
        it finds the connection closed), as when the peer's server goes down."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            # shutdown, not close: the pumping thread is selecting on it, and closes it itself.
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        if self._listener is None:
            self._listen()

    def replace_port(self, url: str) -> str:
        """`url` (any scheme) with its host and port replaced by this proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _listen(self) -> None:
        self._listener = _Listener(self, self.port)
        self.port = self._listener.port

    def forward(self, client: socket.socket) -> None:
        """Connect `client` to the upstream, and pump between them on a thread of their own."""
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()  # the peer itself is down: so is the path through us
            return
        with self._lock:
            self.accepted += 1
            self._connections.update((client, upstream))
        threading.Thread(target=self._pump, args=(client, upstream), name="tcp-proxy-pump", daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes (or the proxy is cut), then close both."""
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            for sock in peer:
                sock.setblocking(True)
                selector.register(sock, selectors.EVENT_READ)
            try:
                while True:
                    for key, _ in selector.select():
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        data = sock.recv(65536)
                        if not data:
                            return
                        peer[sock].sendall(data)
            except OSError:
                return
            finally:
                with self._lock:
                    self._connections.difference_update(peer)
                for sock in peer:
                    sock.close()


class _Listener:
    """One listening socket and its accept loop: made on start and on each restore."""

    def __init__(self, proxy: TcpProxy, port: int) -> None:
        self._proxy = proxy
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The same port again right after a cut, whatever the closed connections left in TIME_WAIT.
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self._socket.listen(64)
        self._socket.settimeout(_ACCEPT_POLL_SECONDS)
        self.port = int(self._socket.getsockname()[1])
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy-accept", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._proxy.forward(client)

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=5)
        self._socket.close()
