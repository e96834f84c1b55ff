"""One HTTP/2 stream as a stream (see duck_prefork/stream.py): its head, its body as a channel
the connection feeds, and the response as HEADERS and DATA frames.

The HTTP/2 rules for a request and a response live here, once. A request's pseudo-headers
become the head (:method, :path; :authority becomes a Host header when there is none; split
Cookie fields are joined, RFC 9113 8.2.3), held to the same limits as an HTTP/1.1 head. A
response's header names are lowercased and the connection-specific ones (Connection,
Transfer-Encoding, Keep-Alive, ...) dropped, since HTTP/2 forbids them; Server and Date are
added unless the app gave its own; no body for HEAD, 1xx, 204 and 304. The body goes out as
the client's flow-control windows allow (the connection's send(): the app's send waits for
window, and --send-timeout ends a connection whose windows stay shut); the request body's
window is reopened as the app reads (acknowledge on read_body), so a client can never have
more than a window's worth buffered here per stream. Trailers (the http.response.trailers
extension) end the stream when the response announced them.

h2 validates what it reads; what we write is ours to get right, so h2's outbound validation
and normalization are off (config in connection.py) and done here in one pass with a cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

from ..errors import ParseError
from ..stream import SERVER, ClientDisconnected, InvalidResponse, Stream, Waiter

if TYPE_CHECKING:
    from .connection import Http2Connection

_STATUS: Final[dict[int, bytes]] = {status.value: b"%d" % status.value for status in HTTPStatus}

# Response header names the stream reads or drops (every other one is passed on lowercased).
_DROP: Final = b""  # connection-specific (RFC 9113 8.2.2): never sent over HTTP/2
_CONNECTION_SPECIFIC: Final = frozenset((b"connection", b"transfer-encoding", b"keep-alive",
                                         b"proxy-connection", b"upgrade"))
# Each response header name seen so far -> its lowercase form, or _DROP; bounded as in http1.
_NAMES: Final[dict[bytes, bytes]] = {}
_NAMES_MAX: Final = 4096
_INVALID: Final = "response header names and values must not contain CR, LF or NUL"


def _name(name: bytes) -> bytes:
    """The lowercase name of a response header not seen before, or _DROP; checked once."""
    if 13 in name or 10 in name or 0 in name or not name:
        raise InvalidResponse(_INVALID)
    lowered = name.lower()
    result = _DROP if lowered in _CONNECTION_SPECIFIC else lowered
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[name] = result
    return result


def _field_name(name: bytes, value: bytes) -> bytes:
    """A response field's name as sent (lowercase), or _DROP; InvalidResponse for CR, LF or
    NUL in either (the head and the trailers alike)."""
    lowered = _NAMES.get(name)
    if lowered is None:
        lowered = _name(name)
    if 13 in value or 10 in value or 0 in value:
        raise InvalidResponse(_INVALID)
    return lowered


# The request headers that mean "the proxy step may apply" (as request_head.py notes them).
_FORWARDED: Final = frozenset((b"forwarded", b"x-forwarded-for", b"x-forwarded-proto",
                               b"x-forwarded-host"))
_METHODS: Final = {method.encode("ascii"): method for method in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")}


class Http2Stream(Stream):
    """One request on an HTTP/2 connection: the stream interface over Http2Connection."""

    __slots__ = ("connection", "stream_id", "content_length", "chunked", "body_received",
                 "body_complete",
                 "_chunks", "_unacked", "_waiter", "response_started", "ended", "no_body",
                 "window_waiter", "stall_since", "status")

    def __init__(self, connection: Http2Connection, stream_id: int,
                 headers: list[tuple[bytes, bytes]]) -> None:
        """Raises ParseError for a head that must be refused."""
        self.connection = connection
        self.stream_id = stream_id
        self.client = connection.client
        self.server = connection.server
        self.scheme = connection.facts.scheme
        self.http_version = "2"
        self.task = None
        limits = connection.state.limits
        method = path = authority = b""
        fields: list[tuple[bytes, bytes]] = []
        cookies: list[bytes] = []
        forwarded = has_host = False
        content_length = None
        field_size = limits.field_size
        for name, value in headers:
            if name[0] == 58:  # b":", a pseudo-header (h2 checked which and where)
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            if field_size and len(name) + len(value) + 2 > field_size:
                raise ParseError(431, "header field too large")
            if name == b"cookie":
                cookies.append(value)
                continue
            if name == b"host":
                has_host = True
            elif name == b"content-length":
                content_length = int(value)  # h2 checked it is a number
            elif name in _FORWARDED:
                forwarded = True
            fields.append((name, value))
        if cookies:
            fields.append((b"cookie", cookies[0] if len(cookies) == 1 else b"; ".join(cookies)))
        if authority and not has_host:
            fields.append((b"host", authority))
        if limits.fields and len(fields) > limits.fields:
            raise ParseError(431, "too many header fields")
        if limits.request_line and len(path) > limits.request_line:
            raise ParseError(414, "request target too long")
        if limits.body and content_length is not None and content_length > limits.body:
            raise ParseError(413, "request body too large")
        self.method = _METHODS.get(method) or method.decode("ascii")
        self.target = path or authority  # CONNECT has no :path
        self.headers = fields
        self.forwarded = forwarded
        self.content_length = content_length
        # A body of unknown length follows (the connection says, from END_STREAM): what an
        # HTTP/1.1 hop would send chunked (the upstream pass-through reads it).
        self.chunked = False
        self.start_time = 0.0
        self.body_received = 0
        self.body_complete = False
        self.body_read = False
        self._chunks: list[bytes] = []
        self._unacked = 0  # flow-controlled bytes received and not yet read by the app
        self._waiter: Waiter | None = None
        self.disconnected = False
        self.closed = False
        self.response_started = False
        self.response_complete = False
        self.ended = False  # END_STREAM sent (the last DATA frame or the trailers)
        self.no_body = False  # HEAD, 1xx, 204, 304: the body the app sends is dropped
        self.bytes_sent = 0
        self.status = 0  # the response's, once its head is sent (for --metrics-bind)
        self.window_waiter: Waiter | None = None  # a send waiting for the client's window
        self.stall_since: float | None = None  # ... since (no useful window opened since)

    @property
    def extensions(self) -> dict | None:
        """The connection's scope extensions: the stages' ("tls", "proxy_protocol") and
        "http.response.trailers" (Http2Connection.take_over)."""
        return self.connection.facts.extensions

    # --- the body channel: fed by the connection ------------------------------------------

    def feed_body(self, data: bytes, flow_length: int) -> None:
        self._chunks.append(data)
        self._unacked += flow_length
        if self._waiter is not None:
            self._waiter.wake()

    def feed_end(self) -> None:
        self.body_complete = True
        if self._waiter is not None:
            self._waiter.wake()

    def feed_disconnect(self) -> None:
        """The stream was reset or the connection lost: nothing more is sent or received."""
        self.disconnected = True
        self.closed = True
        self.wake()

    def wake(self) -> None:
        if self._waiter is not None:
            self._waiter.wake()
        if self.window_waiter is not None:
            self.window_waiter.wake()

    # --- the body channel: read by the ASGI side ------------------------------------------

    def read_body(self) -> bytes | None:
        if self.body_read or not (self._chunks or self.body_complete):
            return None
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        if self._unacked:
            # The app has what arrived: the client may send as much again.
            self.connection.acknowledge(self, self._unacked)
            self._unacked = 0
        self.body_read = self.body_complete
        return body

    def wait_body(self) -> asyncio.Future:
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = Waiter()
        return waiter.wait(self.connection.state.loop)

    # --- the response sink ----------------------------------------------------------------

    def send_head(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes = b"",
                  more_body: bool = False) -> Awaitable[None] | None:
        if self.closed:
            raise ClientDisconnected("client disconnected")
        state = self.connection.state
        server: tuple[bytes, bytes] | None = (b"server", SERVER)
        date: tuple[bytes, bytes] | None = (b"date", state.date)
        fields = [(b":status", _STATUS.get(status) or b"%d" % status)]
        content_length = None
        for name, value in headers:
            lowered = _field_name(name, value)
            if not lowered:
                continue  # connection-specific
            if lowered == b"content-length":
                if not value.isdigit():
                    raise InvalidResponse(f"invalid Content-Length {value!r} in the response "
                                          "headers")
                content_length = int(value)
            elif lowered == b"date":
                date = None
            elif lowered == b"server":
                server = None
            fields.append((lowered, value))
        if server is not None:
            fields.append(server)
        if date is not None:
            fields.append(date)
        no_body = status < 200 or status == 204 or status == 304 or self.method == "HEAD"
        if no_body:
            body = b""
        elif content_length is None and not more_body:
            fields.append((b"content-length", b"%d" % len(body)))
        elif content_length is not None and len(body) > content_length:
            raise InvalidResponse("response body longer than its Content-Length")
        self.no_body = no_body
        self.status = status
        self.response_started = True
        end = not more_body and not body
        self.connection.send_headers(self, fields, end)
        if end:
            return None
        return self.send_body(body, more_body)

    def send_body(self, body: bytes, more_body: bool) -> Awaitable[None] | None:
        if self.closed:
            raise ClientDisconnected("client disconnected")
        if self.no_body:
            body = b""
        elif body:
            self.bytes_sent += len(body)
        return self.connection.send_data(self, body, not more_body)

    def send_trailers(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """The response's trailers (http.response.trailers), which end the stream."""
        if self.closed:
            raise ClientDisconnected("client disconnected")
        fields = []
        for name, value in headers:
            lowered = _field_name(name, value)
            if lowered:
                fields.append((lowered, value))
        self.connection.send_headers(self, fields, True)

    def finish_response(self) -> None:
        """END_STREAM has gone out (from the connection)."""
        self.ended = True
        self.response_complete = True
        if self._waiter is not None:
            self._waiter.wake()

    def release(self) -> None:
        if self._unacked:
            # Body the app never read: the connection's window would otherwise shrink by
            # it for good, and a long connection of such streams stop taking bodies at all.
            self.connection.acknowledge(self, self._unacked)
            self._unacked = 0
        self.connection.stream_released(self)

    def close(self) -> None:
        """A response that will not be sent: end the stream (RST_STREAM)."""
        self.connection.reset(self)

    def abort(self) -> None:
        self.connection.reset(self)
