"""The stream interface: one request and its response, between a wire protocol and the ASGI side.

A wire protocol (http1/ today; http2/ and the upstream pass-through later) turns bytes into
streams; the ASGI adapters (asgi/) serve streams and never see the wire's bytes. Both import
this module, and neither imports the other. What a stream offers the ASGI side (`Stream`):

  head      method, target, http_version, headers, client, server, scheme, forwarded,
            start_time: the request as parsed, nothing of its framing
  body      read_body() and wait_body(): the request body as a channel (bytes as they come,
            then the end); the wire protocol feeds it and paces the client (HTTP/1.1: pausing
            the socket; 100 Continue when the body is first waited for)
  sink      send_head(status, headers, body, more_body), then send_body(body, more_body): the
            response, each call returning None or, when the client is behind, an awaitable to
            wait on before sending more (backpressure, and no coroutine made when not needed).
            The wire protocol owns the framing (HTTP/1.1: status line, Server and Date,
            Content-Length or chunked, Connection: close, no body for HEAD/1xx/204/304);
            more_body=False completes the response and the stream
  close     close() once what was sent has gone, abort() at once; `closed` (nothing more can be
            sent) and `disconnected` (the client has gone) flags

The hot path is direct method calls on the concrete stream (http1.stream.Http1Stream): no event
objects, no per-message allocation beyond what ASGI itself asks for. `Stream` is the base class
every kind of stream derives from, with its fields declared once: in the compiled build
(build.py) the ASGI side then reads them and calls the methods directly, not by name lookup.

Also here, because every kind of stream shares them: the server's own response headers (Server,
and the Date value a worker refreshes once a second), the response the server gives on its own
behalf for an error status (error_response: one mapping for the HTTP/1.1 refusals, the 500 of a
failing app, and the WebSocket handshake's refusals), the exception a sink raises once the
client has gone, and Waiter, the one way a coroutine here waits to be woken (a body that has
not arrived, a WebSocket message, a transport's drain).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final, Protocol

from .errors import ClientDisconnected, InvalidResponse

__all__ = ["SERVER", "ClientDisconnected", "InvalidResponse", "Stream", "StreamHandler",
           "Waiter", "error_response", "http_date"]

# The Server header's value on every response that does not carry its own.
SERVER: Final = b"duck-prefork"

Headers = Iterable[tuple[bytes, bytes]]


def http_date() -> bytes:
    """The Date header's value for now (RFC 9110 5.6.7 IMF-fixdate); a worker computes it once a
    second (ServerState.tick) and every response of that second uses it."""
    return formatdate(usegmt=True).encode("ascii")


def error_response(status: int, why: str = "") -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The response the server sends on its own behalf with `status` (a request it refuses, an
    app that failed, a handshake it will not take): its headers and body. The wire protocol adds
    Server, Date and the framing; the connection is closed after it (the `connection: close`
    here says so to every wire protocol that has the notion)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = f"{phrase}: {why}\n" if why else f"{phrase}\n"
    return ([(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")],
            body.encode("utf-8", "replace"))


class Waiter:
    """The one way a coroutine waits to be woken here: `await waiter.wait(loop)`, woken by
    `waiter.wake()` from a protocol callback. One coroutine at a time; a wake with nobody
    waiting is not remembered, so the waiter re-checks its condition after every wake. No
    timer is armed: the worker's once-a-second sweep enforces the timeouts."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future | None = None

    def wait(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """A future to await until the next wake() (returned, not awaited here: one frame less
        for the waiter)."""
        self._future = future = loop.create_future()
        return future

    def wake(self) -> None:
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)


class Stream:
    """What a wire protocol offers the ASGI side for one request (see the module docstring): the
    base of each kind of stream, which sets every field and implements every method."""

    __slots__ = ("method", "target", "http_version", "headers", "client", "server", "scheme",
                 "forwarded", "start_time", "closed", "disconnected", "response_complete",
                 "bytes_sent", "body_read", "task")

    method: str
    target: bytes  # as sent: origin-form, absolute-form, authority-form or "*"
    http_version: str  # "1.0", "1.1", later "2"
    headers: list[tuple[bytes, bytes]]  # lowercase names, as received
    client: tuple | None
    server: tuple | None
    scheme: str  # "http", or what the connection's stages learned ("https" over TLS)
    forwarded: bool  # the head carries Forwarded / X-Forwarded-* (for the proxy step)
    start_time: float  # loop time the head arrived (when the access log wants it)
    closed: bool  # nothing more can be sent (the connection closed, or the stream was ended)
    disconnected: bool  # the client has gone
    response_complete: bool  # the response has been sent in full
    bytes_sent: int  # response body bytes sent (as framed for the client: none for HEAD)
    body_read: bool  # the last of the body has been returned by read_body()
    task: asyncio.Task | None  # the task serving it (ServerState.start_task), until release()

    @property
    def extensions(self) -> dict | None:
        """The scope["extensions"] entries the connection's stages made ("tls" over TLS,
        "proxy_protocol" after a PROXY header), made once per connection and copied into each
        scope; None on a connection with no stage."""
        raise NotImplementedError

    def read_body(self) -> bytes | None:
        """The body received since the last call (b"" at the end of an empty one), or None
        when nothing is waiting (wait_body) or the whole body has been read (body_read)."""
        raise NotImplementedError

    def wait_body(self) -> Awaitable[None]:
        """Awaitable until more of the body, its end or a disconnect arrives (or the response
        completes). The wire protocol may tell the client to go on sending (100 Continue)."""
        raise NotImplementedError

    def send_head(self, status: int, headers: Headers, body: bytes = b"",
                  more_body: bool = False) -> Awaitable[None] | None:
        """Send the response head with the first body bytes. Raises ClientDisconnected once
        the client has gone, InvalidResponse for what cannot be sent."""
        raise NotImplementedError

    def send_body(self, body: bytes, more_body: bool) -> Awaitable[None] | None:
        """Send more of the body; more_body=False completes the response."""
        raise NotImplementedError

    def send_trailers(self, headers: Headers) -> None:
        """Send the response's trailers, which complete it (http.response.trailers; offered
        in the scope only by the streams that implement it: HTTP/2's)."""
        raise NotImplementedError

    def release(self) -> None:
        """The ASGI side is done with the stream: the coroutine serving it is returning (the
        wire protocol's bookkeeping: HTTP/1.1 counts the request out of those the drain waits
        for). Called once, last."""

    def close(self) -> None:
        """End the stream once what was sent has gone (a response that will not be sent)."""
        raise NotImplementedError

    def abort(self) -> None:
        """End the stream at once: the client must not take a partial response for whole."""
        raise NotImplementedError


class StreamHandler(Protocol):
    """The ASGI side as a wire protocol sees it (asgi.pipeline.ASGI): a typing.Protocol, so
    that a wire protocol needs no import of asgi/."""

    def __call__(self, application: Any, stream: Stream) -> Coroutine[Any, Any, Any]:
        """The coroutine that serves `stream` with `application` (run as the request's task)."""

    def write_access_log(self, stream: Stream, client: tuple | None, status: int,
                         size: int) -> None:
        """The access log line of a response (also of a WebSocket handshake's answer)."""

    def get_websocket_scope(self, stream: Stream, subprotocols: list[str]) -> dict:
        """The ASGI scope of a WebSocket handshake."""
