"""The daemon's listening sockets: connections accepted on them do not wait on Nagle, and are
served on uvloop's event loop with httptools' parser."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
from pathlib import Path

import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from healer.config import Settings
from healer.daemon import Daemon, bind_listener
from tests.eventually import eventually
from tests.fakes.ports import free_port


def test_connections_accepted_on_the_daemons_sockets_have_tcp_nodelay() -> None:
    # A keep-alive client (Prometheus) otherwise waits out its delayed ACK on every answer
    # written in two parts (headers, then body).
    port = free_port()
    [listening] = bind_listener("HEALER_OPS_HOST", "127.0.0.1", "HEALER_OPS_PORT", port)

    async def accepted_nodelay() -> int:
        flags: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            flags.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connection, sock=listening)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                return await asyncio.wait_for(flags, 10)
            finally:
                writer.close()

    try:
        assert asyncio.run(accepted_nodelay()) != 0
    finally:
        listening.close()


def test_the_daemon_serves_its_listeners_on_uvloop_with_httptools(tmp_path: Path) -> None:
    # Both are dependencies: a probe's answer costs a fraction of the CPU on them. Seen on the
    # running daemon itself, whose loop is its own (not the one uvicorn's `run` would make).
    settings = Settings.from_env({"HEALER_DATA_DIR": str(tmp_path), "HEALER_HTTP_PORT": str(free_port()),
                                  "HEALER_OPS_PORT": str(free_port())})
    daemon = Daemon(settings, demo=True)
    serving = threading.Thread(target=daemon.serve, name="daemon")
    serving.start()
    try:
        eventually(lambda: len(daemon.servers) == 2 and all(server.started for server in daemon.servers),
                   timeout=30, what="both listeners to start")
        operator = daemon.servers[1]
        connection = http.client.HTTPConnection("127.0.0.1", settings.ops_port, timeout=10)
        try:
            connection.request("GET", "/livez")  # kept open: the server holds its connection
            assert connection.getresponse().read() == b"ok"
            [answering] = operator.server_state.connections
            accepted = answering.transport.get_extra_info("socket")

            assert type(operator.servers[0].get_loop()) is uvloop.Loop
            assert type(answering) is HttpToolsProtocol
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0  # as on asyncio's loop
        finally:
            connection.close()
    finally:
        daemon.stop()
        serving.join(timeout=60)
    assert not serving.is_alive()
