"""The demo's own listening socket: connections it accepts are not delayed by Nagle's algorithm."""

from __future__ import annotations

import asyncio
import socket

import pytest

from demo.main import _listen


@pytest.mark.anyio
async def test_connections_the_demo_accepts_send_at_once() -> None:
    """asyncio sets ``TCP_NODELAY`` on accepted connections only for a socket made with ``IPPROTO_TCP``; without it
    every response after the first on a keep-alive connection waited for the client's delayed ACK (~40 ms)."""
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_connection(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    listener = _listen("127.0.0.1", 0)
    server = await asyncio.start_server(on_connection, sock=listener)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        assert await asyncio.wait_for(accepted, 10) != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
