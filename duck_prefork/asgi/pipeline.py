"""The ASGI request pipeline of a worker: one `ASGI` instance serves every request.

Stages (names from the Duck framework's duck.http.core.asgi.ASGI):
  __call__ -> get_request (scope + receive) -> get_response (the app, under
  produce_final_response_failsafe) -> for each body message the app sends: send_response, which
  on the first one calls start_response -> finalize_response -> apply_middlewares_to_response.

"Response" is the response in progress: status and headers from http.response.start, then body
messages as the app sends them; nothing is buffered beyond one message. This module knows
nothing of the parser: it sees a RequestData (head + body channel) and writes through the
connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from ..http1.connection import SERVER_HEADER, HttpConnection, RequestData, status_line
from ..logs import AccessLog, log
from .forwarded import ProxyHeaders

ResponseMiddleware = Callable[["Response", "Request"], None]


class ClientDisconnected(OSError):
    """Raised by send() once the client has gone (ASGI HTTP spec 2.4)."""


class Response:
    """The response in progress for one request."""

    __slots__ = ("status", "headers", "started", "complete", "chunked", "content_length",
                 "bytes_sent", "keep_alive", "has_body")

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: Any = ()
        self.started = False  # the head is on the wire
        self.complete = False
        self.chunked = False
        self.content_length: int | None = None
        self.bytes_sent = 0
        self.keep_alive = True
        self.has_body = True  # False for HEAD, 1xx, 204 and 304: body bytes are not written


class Request:
    """One request as the app sees it: the scope, the receive and send callables."""

    __slots__ = ("scope", "data", "connection", "application", "response", "pipeline")

    def __init__(self, scope: dict, data: RequestData, connection: HttpConnection,
                 application: Any, pipeline: ASGI):
        self.scope = scope
        self.data = data
        self.connection = connection
        self.application = application
        self.response = Response()
        self.pipeline = pipeline

    async def send(self, message: dict) -> None:
        """The ASGI send callable: enforces the http.response.start / .body sequence."""
        response = self.response
        kind = message["type"]
        if kind == "http.response.body":
            if response.status is None:
                raise RuntimeError("ASGI: 'http.response.body' sent before 'http.response.start'")
            if response.complete:
                raise RuntimeError("ASGI: 'http.response.body' sent after the response was "
                                   "complete (more_body was False)")
            if self.connection.closed:
                raise ClientDisconnected("client disconnected")
            body = message.get("body", b"")
            if type(body) is not bytes:
                if isinstance(body, str):
                    raise TypeError("ASGI: 'http.response.body' body must be bytes, not str")
                body = bytes(body)
            drained = self.pipeline.send_response(response, self.connection, self, False, body,
                                                  message.get("more_body", False))
            if drained is not None:
                await drained
        elif kind == "http.response.start":
            if response.status is not None:
                raise RuntimeError("ASGI: 'http.response.start' sent twice")
            status = message["status"]
            if type(status) is not int or not 200 <= status <= 599:
                raise RuntimeError(f"ASGI: invalid response status {status!r}")
            if self.connection.closed:
                raise ClientDisconnected("client disconnected")
            response.status = status
            response.headers = message.get("headers", ())
        else:
            raise RuntimeError(f"ASGI: unexpected message type {kind!r} for an HTTP request")


def call_application(request: Request) -> Awaitable[None]:
    """The producer of a normal response: the app's own coroutine, awaited by the failsafe."""
    return request.application(request.scope, request.data.receive, request.send)


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


def decode_path(raw_path: bytes) -> str:
    if b"%" not in raw_path and raw_path.isascii():
        return raw_path.decode("ascii")
    return unquote_to_bytes(raw_path).decode("utf-8", "replace")


# Response headers the server manages itself; the app's copies are read and dropped.
_FRAMING_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"connection"))


