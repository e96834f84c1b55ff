"""A small scriptable HTTP/1.1 upstream on raw asyncio (uvloop): what a real server would not
send on purpose, and a trivial fast responder for the benchmark.

    python -m tests.apps.raw_upstream (--port N | --unix PATH)

prints "ready PORT" once it listens (--port 0: a free port).

By path (the request body is read by Content-Length and dropped):
  /ok...          200 "ok\\n", keep-alive (the benchmark's responder)
  /head           the raw request head as the body: what the upstream was sent
  /hop            a response full of hop-by-hop fields, chunked
  /broken         a Content-Length that is not a number
  /garbage        bytes that are not HTTP
  /bare-lf        a head with bare LF line endings
  /folded         a head with obsolete line folding
  /both-framing   both Content-Length and Transfer-Encoding
  /close          the connection closed without a response
  /reset          the connection reset without a response
  /never          no response, ever (the connection stays open)
  /flaky...       200 on a connection's first request; on a later one, closed without a
                  response (an upstream closing a keep-alive connection as it is reused)
  POST /early     413 as soon as the head is in; the body is never read (the connection stays)
  /stats          {"connections": accepted so far, "requests": served so far}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import struct

STATS = {"connections": 0, "requests": 0}


def response(status: str, body: bytes, headers: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"{headers}\r\n").encode("latin-1") + body


OK = response("200 OK", b"ok\n")
HOP = (b"HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nKeep-Alive: timeout=5\r\n"
       b"X-Secret: hidden\r\nX-Kept: yes\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\n"
       b"Upgrade: h2c\r\nServer: raw-upstream\r\nTransfer-Encoding: chunked\r\n\r\n"
       b"5\r\nhello\r\n0\r\n\r\n")


class Upstream(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""
        self.served = 0
        STATS["connections"] += 1

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end + 4]
            if head.startswith(b"POST /early"):
                # Answers at once, reads nothing more and keeps the connection open.
                self.transport.write(response("413 Content Too Large", b"too large\n"))
                self.transport.pause_reading()
                self.buffer = b""
                return
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            if not self.answer(head):
                return

    def answer(self, head: bytes) -> bool:
        path = head.split(b" ", 2)[1].decode("latin-1")
        self.served += 1
        STATS["requests"] += 1
        write = self.transport.write
        if path.startswith("/ok"):
            write(OK)
        elif path.startswith("/head"):
            write(response("200 OK", head))
        elif path.startswith("/hop"):
            write(HOP)
        elif path.startswith("/broken"):
            write(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nbody")
        elif path.startswith("/bare-lf"):
            write(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")
        elif path.startswith("/folded"):
            write(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nok")
        elif path.startswith("/both-framing"):
            write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"2\r\nok\r\n0\r\n\r\n")
        elif path.startswith("/garbage"):
            write(b"SOMETHING ELSE ENTIRELY\r\n\r\n")
        elif path.startswith("/close"):
            self.transport.close()
            return False
        elif path.startswith("/reset"):
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
            return False
        elif path.startswith("/never"):
            return False
        elif path.startswith("/flaky"):
            if self.served > 1:
                self.transport.close()
                return False
            write(OK)
        elif path.startswith("/stats"):
            write(response("200 OK", json.dumps(STATS).encode()))
        else:
            write(response("404 Not Found", b"no such path\n"))
        return True


async def main(port: int | None, unix: str | None) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    if unix:
        server = await loop.create_unix_server(Upstream, unix)
    else:
        server = await loop.create_server(Upstream, "127.0.0.1", port)
    port = server.sockets[0].getsockname()[1] if not unix else 0
    print(f"ready {port}", flush=True)
    await stop
    server.close()
    if unix and os.path.exists(unix):
        os.unlink(unix)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int)
    parser.add_argument("--unix")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.run(main(args.port, args.unix))
    except ImportError:
        asyncio.run(main(args.port, args.unix))
