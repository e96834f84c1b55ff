"""One request on an HTTP/1.1 connection as a stream (see duck_prefork/stream.py): its head,
its body as a channel the connection feeds, and the response framing.

The HTTP/1.1 rules for a response live here, once: the status line; Server and Date unless the
response carries its own; Content-Length when it is known (the app's, or the whole body given in
one message), else chunked, else (HTTP/1.0) the close ends the body; Connection: close when the
connection will not be kept alive (the client asked, HTTP/1.0, --keep-alive 0, the worker
drains, the response said so, or a body that ends short of its Content-Length); no body and no
framing for 1xx, 204 and 304, no body for HEAD; and 100 Continue, sent when the body is first
waited for and no response has started. The head and the first body bytes go out in one write.

Also the bytes of the responses the server sends on its own behalf (encode_error, for the
mapping in stream.error_response), and the wire format they share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

from ..logs import log
from ..stream import SERVER, ClientDisconnected, InvalidResponse, Stream, Waiter, error_response
from .request_head import read_head

if TYPE_CHECKING:
    from .connection import HttpConnection

# Reading pauses while this much request body waits for the app to read it.
BODY_HIGH_WATER: Final = 64 * 1024

STATUS_LINES: Final[dict[int, bytes]] = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))
    for status in HTTPStatus
}
SERVER_HEADER: Final = b"Server: " + SERVER + b"\r\n"
CONTINUE_RESPONSE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


def date_header(date: bytes) -> bytes:
    return b"Date: " + date + b"\r\n"


def encode_error(status: int, date_header: bytes, why: str = "",
                 extra: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """The bytes of stream.error_response(status, why) (plus `extra` headers), a complete
    response that closes the connection. For answers given before or without a stream (a
    head refused, a timeout, a busy worker, a WebSocket handshake refused)."""
    headers, body = error_response(status, why)
    return b"".join((
        status_line(status), SERVER_HEADER, date_header,
        *(b"%s: %s\r\n" % (name, value) for name, value in (*headers, *extra)
          if name != b"connection"),
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body), body,
    ))


# Response headers the codec reads rather than passes on as given (_OTHER: every other name).
# (Final: the compiled build reads them as constants, not from the module's dict.)
_CONTENT_LENGTH: Final = 0
_TRANSFER_ENCODING: Final = 1
_CONNECTION: Final = 2
_DATE: Final = 3
_SERVER: Final = 4
_OTHER: Final = 5
_RESPONSE_FIELDS: Final = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,  # dropped: the codec frames the body
    b"connection": _CONNECTION,  # dropped: the codec decides; "close" in it is honoured
    b"date": _DATE,
    b"server": _SERVER,
}
# The kind of every response header name seen so far, as the app spelled it: one lookup per
# header instead of lower() and a lookup. An app uses a few names over and over; the bound
# keeps one that makes up names per response from growing it.
_NAME_KINDS: Final[dict[bytes, int]] = dict(_RESPONSE_FIELDS)
_NAME_KINDS_MAX: Final = 4096


_SPLITTING: Final = "response header names and values must not contain CR, LF or NUL"


def _name_kind(name: bytes) -> int:
    """The kind of a name not seen before, which is checked once here."""
    if 13 in name or 10 in name or 0 in name:
        raise InvalidResponse(_SPLITTING)
    kind = _RESPONSE_FIELDS.get(name.lower(), _OTHER)
    if len(_NAME_KINDS) < _NAME_KINDS_MAX:
        _NAME_KINDS[name] = kind
    return kind


# The common methods as str, made once (decode() is a method call per request).
_METHODS: Final = {method.encode("ascii"): method for method in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")}


class Http1Stream(Stream):
    """One request on an HTTP/1.1 connection: the stream interface over HttpConnection. (The
    fields every stream has are Stream's.)"""

    __slots__ = (
        # the head
        "upgrade", "connection",
        # request framing, from the head (read_head)
        "keep_alive", "expect_continue", "content_length", "chunked",
        # the body channel
        "body_received", "body_complete", "_chunks", "_buffered", "_waiter",
        # the response
        "response_started", "status", "_length_out", "_chunked_out", "_body_out")

    @property
    def extensions(self) -> dict | None:
        """The connection's scope extensions (Stream.extensions)."""
        return self.connection.facts.extensions

    def __init__(self, connection: HttpConnection, method: bytes, target: bytes,
                 http_version: bytes, headers: list[tuple[bytes, bytes]]):
        """Raises ParseError for a head that must be refused (see request_head.py)."""
        (self.keep_alive, self.expect_continue, self.content_length, self.chunked,
         self.forwarded, self.upgrade) = read_head(method, target, http_version, headers,
                                                   connection.state.limits)
        self.connection = connection
        self.client = connection.client
        self.server = connection.server
        self.scheme = connection.facts.scheme  # "http", or what the stages learned (TLS, PROXY)
        self.method = _METHODS.get(method) or method.decode("ascii")
        self.target = target
        self.http_version = "1.1" if http_version == b"1.1" else http_version.decode("ascii")
        self.headers = headers
        self.start_time = 0.0
        self.body_received = 0
        self.body_complete = False  # the whole body has arrived
        self.body_read = False  # ... and has been read
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._waiter: Waiter | None = None  # made when the body is first waited for
        self.disconnected = False
        self.closed = False  # set by the connection when it closes: nothing more can be sent
        self.response_started = False
        self.status = 0  # the response's, once its head is sent
        self.task: asyncio.Task | None = None
        self.response_complete = False

    # --- the body channel: fed by the connection ----------------------------------------

    def feed_body(self, data: bytes) -> None:
        if self.response_complete:
            return  # the app is done with this request; the rest of its body is dropped
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > BODY_HIGH_WATER:
            self.connection.pause_reading()
        if self._waiter is not None:
            self._waiter.wake()

    def feed_end(self) -> None:
        self.body_complete = True
        if self._waiter is not None:
            self._waiter.wake()

    def feed_disconnect(self) -> None:
        self.disconnected = True  # (a client that only half-closed still reads the response)
        if self._waiter is not None:
            self._waiter.wake()

    def finish_response(self) -> None:
        self.response_complete = True
        if self._waiter is not None:
            self._waiter.wake()

    # --- the body channel: read by the ASGI side --------------------------------------------

    def read_body(self) -> bytes | None:
        if self.body_read or not (self._chunks or self.body_complete):
            return None
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        if self._buffered > BODY_HIGH_WATER:
            self.connection.resume_reading()
        self._buffered = 0
        self.body_read = self.body_complete
        return body

    def wait_body(self) -> asyncio.Future:
        if self.expect_continue:
            self.expect_continue = False  # RFC 9110 10.1.1: 100 only when the body is wanted
            if not self.response_started:
                self.connection.write(CONTINUE_RESPONSE)
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = Waiter()
        return waiter.wait(self.connection.state.loop)

    # --- the response sink -------------------------------------------------------------------

    def send_head(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes = b"",
                  more_body: bool = False) -> Awaitable[None] | None:
        connection = self.connection
        if connection.closed:
            raise ClientDisconnected("client disconnected")
        state = connection.state
        keep_alive = self.keep_alive and not state.lame_duck
        content_length = None
        # Server and Date first, as placeholders the app's own replace.
        lines = [STATUS_LINES.get(status) or status_line(status), SERVER_HEADER,
                 state.date_header]
        for name, value in headers:
            kind = _NAME_KINDS.get(name)
            if kind is None:
                kind = _name_kind(name)
            if kind != _OTHER:
                if kind == _CONTENT_LENGTH:
                    if not value.isdigit():
                        raise InvalidResponse(f"invalid Content-Length {value!r} in the "
                                              "response headers")
                    content_length = int(value)
                    continue
                if kind == _CONNECTION:
                    if value.lower().find(b"close") >= 0:
                        keep_alive = False
                    continue
                if kind == _TRANSFER_ENCODING:
                    continue
                if kind == _DATE:
                    if lines[2]:
                        lines[2] = b""
                elif lines[1]:  # _SERVER
                    lines[1] = b""
            # No CR, LF or NUL on the wire from a header (response splitting): every name in
            # _NAME_KINDS was checked once (_name_kind); the ints make each test a plain memchr.
            if 13 in value or 10 in value or 0 in value:
                raise InvalidResponse(_SPLITTING)
            lines += (name, b": ", value, b"\r\n")
        if status < 200 or status == 204 or status == 304:
            has_body = False  # no body, and no framing headers either (RFC 9110 8.6)
            content_length = None
            chunked = False
        else:
            has_body = self.method != "HEAD"
            chunked = False
            if content_length is not None:
                lines.append(b"Content-Length: %d\r\n" % content_length)
            elif not more_body and (has_body or body):
                content_length = len(body)  # the whole body is in hand: no need to chunk
                lines.append(b"Content-Length: %d\r\n" % content_length)
            elif not has_body:
                pass  # HEAD without a length: the GET's length is unknown, send none
            elif self.http_version == "1.1":
                chunked = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                keep_alive = False  # HTTP/1.0 and no length: the close ends the body
        if not keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        if has_body and body:
            size = len(body)
            if content_length is not None and size > content_length:
                raise InvalidResponse("response body longer than its Content-Length")
            if chunked:
                body = b"%x\r\n%s\r\n" % (size, body)
        else:
            size = 0
            body = b""
        self.bytes_sent = size
        self._length_out = content_length
        self._chunked_out = chunked
        self._body_out = has_body
        self.keep_alive = keep_alive
        self.response_started = True
        self.status = status
        # (connection.closed was checked above: write to the transport directly)
        if more_body:
            connection.transport.write(head + body if body else head)
            return connection.drain() if connection.write_paused else None
        if chunked:
            body += b"0\r\n\r\n"
        elif content_length is not None and size < content_length and has_body:
            self._ended_short()
        connection.transport.write(head + body if body else head)
        connection.response_complete(self.keep_alive)
        return None

    def send_body(self, body: bytes, more_body: bool) -> Awaitable[None] | None:
        connection = self.connection
        if connection.closed:
            raise ClientDisconnected("client disconnected")
        if body and self._body_out:
            size = len(body)
            sent = self.bytes_sent + size
            if self._length_out is not None and sent > self._length_out:
                raise InvalidResponse("response body longer than its Content-Length")
            self.bytes_sent = sent
            if self._chunked_out:
                body = b"%x\r\n%s\r\n" % (size, body)
        else:
            body = b""
        if more_body:
            if body:
                connection.transport.write(body)
            return connection.drain() if connection.write_paused else None
        if self._chunked_out:
            body += b"0\r\n\r\n"
        elif self._length_out is not None and self.bytes_sent < self._length_out \
                and self._body_out:
            self._ended_short()
        if body:
            connection.transport.write(body)
        connection.response_complete(self.keep_alive)
        return None

    def _ended_short(self) -> None:
        log.error("a response ended after %d of the %d bytes its Content-Length announced; "
                  "closing the connection", self.bytes_sent, self._length_out)
        self.keep_alive = False

    def release(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            self.connection.state.task_finished(task)

    def close(self) -> None:
        self.connection.close()

    def abort(self) -> None:
        self.connection.abort()
