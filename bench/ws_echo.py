"""WebSocket echo load: N connections, each sends a 64-byte binary message and waits for its
echo before sending the next, for D seconds; prints messages per second (echoes received).

    python bench/ws_echo.py PORT [CONNECTIONS] [SECONDS] [SIZE]

The client is a bare asyncio protocol with one pre-built masked frame (a client must mask;
the mask need not change for a benchmark), so it costs far less than the servers it drives:
what is measured is the server. Run it pinned to the other core (taskset -c 0).
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time

import uvloop


def masked_binary_frame(payload: bytes) -> bytes:
    assert len(payload) < 126
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x82, 0x80 | len(payload))) + mask + body


class EchoClient(asyncio.Protocol):
    def __init__(self, frame: bytes, reply_size: int, done: asyncio.Future):
        self.frame = frame
        self.reply_size = reply_size  # an unmasked server frame: 2 header bytes + payload
        self.done = done
        self.buffered = 0
        self.handshaken = False
        self.head = b""
        self.echoes = 0
        self.running = True

    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16))
        transport.write(b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                        b"\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def data_received(self, data):
        if not self.handshaken:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                raise SystemExit(f"handshake refused: {self.head[:80]!r}")
            self.handshaken = True
            data = self.head[end + 4:]
            self.transport.write(self.frame)
            if not data:
                return
        self.buffered += len(data)
        while self.buffered >= self.reply_size:
            self.buffered -= self.reply_size
            self.echoes += 1
            if self.running:
                self.transport.write(self.frame)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


async def main(port: int, connections: int, seconds: float, size: int) -> None:
    loop = asyncio.get_running_loop()
    frame = masked_binary_frame(b"x" * size)
    clients = []
    for _ in range(connections):
        done = loop.create_future()
        _, client = await loop.create_connection(
            lambda done=done: EchoClient(frame, 2 + size, done), "127.0.0.1", port)
        clients.append(client)
    while not all(client.handshaken for client in clients):
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.0)  # warm-up
    start_count = sum(client.echoes for client in clients)
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    count = sum(client.echoes for client in clients) - start_count
    for client in clients:
        client.running = False
        client.transport.close()
    print(f"{count / elapsed:.0f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    uvloop.run(main(int(args[0]), int(args[1]) if len(args) > 1 else 1,
                    float(args[2]) if len(args) > 2 else 5.0,
                    int(args[3]) if len(args) > 3 else 64))
