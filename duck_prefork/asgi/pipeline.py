"""The ASGI request pipeline of a worker: one `ASGI` instance serves every HTTP request.

Stages (names from the Duck framework's duck.http.core.asgi.ASGI):
  __call__ -> get_request (scope + receive) -> get_response (the app, under
  produce_final_response_failsafe) -> for each body message the app sends: send_response, which
  on the first one calls start_response -> finalize_response -> apply_middlewares_to_response.

"Response" is the response in progress: status and headers from http.response.start, then body
messages as the app sends them; nothing is buffered beyond one message. The pipeline serves a
stream (duck_prefork/stream.py: a request head, a body channel, a response sink with
backpressure, a close) and knows nothing of the wire: it checks the app's ASGI messages and
hands the response to the stream's sink, which frames it (HTTP/1.1: http1/stream.py). Also
here, once for every kind of stream: what a failing app gets (produce_final_response_failsafe,
with the response from stream.error_response) and the access log line (write_access_log, which
the WebSocket handshake's lines go through too).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final, cast
from urllib.parse import unquote_to_bytes

from ..access_log import AccessLog
from ..logs import log
from ..stream import ClientDisconnected, Stream, error_response
from .forwarded import ProxyHeaders

__all__ = ["ASGI", "ClientDisconnected", "Request", "Response", "ResponseHeaders"]

ResponseMiddleware = Callable[["Response", "Request"], None]

# The http.response.trailers extension (offered by HTTP/2 streams): a response that announced
# trailers ("trailers": True in http.response.start) is complete only with its last
# http.response.trailers message; its last body message leaves it TRAILERS_DUE.
NO_TRAILERS: Final = 0
TRAILERS_ANNOUNCED: Final = 1
TRAILERS_DUE: Final = 2


class Response:
    """The response in progress for one request: what http.response.start said (the status,
    and the headers the server-level middlewares may change), and how far it has gone."""

    __slots__ = ("status", "headers", "started", "complete", "trailers", "trailer_fields")

    def __init__(self, status: int, headers: Any, trailers: int = NO_TRAILERS) -> None:
        self.status = status
        self.headers = headers
        self.started = False  # the head has been handed to the stream
        self.complete = False
        self.trailers = trailers  # NO_TRAILERS, TRAILERS_ANNOUNCED or TRAILERS_DUE
        self.trailer_fields: list | None = None  # gathered until more_trailers is False


class Request:
    """One request as the app sees it: the scope, the receive and send callables."""

    __slots__ = ("scope", "stream", "application", "response", "pipeline")

    def __init__(self, scope: dict, stream: Stream, application: Any, pipeline: ASGI):
        self.scope = scope
        self.stream = stream
        self.application = application
        self.response: Response | None = None  # from http.response.start on
        self.pipeline = pipeline

    async def receive(self) -> dict:
        """The ASGI receive callable: the stream's body as http.request messages, then
        http.disconnect once the client has gone or the response is complete."""
        stream = self.stream
        while True:
            if stream.disconnected or stream.response_complete:
                return {"type": "http.disconnect"}
            body = stream.read_body()
            if body is not None:
                return {"type": "http.request", "body": body, "more_body": not stream.body_read}
            await stream.wait_body()

    async def send(self, message: dict) -> None:
        """The ASGI send callable: enforces the http.response.start / .body sequence."""
        kind = message["type"]
        if kind == "http.response.body":
            response = self.response
            if response is None:
                raise RuntimeError("ASGI: 'http.response.body' sent before 'http.response.start'")
            if response.complete:
                raise RuntimeError("ASGI: 'http.response.body' sent after the response was "
                                   "complete (more_body was False)")
            body = message.get("body", b"")
            if type(body) is not bytes:
                if isinstance(body, str):
                    raise TypeError("ASGI: 'http.response.body' body must be bytes, not str")
                body = bytes(body)
            more_body = message.get("more_body", False)
            if response.trailers and not more_body:
                if response.trailers == TRAILERS_DUE:
                    raise RuntimeError("ASGI: 'http.response.body' sent after the last body "
                                       "message; 'http.response.trailers' is due")
                response.trailers = TRAILERS_DUE
                more_body = True  # the trailers end the stream
            drained = self.pipeline.send_response(response, self.stream, self, body, more_body)
            if drained is not None:
                await drained
        elif kind == "http.response.start":
            if self.response is not None:
                raise RuntimeError("ASGI: 'http.response.start' sent twice")
            status = message["status"]
            if type(status) is not int or not 200 <= status <= 599:
                raise RuntimeError(f"ASGI: invalid response status {status!r}")
            if self.stream.closed:
                raise ClientDisconnected("client disconnected")
            if self.stream.http_version == "2" and message.get("trailers"):
                self.response = Response(status, message.get("headers", ()), TRAILERS_ANNOUNCED)
            else:
                self.response = Response(status, message.get("headers", ()))
        elif kind == "http.response.trailers":
            response = self.response
            if response is None or response.trailers != TRAILERS_DUE or response.complete:
                raise RuntimeError("ASGI: 'http.response.trailers' sent without 'trailers' "
                                   "announced in 'http.response.start', or before the last "
                                   "body message")
            self.pipeline.send_trailers(response, self.stream, self, message.get("headers", ()),
                                        message.get("more_trailers", False))
        else:
            raise RuntimeError(f"ASGI: unexpected message type {kind!r} for an HTTP request")


def call_application(request: Request) -> Awaitable[None]:
    """The producer of a normal response: the app's own coroutine, awaited by the failsafe."""
    return request.application(request.scope, request.receive, request.send)


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Request target -> (raw path, query string), for origin-form and absolute-form."""
    if target[:1] != b"/":
        scheme_end = target.find(b"://")
        if scheme_end > 0:  # absolute-form, as sent to proxies: drop scheme and authority
            authority_end = scheme_end + 3
            while authority_end < len(target) and target[authority_end] not in b"/?":
                authority_end += 1
            target = target[authority_end:]
            if target[:1] != b"/":
                target = b"/" + target
    raw_path, _, query = target.partition(b"?")
    return raw_path, query


# b"%" as an int: `PERCENT in data` is a plain memchr, where `b"%" in data` first tries b"%" as
# an int and builds and drops a TypeError (and data.find() parses its arguments the slow way).
PERCENT: Final = 0x25


def decode_path(raw_path: bytes) -> str:
    if PERCENT not in raw_path and raw_path.isascii():
        return raw_path.decode("ascii")
    return unquote_to_bytes(raw_path).decode("utf-8", "replace")


class ResponseHeaders:
    """The --response-header middleware: each (name, value) is added, in the order given, to
    a response that carries no header of that name (ASCII case-insensitive). The app's header
    list is never changed in place (an app may send the same list every time)."""

    __slots__ = ("headers",)

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = [(name.lower(), name, value) for name, value in headers]

    def __call__(self, response: Response, request: Request) -> None:
        headers = response.headers
        if type(headers) is not list:
            headers = response.headers = list(headers)  # any iterable: read it once only
        present = {name.lower() for name, _ in headers}
        added = [(name, value) for lowered, name, value in self.headers if lowered not in present]
        if added:
            response.headers = [*headers, *added]


class ASGI:
    """The per-request pipeline; built once per worker."""

    def __init__(self, root_path: str = "", state: dict | None = None,
                 access_log: AccessLog | None = None,
                 middlewares: Sequence[ResponseMiddleware] | None = None,
                 proxy: ProxyHeaders | None = None, clock: Callable[[], float] | None = None):
        self.root_path = root_path
        # The event loop's time (the worker's loop.time), for the access log's durations:
        # asyncio.get_running_loop(), the fallback, asks the kernel for the pid on every call.
        self.clock = clock
        self.proxy = proxy  # forwarded headers from trusted peers, or None to ignore them
        self.raw_root_path = root_path.encode("utf-8")
        self.state = {} if state is None else state  # the lifespan state
        self.access_log = access_log
        self.middlewares = middlewares or []

    def __call__(self, application: Any, stream: Stream) -> Coroutine[Any, Any, Request]:
        """Serve one request (the stream stands for the seed's client_socket, client_address
        and request_data together): returns the awaitable (the wire protocol makes it the
        request's task) that runs it and gives the request it handled. Not a coroutine itself:
        the task runs the failsafe's coroutine directly, one frame less a request."""
        request = self.get_request(stream)
        request.application = application
        return self.get_response(request)

    def get_request(self, stream: Stream) -> Request:
        """Build the ASGI scope for the stream's head; receive() reads its body channel."""
        target = stream.target
        if target[0] == 47:  # b"/": origin-form, by far the most common (split_target inline)
            raw_path, _, query_string = target.partition(b"?")
        else:
            raw_path, query_string = split_target(target)
        # (decode_path's fast path, inline)
        if raw_path.isascii() and PERCENT not in raw_path:
            path = raw_path.decode("ascii")
        else:
            path = decode_path(raw_path)
        client = stream.client
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": stream.http_version,
            "server": stream.server,
            "client": client,
            "scheme": stream.scheme,
            "method": stream.method,
            "root_path": self.root_path,
            "path": self.root_path + path,
            "raw_path": self.raw_root_path + raw_path,
            "query_string": query_string,
            "headers": stream.headers,
            "state": self.state.copy(),
        }
        extensions = stream.extensions  # made once per connection by its stages (TLS, PROXY)
        if extensions is not None:
            scope["extensions"] = extensions.copy()
        if stream.forwarded and self.proxy is not None and self.proxy.trusts(client):
            self.proxy.apply(scope)
        return Request(scope, stream, None, self)

    def get_websocket_scope(self, stream: Stream, subprotocols: list[str]) -> dict:
        """The ASGI scope of a WebSocket handshake (websocket.py runs the session): the HTTP
        scope of the same head, changed where the websocket spec differs."""
        scope = self.get_request(stream).scope
        del scope["method"]
        scope["type"] = "websocket"
        scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"  # proxy headers apply
        scope["subprotocols"] = subprotocols
        extensions = scope.setdefault("extensions", {})
        extensions.pop("http.response.trailers", None)  # (an HTTP/2 stream's: not here)
        extensions["websocket.http.response"] = {}
        return scope

    def get_response(self, request: Request) -> Coroutine[Any, Any, Request]:
        """Run the application for `request`; every failure ends in a response or a close.
        (Returns the failsafe's coroutine rather than awaiting it: one frame less a request.)"""
        return self.produce_final_response_failsafe(request, call_application)

    async def produce_final_response_failsafe(
            self, request: Request, producer: Callable[[Request], Awaitable[None]]) -> Request:
        """Run `producer`; map what goes wrong to a response or a close, and never let an error
        escape. An exception before the response started is answered 500 (send_error); after
        it started, the stream is aborted so that the client cannot take a partial response
        for a whole one. Returns `request`, and releases the stream (Stream.release)."""
        stream = request.stream
        try:
            try:
                await producer(request)
            except ClientDisconnected:
                return request  # the app noticed the client leave; nobody is left to answer
            except asyncio.CancelledError:
                response = request.response
                if response is None or not response.complete:
                    stream.abort()  # cancelled at the end of the graceful timeout
                raise
            except Exception:
                response = request.response
                complete = response is not None and response.complete
                if stream.disconnected:
                    log.debug("ASGI app raised after its client disconnected", exc_info=True)
                    if not complete:
                        stream.close()
                    return request
                if complete:
                    # e.g. a background task failing after the response: the client has it all.
                    log.exception("exception in ASGI app after the response was complete")
                    return request
                if response is not None and response.started:
                    log.exception("exception in ASGI app after the response started; "
                                  "closing the connection")
                    stream.abort()
                    return request
                log.exception("exception in ASGI app")
                self.send_error(request, 500)
                return request
            response = request.response
            if response is not None and response.complete or stream.closed:
                return request
            if stream.disconnected:
                stream.close()  # the client left and the app stopped: nobody to answer
                return request
            if response is None or not response.started:
                log.error("ASGI app returned without sending a response")
                self.send_error(request, 500)
            else:
                log.error("ASGI app returned before the response was complete; closing the "
                          "connection")
                stream.abort()
            return request
        finally:
            stream.release()

    def send_error(self, request: Request, status: int) -> None:
        """Answer `request` with the server's own response for `status` (stream.error_response),
        through the same stages as an app's response."""
        headers, body = error_response(status)
        response = request.response = Response(status, headers)
        self.send_response(response, request.stream, request, body)

    def apply_middlewares_to_response(self, response: Response, request: Request) -> None:
        """Server-level response middlewares (--response-header), last registered first."""
        for middleware in reversed(self.middlewares):
            middleware(response, request)

    def finalize_response(self, response: Response, request: Request) -> None:
        """The last touches the ASGI side gives a response before its head goes to the stream:
        the server-level middlewares. Date, Server and the framing are the wire protocol's."""
        if self.middlewares:
            self.apply_middlewares_to_response(response, request)

    def start_response(self, request: Request, response: Response | None = None,
                       body: bytes = b"", more_body: bool = False) -> Awaitable[None] | None:
        """Finalize the response and hand its head to the stream with the first body bytes (one
        write on HTTP/1.1). Returns what send_response does."""
        if response is None:  # (not taken by send_response, which passes the response)
            response = cast(Response, request.response)  # set by http.response.start
        if self.middlewares:
            self.finalize_response(response, request)
        drained = request.stream.send_head(response.status, response.headers, body, more_body)
        response.started = True
        return drained

    def send_response(self, response: Response, stream: Stream, request: Request,
                      body: bytes = b"", more_body: bool = False) -> Awaitable[None] | None:
        """Send one body message (the head too, the first time); on the last one, the response
        is complete and the access log line is written. Backpressure: when the client is behind,
        returns what to await before the app may send more (None otherwise: no coroutine is
        made for the common case)."""
        if response.started:
            drained = stream.send_body(body, more_body)
        else:
            drained = self.start_response(request, response, body, more_body)
        if more_body:
            return drained
        response.complete = True
        if self.access_log is not None:
            self.write_access_log(stream, request.scope["client"], response.status,
                                  stream.bytes_sent)
        return None

    def send_trailers(self, response: Response, stream: Stream, request: Request,
                      headers: Any, more_trailers: bool) -> None:
        """The http.response.trailers extension: the trailers (several messages are gathered
        until more_trailers is False) complete the response, as its last body message would."""
        pending = response.trailer_fields
        if pending is None:
            pending = response.trailer_fields = []
        pending.extend(headers)
        if more_trailers:
            return
        stream.send_trailers(pending)
        response.complete = True
        if self.access_log is not None:
            self.write_access_log(stream, request.scope["client"], response.status,
                                  stream.bytes_sent)

    def write_access_log(self, stream: Stream, client: tuple | None, status: int,
                         size: int) -> None:
        """The one access log path: one line per response, HTTP and WebSocket handshakes alike.
        `client` is the client as the app saw it (after trusted proxy headers)."""
        if self.access_log is not None:
            # The line is made here, written by the access log's thread (access_log.py).
            self.access_log.write(
                client, stream.method, stream.target, stream.http_version, status, size,
                self.loop_time() - stream.start_time, stream.headers)

    def loop_time(self) -> float:
        clock = self.clock
        return clock() if clock is not None else asyncio.get_running_loop().time()
