"""Small stand-ins for the connection and transport, so the pipeline runs without sockets."""

from __future__ import annotations

import asyncio

from duck_prefork.http1.connection import HttpConnection, ServerState
from duck_prefork.http1.request_head import Limits
from duck_prefork.net.stages import ConnectionFacts


class FakeState(ServerState):
    """The parts of ServerState an Http1Stream reads. (A subclass, as the compiled build
    requires: duck_prefork/build.py.)"""

    def __init__(self) -> None:  # no super().__init__(): nothing else is used
        self.draining = False
        self.lame_duck = False
        self.date = b"X"
        self.date_header = b"Date: X\r\n"
        self.limits = Limits()
        self.counts = None  # no --metrics-bind
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            pass  # made outside a loop: a test that never waits


class FakeConnection(HttpConnection):
    """The parts of HttpConnection that an Http1Stream uses (and so the ASGI pipeline)."""

    def __init__(self, client: tuple | None = None) -> None:  # no super().__init__()
        self.written = bytearray()
        self.closed = False
        self.write_paused = False
        self.client = client
        self.server = ("127.0.0.1", 8000)
        self.facts = ConnectionFacts(None, self.server)  # scheme "http"
        self.transport = self  # the stream writes to the transport once it checked `closed`
        self.state = FakeState()
        self.completed: list[bool] = []  # response_complete(keep_alive) arguments
        self.aborted = False
        self.drains = 0
        self.read_paused = False
        self.pauses = 0
        self.resumes = 0

    def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None:
        self.drains += 1
        self.write_paused = False

    def response_complete(self, keep_alive: bool) -> None:
        self.completed.append(keep_alive)

    def abort(self) -> None:
        self.aborted = True
        self.closed = True

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.pauses += 1
        self.read_paused = True

    def resume_reading(self) -> None:
        self.resumes += 1
        self.read_paused = False


class FakeTransport:
    """An asyncio transport that records what HttpConnection does with it."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.reading_paused = False
        self.protocol = None  # set by set_protocol (a WebSocket taking the connection over)

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("10.0.0.1", 5555), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True
        self.closed = True

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    def take(self) -> bytes:
        """What was written since the last take()."""
        data, self.written = bytes(self.written), bytearray()
        return data


class StallingTransport(FakeTransport):
    """A FakeTransport with a write buffer and a client that reads only when told: writes pile
    up in `buffered` (unless `reading`), the protocol's pause_writing/resume_writing are called
    at the water marks as asyncio would, and connection_lost follows abort() (and close() once
    nothing is buffered)."""

    def __init__(self, high_water: int, reading: bool = False) -> None:
        super().__init__()
        self.high_water = high_water
        self.reading = reading  # the client takes everything written at once
        self.buffered = 0
        self.writing_paused = False
        self.lost = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        super().write(data)
        if not self.reading:
            self.buffered += len(data)
            if self.buffered > self.high_water and not self.writing_paused:
                self.writing_paused = True
                self.protocol.pause_writing()

    def stall(self) -> None:
        """The client stops reading."""
        self.reading = False

    def drain_some(self, size: int) -> None:
        """The client reads `size` bytes."""
        self.buffered = max(0, self.buffered - size)
        if self.writing_paused and self.buffered <= self.high_water // 2:
            self.writing_paused = False
            self.protocol.resume_writing()
        if self.closed and not self.buffered:
            self._lose()

    def close(self) -> None:
        super().close()
        if not self.buffered:
            self._lose()

    def abort(self) -> None:
        super().abort()
        self.buffered = 0
        self._lose()

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


def split_response(raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """One response -> (status line, [(name, value)], rest of the bytes)."""
    head, sep, body = bytes(raw).partition(b"\r\n\r\n")
    assert sep, f"no end of head in {bytes(raw)!r}"
    status, *lines = head.split(b"\r\n")
    headers = []
    for line in lines:
        name, colon, value = line.partition(b": ")
        assert colon, f"bad header line {line!r}"
        headers.append((name, value))
    return status, headers, body


def header_names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name.lower() for name, _ in headers]


class FakeUnixTransport(FakeTransport):
    """A FakeTransport accepted on a unix socket: no peer address, a path for the server."""

    def get_extra_info(self, name: str, default=None):
        return {"peername": "", "sockname": "/run/app.sock"}.get(name, default)


def connect(protocol, transport: FakeTransport):
    """What the event loop does with an accepted socket: `protocol` becomes the transport's
    protocol and is told connection_made. Returns the protocol."""
    transport.protocol = protocol
    protocol.connection_made(transport)
    return protocol
