"""bench/instr's client: a fixed number of keep-alive requests on one connection, one at a time.

Usage: python bench/instr_client.py PORT WARMUP N [POST_BYTES]

Connects to 127.0.0.1:PORT (retrying while nothing listens yet: the server may still be starting
under valgrind), then sends WARMUP + N requests strictly in turn: the whole request, then the
whole response (head and Content-Length body) read back and checked (status 200; with
POST_BYTES, the echoed body). GET / with the request line and Host header wrk sends; with
POST_BYTES, a POST of that many b"x" as bench/post4k.lua sends. Then it closes the connection
and prints "requests=... seconds=..." (seconds: the N measured requests, wall clock under
valgrind). Exits 1 with a message on a refused or failed connection, a timeout or a bad answer.
"""

import socket
import sys
import time

CONNECT_TIMEOUT = 180.0  # s: a server starting under valgrind is slow
IO_TIMEOUT = 120.0  # s: one request
CRLF = b"\r\n"


def connect(port: int) -> socket.socket:
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def exchange(sock: socket.socket, request: bytes, buffer: bytearray) -> tuple[bytes, bytes]:
    """Send REQUEST, return (head, body) of the response; BUFFER holds bytes read past it."""
    sock.sendall(request)
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        recv(sock, buffer)
    head = bytes(buffer[:end])
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise ValueError(f"unexpected Transfer-Encoding: {head!r}")
    if length is None:
        raise ValueError(f"no Content-Length: {head!r}")
    while len(buffer) < end + 4 + length:
        recv(sock, buffer)
    body = bytes(buffer[end + 4:end + 4 + length])
    del buffer[:end + 4 + length]
    return head, body


def recv(sock: socket.socket, buffer: bytearray) -> None:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the connection")
    buffer += data


def main(port: int, warmup: int, n: int, post_bytes: int | None = None) -> None:
    host = b"Host: 127.0.0.1:%d\r\n" % port
    if post_bytes is None:
        request, expected = b"GET / HTTP/1.1\r\n" + host + b"\r\n", None
    else:
        expected = b"x" * post_bytes
        request = (b"POST / HTTP/1.1\r\n" + host + b"Content-Length: %d\r\n" % post_bytes
                   + b"Content-Type: application/octet-stream\r\n\r\n" + expected)
    buffer = bytearray()
    with connect(port) as sock:
        start = time.monotonic()
        for i in range(warmup + n):
            if i == warmup:
                start = time.monotonic()
            head, body = exchange(sock, request, buffer)
            if not head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 ")):
                raise ValueError(f"request {i}: {head.partition(CRLF)[0]!r}")
            if expected is not None and body != expected:
                raise ValueError(f"request {i}: the body is not the one sent ({len(body)} bytes)")
        seconds = time.monotonic() - start
        if buffer:
            raise ValueError(f"bytes after the last response: {bytes(buffer[:80])!r}")
    print(f"requests={warmup + n} seconds={seconds:.2f}")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    try:
        main(*map(int, sys.argv[1:]))
    except (OSError, ValueError) as exc:
        sys.exit(f"bench/instr_client.py: {type(exc).__name__}: {exc}")
