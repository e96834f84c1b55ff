"""Accepted TCP sockets have TCP_NODELAY: uvloop sets it on every TCP transport, and the worker
relies on that instead of a setsockopt per connection. This pins the assumption."""

import asyncio
import socket

import pytest
import uvloop

pytestmark = pytest.mark.timeout(30)


def test_accepted_connections_have_tcp_nodelay():
    seen = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport):
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    async def main():
        server = await asyncio.get_running_loop().create_server(Probe, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()

    uvloop.run(main())
    assert seen and seen[0] != 0