class ASGI:
    """The per-request pipeline; built once per worker."""

    def __init__(self, root_path: str = "", state: dict | None = None,
                 access_log: AccessLog | None = None,
                 middlewares: list[ResponseMiddleware] | None = None,
                 proxy: ProxyHeaders | None = None):
        self.root_path = root_path
        self.proxy = proxy  # forwarded headers from trusted peers, or None to ignore them
        self.raw_root_path = root_path.encode("utf-8")
        self.state = {} if state is None else state  # the lifespan state
        self.access_log = access_log
        self.middlewares = middlewares or []

    def __call__(self, application: Any, client_socket: HttpConnection,
                 client_address: tuple | None, request_data: RequestData) -> Awaitable[Request]:
        """Serve one request on `client_socket`: returns the awaitable (the connection makes it
        the request's task) that runs it and gives the request it handled. Not a coroutine
        itself: the task runs the failsafe's coroutine directly, one frame less a request."""
        request = self.get_request(client_socket, client_address, request_data)
        request.application = application
        return self.get_response(request)

    def get_request(self, client_socket: HttpConnection, client_address: tuple | None,
                    request_data: RequestData) -> Request:
        """Build the ASGI scope for `request_data`; the receive channel is request_data's."""
        raw_path, query_string = split_target(request_data.target)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": request_data.http_version,
            "server": client_socket.server,
            "client": client_address,
            "scheme": client_socket.facts.scheme,
            "method": request_data.method,
            "root_path": self.root_path,
            "path": self.root_path + decode_path(raw_path),
            "raw_path": self.raw_root_path + raw_path,
            "query_string": query_string,
            "headers": request_data.headers,
            "state": self.state.copy(),
        }
        if request_data.forwarded and self.proxy is not None \
                and self.proxy.trusts(client_address):
            self.proxy.apply(scope)
        return Request(scope, request_data, client_socket, None, self)

    def get_websocket_scope(self, client_socket: Any, client_address: tuple | None,
                            request_data: RequestData, subprotocols: list[str]) -> dict:
        """The ASGI scope of a WebSocket handshake (websocket.py runs the session): the HTTP
        scope of the same head, changed where the websocket spec differs."""
        scope = self.get_request(client_socket, client_address, request_data).scope
        del scope["method"]
        scope["type"] = "websocket"
        scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"  # proxy headers apply
        scope["subprotocols"] = subprotocols
        scope["extensions"] = {"websocket.http.response": {}}
        return scope

    def get_response(self, request: Request) -> Awaitable[Request]:
        """Run the application for `request`; every failure ends in a response or a close.
        (Returns the failsafe's coroutine rather than awaiting it: one frame less a request.)"""
        return self.produce_final_response_failsafe(request, call_application)

    async def produce_final_response_failsafe(
            self, request: Request, producer: Callable[[Request], Awaitable[None]]) -> Request:
        """Run `producer`; map what goes wrong to a response and never let an error escape.
        Returns `request`."""
        response = request.response
        connection = request.connection
        try:
            await producer(request)
        except ClientDisconnected:
            return  # the app noticed the client leave; nobody is left to answer
        except asyncio.CancelledError:
            if not response.complete:
                connection.abort()  # cancelled at the end of the graceful timeout
            raise
        except Exception:
            if request.data.disconnected:
                log.debug("ASGI app raised after its client disconnected", exc_info=True)
                if not response.complete:
                    connection.close()
                return request
            if response.complete:
                # e.g. a background task failing after the response: the client has it all.
                log.exception("exception in ASGI app after the response was complete")
                return request
            if response.started:
                log.exception("exception in ASGI app after the response started; "
                              "closing the connection")
                connection.abort()
                return request
            log.exception("exception in ASGI app")
            self.send_error(request, 500)
            return request
        if response.complete or connection.closed:
            return request
        if request.data.disconnected:
            connection.close()  # the client left and the app stopped: nobody to answer
            return request
        if not response.started:
            log.error("ASGI app returned without sending a response")
            self.send_error(request, 500)
        else:
            log.error("ASGI app returned before the response was complete; closing the "
                      "connection")
            connection.abort()
        return request

    def send_error(self, request: Request, status: int) -> None:
        body = b"Internal Server Error\n" if status == 500 else b"Error\n"
        response = request.response = Response()
        response.status = status
        response.headers = [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"connection", b"close")]
        self.send_response(response, request.connection, request, False, body)

    def apply_middlewares_to_response(self, response: Response, request: Request) -> None:
        """Server-level response middlewares, last registered first."""
        for middleware in reversed(self.middlewares):
            middleware(response, request)

    def finalize_response(self, response: Response, request: Request, body: bytes,
                          more_body: bool) -> bytes:
        """The head to send: the app's headers plus Date, Server and framing headers."""
        if self.middlewares:
            self.apply_middlewares_to_response(response, request)
        data = request.data
        status = response.status
        keep_alive = data.keep_alive and not request.connection.state.draining
        content_length = None
        app_lines = []
        own_date = own_server = False
        for name, value in response.headers:
            lname = name.lower()
            if lname in _FRAMING_HEADERS:
                if lname == b"content-length":
                    if not value.isdigit():
                        raise RuntimeError(f"ASGI: invalid Content-Length {value!r}")
                    content_length = int(value)
                elif lname == b"connection" and b"close" in value.lower():
                    keep_alive = False
                continue
            if lname == b"date":
                own_date = True
            elif lname == b"server":
                own_server = True
            app_lines.append(b"%s: %s\r\n" % (name, value))
        block = b"".join(app_lines)
        if block.count(b"\n") != len(app_lines) or block.count(b"\r") != len(app_lines) \
                or b"\0" in block:
            raise RuntimeError("ASGI: response header names and values must not contain CR, "
                               "LF or NUL")
        head = [status_line(status)]
        if not own_server:
            head.append(SERVER_HEADER)
        if not own_date:
            head.append(request.connection.state.date_header)
        head.append(block)
        if status < 200 or status == 204 or status == 304:
            response.has_body = False
        else:
            response.has_body = data.method != "HEAD"
            if content_length is not None:
                head.append(b"Content-Length: %d\r\n" % content_length)
            elif not more_body and (response.has_body or body):
                content_length = len(body)  # the whole body is in hand: no need to chunk
                head.append(b"Content-Length: %d\r\n" % content_length)
            elif not response.has_body:
                pass  # HEAD without a length: the GET's length is unknown, send none
            elif data.http_version == "1.1":
                response.chunked = True
                head.append(b"Transfer-Encoding: chunked\r\n")
            else:
                keep_alive = False  # HTTP/1.0 and no length: the close ends the body
        if not keep_alive:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        response.content_length = content_length
        response.keep_alive = keep_alive
        return b"".join(head)

    def start_response(self, request: Request, response: Response | None = None,
                       body: bytes = b"", more_body: bool = False) -> bytes:
        """Finalize the head; send_response puts it on the wire with the first body bytes, in
        one write."""
        return self.finalize_response(response or request.response, request, body, more_body)

    def send_response(self, response: Response, client_socket: HttpConnection,
                      request: Request | None = None, disable_logging: bool = False,
                      body: bytes = b"", more_body: bool = False) -> Awaitable[None] | None:
        """Write one body message (the head too, the first time); on the last one, complete
        the response and write the access log line. Backpressure: when the socket's buffer is
        full, returns the drain to await before the app may send more (None otherwise: no
        coroutine is made for the common case)."""
        head = b"" if response.started else self.start_response(request, response, body,
                                                               more_body)
        if response.has_body and body:
            size = len(body)
            if response.content_length is not None \
                    and response.bytes_sent + size > response.content_length:
                raise RuntimeError("ASGI: response body longer than its Content-Length")
            response.bytes_sent += size
            if response.chunked:
                body = b"%x\r\n%s\r\n" % (size, body)
        else:
            body = b""
        if not more_body:
            response.complete = True
            if response.chunked:
                body += b"0\r\n\r\n"
            elif response.has_body and response.content_length is not None \
                    and response.bytes_sent < response.content_length:
                log.error("ASGI app sent %d of the %d bytes its Content-Length announced; "
                          "closing the connection", response.bytes_sent, response.content_length)
                response.keep_alive = False
        if head:
            response.started = True
            request.data.response_started = True
            client_socket.write(head + body if body else head)
        elif body:
            client_socket.write(body)
        if more_body:
            return client_socket.drain() if client_socket.write_paused else None
        if self.access_log is not None and not disable_logging:
            self.write_access_log(request, response)
        client_socket.response_complete(response.keep_alive)
        return None

    def write_access_log(self, request: Request, response: Response) -> None:
        data = request.data
        loop_time = request.connection.state.loop.time()
        self.access_log.write(
            request.scope["client"], data.method, data.target.decode("latin-1"),
            data.http_version, response.status, response.bytes_sent, loop_time - data.start_time)
