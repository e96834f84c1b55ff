"""A raw HTTP/2 client on a socket for the HTTP/2 tests: frames written as given (hyperframe,
hpack), so that a test can be a well-behaved client or an attacker, and the server's frames
read back as hyperframe objects."""

from __future__ import annotations

import socket
import ssl
import time

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class H2Wire:
    """One connection: the preface and an empty SETTINGS are sent at once."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None,
                 context: ssl.SSLContext | None = None, settings: dict | None = None) -> None:
        sock = socket.create_connection((host, port), timeout=10,
                                        source_address=(source, 0) if source else None)
        if context is not None:
            context.set_alpn_protocols(["h2"])
            sock = context.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.decoded: dict[int, dict] = {}  # id(HEADERS frame) -> its fields
        self.auto_window = True  # reopen the windows as DATA arrives
        self.buffer = b""
        self.frames: list[Frame] = []
        self.closed = False
        settings_frame = SettingsFrame(0)
        settings_frame.settings.update(settings or {})
        self.send(PREFACE + settings_frame.serialize())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frames(self, *frames: Frame) -> None:
        self.send(b"".join(frame.serialize() for frame in frames))

    def reply(self, *frames: Frame) -> None:
        """What the reader answers by itself (SETTINGS ACK, WINDOW_UPDATE): best effort, the
        server may have closed already."""
        try:
            self.send_frames(*frames)
        except OSError:
            pass

    def headers(self, stream_id: int, path: str = "/", method: str = "GET", end: bool = True,
                extra: list | None = None, end_headers: bool = True) -> HeadersFrame:
        block = self.encoder.encode([(b":method", method.encode()), (b":path", path.encode()),
                                     (b":scheme", b"http"), (b":authority", b"localhost"),
                                     *(extra or [])])
        frame = HeadersFrame(stream_id, data=block)
        if end_headers:
            frame.flags.add("END_HEADERS")
        if end:
            frame.flags.add("END_STREAM")
        return frame

    def request(self, stream_id: int, path: str = "/", method: str = "GET",
                body: bytes = b"") -> None:
        frames: list[Frame] = [self.headers(stream_id, path, method, end=not body)]
        if body:
            frames.append(DataFrame(stream_id, data=body, flags=["END_STREAM"]))
        self.send_frames(*frames)

    def read(self, timeout: float = 10.0) -> bool:
        """Read what arrives within `timeout` into self.frames; False once the server closed."""
        if self.closed:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return True
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        self.buffer += data
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            if len(self.buffer) < 9 + length:
                break
            frame.parse_body(memoryview(self.buffer[9:9 + length]))
            self.buffer = self.buffer[9 + length:]
            self.frames.append(frame)
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                self.reply(SettingsFrame(0, flags=["ACK"]))
            elif isinstance(frame, HeadersFrame):  # decoded in order: HPACK keeps state
                self.decoded[id(frame)] = dict(self.decoder.decode(frame.data, raw=True))
            elif isinstance(frame, DataFrame) and self.auto_window \
                    and frame.flow_controlled_length:
                size = frame.flow_controlled_length  # read: the server may send as much again
                self.reply(WindowUpdateFrame(0, window_increment=size),
                                 WindowUpdateFrame(frame.stream_id, window_increment=size))
        return True

    def wait(self, predicate, timeout: float = 10.0, what: str = "frames"):
        """Read until predicate(frames) is truthy (returned) or the server closes (None)."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self.frames)
            if result:
                return result
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            if not self.read(min(left, 1.0)) and not predicate(self.frames):
                return None

    def goaway(self, timeout: float = 10.0) -> GoAwayFrame | None:
        """The server's GOAWAY (None: it closed without one)."""
        return self.wait(lambda frames: next(
            (f for f in frames if isinstance(f, GoAwayFrame)), None), timeout, "a GOAWAY")

    def closed_within(self, timeout: float, keep: bool = False) -> bool:
        """Read until the server closes (dropping the frames unless `keep`); True if it did
        within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.read(min(1.0, max(0.01, deadline - time.monotonic()))):
                return True
            if not keep:
                self.frames.clear()
        return False

    def ping(self, data: bytes = b"duckping", timeout: float = 10.0) -> None:
        """A PING, and wait for its ACK: the server has processed every frame sent before."""
        self.send_frames(PingFrame(0, opaque_data=data))
        self.wait(lambda frames: any(isinstance(f, PingFrame) and "ACK" in f.flags
                                     and f.opaque_data == data for f in frames),
                  timeout, "the PING's ACK")

    def response(self, stream_id: int, timeout: float = 10.0) -> tuple[int, dict, bytes, dict]:
        """(status, headers, body, trailers) of a stream, once it has ended."""
        def ended(frames):
            return any(f.stream_id == stream_id and "END_STREAM" in f.flags
                       for f in frames if isinstance(f, (HeadersFrame, DataFrame)))

        self.wait(ended, timeout, f"the response on stream {stream_id}")
        blocks = [self.decoded[id(f)] for f in self.frames
                  if isinstance(f, HeadersFrame) and f.stream_id == stream_id]
        body = b"".join(f.data for f in self.frames
                        if isinstance(f, DataFrame) and f.stream_id == stream_id)
        head = blocks[0] if blocks else {}
        return (int(head.get(b":status", b"0")), head, body,
                blocks[1] if len(blocks) > 1 else {})

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


__all__ = ["ContinuationFrame", "DataFrame", "GoAwayFrame", "H2Wire", "HeadersFrame"]
