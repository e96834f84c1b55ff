"""A small RFC 8441 client for the tests: WebSockets over HTTP/2 (extended CONNECT), with h2 as
the HTTP/2 client and wsproto's Connection (no handshake of its own) as each stream's frame
layer, on a plain socket (h2c) or a TLS socket (ALPN h2). One thread, no event loop: every
wait reads what arrives until a condition holds or its deadline passes.

(h2 neither sends nor reads a frame once it has seen a GOAWAY, where RFC 9113 6.8 lets the
streams below its last stream id finish: a test of the drain speaks raw frames, h2wire.py.)"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Message, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import client_extensions_handshake
from wsproto.utilities import split_comma_header


@dataclass
class Stream:
    """What arrived on one stream: the response head, the body (an HTTP response's) or the
    WebSocket events (once accepted), the end or the reset."""

    websocket: bool = False  # opened with an extended CONNECT
    deflate: bool = False  # offering permessage-deflate
    status: int = 0
    headers: dict = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    ws: Connection | None = None  # the frame layer, once the 200 has come
    events: list = field(default_factory=list)  # wsproto events, messages reassembled
    parts: list = field(default_factory=list)  # the fragments of a message in progress
    ended: bool = False  # the server's END_STREAM
    reset: int | None = None  # the server's RST_STREAM error code
    reading: bool = True  # acknowledge DATA as it arrives (False: the window stays shut)
    unacked: int = 0


class H2WebSocketClient:
    """One HTTP/2 connection; WebSocket streams opened on it with open(), plain requests with
    get(), side by side."""

    def __init__(self, port: int, host: str = "127.0.0.1", context: ssl.SSLContext | None = None,
                 source: str | None = None, timeout: float = 10.0) -> None:
        sock = socket.create_connection((host, port), timeout=timeout,
                                        source_address=(source, 0) if source else None)
        if context is not None:
            context.set_alpn_protocols(["h2"])
            sock = context.wrap_socket(sock, server_hostname="localhost")
            assert sock.selected_alpn_protocol() == "h2"
        self.sock = sock
        self.scheme = b"https" if context is not None else b"http"
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.streams: dict[int, Stream] = {}
        self.remote_settings: dict[int, int] = {}  # as the server's SETTINGS frames said
        self.goaways: list[h2.events.ConnectionTerminated] = []
        # ("close", stream id) for each close frame, ("goaway", last stream id) for each
        # GOAWAY, in the order they arrived
        self.order: list[tuple[str, int]] = []
        self.closed = False
        self.flush()

    # --- the wire -----------------------------------------------------------------------

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def read(self, timeout: float) -> bool:
        """Read what arrives within `timeout` and handle it; False once the server closed."""
        if self.closed:
            return False
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return True
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        for event in self.h2.receive_data(data):
            self.handle(event)
        self.flush()
        return True

    def handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            for code, change in event.changed_settings.items():
                self.remote_settings[int(code)] = change.new_value
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self.streams[event.stream_id]
            stream.headers = dict(event.headers)
            stream.status = int(stream.headers[b":status"])
            if stream.websocket and 200 <= stream.status < 300:
                field = stream.headers.get(b"sec-websocket-extensions")
                accepted = split_comma_header(field) if field else []
                offered = [PerMessageDeflate()] if stream.deflate else []
                stream.ws = Connection(ConnectionType.CLIENT,
                                       client_extensions_handshake(accepted, offered))
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams[event.stream_id]
            if stream.ws is not None:
                if event.data:  # (the END_STREAM after a close comes on an empty DATA)
                    stream.ws.receive_data(event.data)
                self.gather(event.stream_id, stream)
            else:
                stream.body += event.data
            if stream.reading:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                stream.unacked += event.flow_controlled_length
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.streams[event.stream_id].reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaways.append(event)
            self.order.append(("goaway", event.last_stream_id or 0))

    def gather(self, stream_id: int, stream: Stream) -> None:
        """The frame layer's events, with the fragments of a message joined."""
        assert stream.ws is not None
        for event in stream.ws.events():
            if isinstance(event, Message):
                stream.parts.append(event.data)
                if event.message_finished:
                    data = ("" if isinstance(event, TextMessage) else b"").join(stream.parts)
                    stream.parts = []
                    stream.events.append(type(event)(data=data))
            else:
                stream.events.append(event)
                if isinstance(event, CloseConnection):
                    self.order.append(("close", stream_id))

    def wait(self, predicate: Callable[[], Any], timeout: float = 10.0,
             what: str = "the condition") -> Any:
        """Read until predicate() is truthy (returned); AssertionError at the deadline or if
        the server closes first."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            if not self.read(min(left, 1.0)):
                result = predicate()
                if result:
                    return result
                raise AssertionError(f"the server closed the connection before {what}")

    # --- WebSockets ---------------------------------------------------------------------

    def open(self, path: str = "/echo", subprotocols: tuple[str, ...] = (),
             deflate: bool = False, extra: list | None = None, end: bool = False) -> int:
        """Send an extended CONNECT (RFC 8441 4); the stream id. response() waits for the
        answer."""
        stream_id = self.h2.get_next_available_stream_id()
        headers = [(b":method", b"CONNECT"), (b":protocol", b"websocket"),
                   (b":scheme", self.scheme), (b":path", path.encode()),
                   (b":authority", b"localhost"), (b"sec-websocket-version", b"13")]
        if subprotocols:
            headers.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode()))
        if deflate:
            offer = PerMessageDeflate().offer()  # (its parameters: the name goes first)
            headers.append((b"sec-websocket-extensions", f"permessage-deflate; {offer}".encode()))
        headers += extra or []
        self.streams[stream_id] = Stream(websocket=True, deflate=deflate)
        self.h2.send_headers(stream_id, headers, end_stream=end)
        self.flush()
        return stream_id

    def response(self, stream_id: int, timeout: float = 10.0) -> Stream:
        stream = self.streams[stream_id]
        self.wait(lambda: stream.status or stream.reset is not None, timeout,
                  f"the answer on stream {stream_id}")
        return stream

    def connect(self, path: str = "/echo", **options: Any) -> int:
        """open() and wait for the 200; the stream id."""
        stream_id = self.open(path, **options)
        stream = self.response(stream_id)
        assert stream.status == 200 and stream.ws is not None, (stream.status, stream.body)
        return stream_id

    def send(self, stream_id: int, event: Event, end: bool = False) -> None:
        """A WebSocket event, as DATA frames as the server's windows allow (waiting for its
        WINDOW_UPDATEs: it opens them as its app reads)."""
        ws = self.streams[stream_id].ws
        assert ws is not None
        self.send_raw(stream_id, ws.send(event), end)

    def send_raw(self, stream_id: int, data: bytes, end: bool = False,
                 timeout: float = 30.0) -> None:
        conn = self.h2
        while data:
            window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if window <= 0:
                self.wait(lambda: conn.local_flow_control_window(stream_id) > 0, timeout,
                          "the server to open its window")
                continue
            conn.send_data(stream_id, data[:window], end_stream=end and len(data) <= window)
            data = data[window:]
            self.flush()

    def receive(self, stream_id: int, timeout: float = 10.0) -> Event:
        """The next WebSocket event (a whole message, a close, a ping...)."""
        stream = self.streams[stream_id]
        self.wait(lambda: stream.events, timeout, f"a WebSocket event on stream {stream_id}")
        return stream.events.pop(0)

    def close_code(self, stream_id: int, timeout: float = 10.0) -> int:
        """Read until the server's close frame; its code."""
        while True:
            event = self.receive(stream_id, timeout)
            if isinstance(event, CloseConnection):
                return event.code

    def reset(self, stream_id: int, code: int = 8) -> None:
        """RST_STREAM (CANCEL unless told)."""
        self.h2.reset_stream(stream_id, code)
        self.flush()

    # --- plain requests on the same connection ------------------------------------------

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        stream_id = self.h2.get_next_available_stream_id()
        self.streams[stream_id] = stream = Stream()
        self.h2.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", self.scheme),
                                         (b":path", path.encode()),
                                         (b":authority", b"localhost")], end_stream=True)
        self.flush()
        self.wait(lambda: stream.ended or stream.reset is not None, timeout,
                  f"the response to GET {path}")
        return stream.status, bytes(stream.body)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> H2WebSocketClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ENABLE_CONNECT_PROTOCOL = int(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)

__all__ = ["ENABLE_CONNECT_PROTOCOL", "BytesMessage", "CloseConnection", "H2WebSocketClient",
           "TextMessage"]
