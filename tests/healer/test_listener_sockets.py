"""The daemon's listening sockets: connections accepted on them do not wait on Nagle."""

from __future__ import annotations

import asyncio
import socket

from healer.daemon import bind_listener
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
