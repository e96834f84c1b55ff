"""UpstreamASGI: the ASGI class with the seed's upstream stages, for a worker with --upstream.

A request whose target falls under an upstream route (routes.py) is not given to the ASGI app:
its exchange with the upstream runs as the request's task instead, through the same stages as
an app's response, so that drain, limits, timeouts, Server/Date, --response-header and the
access log apply unchanged:

  __call__ -> get_request (the scope: client, scheme and host after proxy-header trust)
  -> produce_final_response_failsafe(request, exchange): UpstreamFailure -> 502 / 504 when
     nothing was sent yet, else the client connection is aborted (never a short response that
     looks complete); any other exception is a bug and goes the app's way (500, logged)
  -> exchange: a connection from the pool (pool.py), the request head (headers.py) and body
     streamed up with backpressure, the response head
     -> 101: handle_django_connection_upgrade: the client connection becomes a byte tunnel
     -> else: django_apply_middlewares_to_response (the upstream's headers made the client's),
        then each body piece through send_response -> start_response -> finalize_response
        (the --response-header middlewares) as for an app, backpressured both ways

A request that fails on a reused keep-alive connection before any byte came back (the upstream
closed it as it was lent) is sent again, once, on a new connection when its method is
idempotent (RFC 9110 9.2.2) and its body, if any, is still in hand (REPLAY_LIMIT).

Requests under no upstream prefix go to ASGI's own stages untouched; a worker without
--upstream builds plain ASGI and never runs this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import h11

from ..asgi.pipeline import ASGI, Request, Response, call_application
from ..logs import log
from ..stream import ClientDisconnected, Stream
from .headers import request_headers, response_headers
from .pool import Pools, UpstreamConnection, UpstreamFailure
from .routes import Route, RouteTable
from .tunnel import Tunnel

# RFC 9110 9.2.2: a request with one of these methods may be sent again.
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))
# A request body is kept for a retry up to this size; past it the request is not retried.
REPLAY_LIMIT = 64 * 1024


class UpstreamRequest(Request):
    """A request that goes to an upstream: its route, the target sent there, and how long the
    upstream took (for the access log)."""

    __slots__ = ("route", "target", "upstream_time", "replay", "started")

    def __init__(self, scope: dict, stream: Stream, pipeline: UpstreamASGI, route: Route,
                 target: bytes) -> None:
        super().__init__(scope, stream, None, pipeline)
        self.route = route
        self.target = target
        self.upstream_time: float | None = None
        self.replay: list[bytes] | None = [] if stream.method in IDEMPOTENT else None
        self.started = 0.0


class UpstreamASGI(ASGI):
    """ASGI with upstream routes (--upstream): see the module docstring."""

    def __init__(self, routes: RouteTable, max_connections: int = 0, timeout: float = 60.0,
                 tunnel_timeout: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.routes = routes
        self.max_connections = max_connections
        self.timeout = timeout
        self.tunnel_timeout = tunnel_timeout
        self.pools: Pools | None = None  # made by start(), in the worker's loop

    def start(self) -> None:
        """In the worker's event loop: the pools and their once-a-second sweep."""
        self.pools = Pools(self.routes.upstreams, self.max_connections, self.timeout,
                           asyncio.get_running_loop())
        self.pools.start()

    def close(self) -> None:
        """The worker has drained: close the idle upstream connections."""
        if self.pools is not None:
            self.pools.close()

    def upgrade_hook(self, websocket: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
        """The connection's upgrade hook (ServerState.upgrade) for this worker: a request for
        an upstream route is served as HTTP (its upstream decides on the 101), any other goes
        to the WebSocket hook."""
        match = self.routes.match

        def upgrade(connection: Any, request: Any) -> bool:
            return match(request.target) is None and websocket(connection, request)

        return upgrade

    # --- the stages ------------------------------------------------------------------------

    def __call__(self, application: Any, stream: Stream) -> Coroutine[Any, Any, Request]:
        match = self.routes.match(stream.target)
        request = self.get_request(stream)
        if match is None:
            request.application = application
            return ASGI.produce_final_response_failsafe(self, request, call_application)
        route, target = match
        return self.produce_final_response_failsafe(
            UpstreamRequest(request.scope, stream, self, route, target), self.exchange)

    async def produce_final_response_failsafe(
            self, request: Request, producer: Callable[[Any], Awaitable[None]]) -> Request:
        """ASGI's failsafe, with an upstream's failures answered first: 502 (refused, reset,
        a response that breaks HTTP) or 504 (--upstream-timeout) while nothing was sent, else
        the client connection aborted. One log line each, no traceback: not a bug of ours."""
        if type(request) is not UpstreamRequest:
            return await ASGI.produce_final_response_failsafe(self, request, producer)

        async def answering_failures(request: Any) -> None:
            try:
                await producer(request)
            except UpstreamFailure as exc:
                self.upstream_failed(request, exc)

        return await ASGI.produce_final_response_failsafe(self, request, answering_failures)

    def upstream_failed(self, request: UpstreamRequest, failure: UpstreamFailure) -> None:
        stream = request.stream
        response = request.response
        if request.upstream_time is None:
            request.upstream_time = asyncio.get_running_loop().time() - request.started
        if response is not None and response.started:
            log.warning("%s, after the response started: closing the client connection "
                        "(%s %s)", failure, stream.method, request.target.decode("latin-1"))
            stream.abort()
        elif stream.closed or stream.disconnected:
            log.info("%s (the client had left)", failure)
            stream.close()
        else:
            log.warning("%s: answered %d (%s %s)", failure, failure.status, stream.method,
                        request.target.decode("latin-1"))
            request.response = None
            self.send_error(request, failure.status)

    async def exchange(self, request: UpstreamRequest) -> None:
        """Pass `request` to its upstream and the answer back (see the module docstring)."""
        assert self.pools is not None  # start() ran at the worker's start
        stream = request.stream
        route = request.route
        upstream = route.upstream
        assert upstream is not None  # match() gives upstream routes only
        pool = self.pools.by_upstream[upstream]
        loop = asyncio.get_running_loop()
        request.started = loop.time()
        upgrade = getattr(stream, "upgrade", None)  # an HTTP/1.1 request asking for a switch
        headers = self.upstream_headers(request, upstream.authority, upgrade)
        try:
            head = h11.Request(method=stream.method, target=request.target, headers=headers)
        except h11.LocalProtocolError as exc:
            raise UpstreamFailure(400, f"request cannot be passed to upstream "
                                       f"{upstream.name}: {exc}") from None
        has_body = bool(getattr(stream, "chunked", False)
                        or getattr(stream, "content_length", 0))
        fresh = False
        while True:
            connection = await pool.acquire(fresh)
            try:
                event = await self.send_request(connection, head, request, has_body)
                break
            except UpstreamFailure as failure:
                pool.release(connection)
                if fresh or not connection.reused or connection.received_any \
                        or failure.status != 502 or request.replay is None or stream.closed:
                    raise
                log.debug("%s: sending %s %s again on a new connection", failure,
                          stream.method, request.target.decode("latin-1"))
                fresh = True
            except BaseException:
                pool.release(connection)
                raise
        try:
            if type(event) is h11.InformationalResponse:  # a 101: send_request lets no other 1xx
                if upgrade is None:
                    raise UpstreamFailure(502, f"upstream {upstream.name} answered 101 to a "
                                               "request that asked for no protocol switch")
                self.handle_django_connection_upgrade(request, event, connection,
                                                      self.tunnel_timeout)
                return
            if type(event) is not h11.Response:
                raise UpstreamFailure(502, f"upstream {upstream.name}: no response")
            await self.pass_response(request, event, connection)
        finally:
            if connection.tunnel is None:
                pool.release(connection)

    def upstream_headers(self, request: UpstreamRequest, authority: bytes,
                         upgrade: bytes | None) -> list[tuple[bytes, bytes]]:
        stream = request.stream
        scope = request.scope
        host = None
        for name, value in scope["headers"]:  # (the Host a trusted proxy forwarded, if any)
            if name == b"host":
                host = value
                break
        trusted = stream.forwarded and self.proxy is not None \
            and self.proxy.trusts(stream.client)
        headers = request_headers(stream.headers, stream.client, trusted, scope["scheme"],
                                  host, authority, upgrade)
        if getattr(stream, "chunked", False):
            headers.append((b"transfer-encoding", b"chunked"))  # h11 frames it again
        return headers

    async def send_request(self, connection: UpstreamConnection, head: h11.Request,
                           request: UpstreamRequest, has_body: bool) -> Any:
        """Send the request head and body (the body as the client sends it, paced by the
        upstream) and return the response's first event that is not a 100 or 103."""
        connection.send(head)
        if has_body:
            stream = request.stream
            replay = request.replay
            complete = True
            for chunk in replay or ():  # a retry: what the first attempt read
                connection.send(h11.Data(data=chunk))
            while not stream.body_read:
                body = stream.read_body()
                if body is None:
                    if stream.disconnected:
                        raise ClientDisconnected("client disconnected")
                    await stream.wait_body()
                    continue
                if not body:
                    continue
                if replay is not None:
                    replay.append(body)
                    if sum(map(len, replay)) > REPLAY_LIMIT:
                        replay = request.replay = None
                connection.send(h11.Data(data=body))
                if connection.write_paused:
                    await connection.drain()
                if connection.closed or connection.failure is not None \
                        or connection.h11.their_state is not h11.SEND_RESPONSE:
                    complete = False  # the upstream's answer (or failure) says the rest
                    break
            if complete:
                connection.send(h11.EndOfMessage())
        else:
            connection.send(h11.EndOfMessage())
        while True:
            event = await connection.next_event()
            if type(event) is not h11.InformationalResponse or event.status_code == 101:
                return event

    async def pass_response(self, request: UpstreamRequest, event: h11.Response,
                            connection: UpstreamConnection) -> None:
        """The upstream's response to the client: the head with the first body bytes, then the
        body as it comes (what is already parsed goes out in one piece), each piece awaited
        when the client is behind. The upstream connection is back in the pool before the
        last piece is sent."""
        stream = request.stream
        response = request.response = Response(event.status_code, event.headers.raw_items())
        self.django_apply_middlewares_to_response(response, request)
        events = connection.events
        parts: list[bytes] = []
        while True:
            piece: Any = await connection.next_event()
            kind = type(piece)
            if kind is h11.Data:
                parts.append(piece.data)
                if events and type(events[0]) is not h11.ConnectionClosed:
                    continue  # more is parsed already: one piece
                body = parts[0] if len(parts) == 1 else b"".join(parts)
                parts = []
                drained = self.send_response(response, stream, request, bytes(body), True)
                if drained is not None:
                    await drained
            elif kind is h11.EndOfMessage:
                request.upstream_time = asyncio.get_running_loop().time() - request.started
                connection.pool.release(connection)  # before the client has it all
                self.send_response(response, stream, request, b"".join(parts), False)
                return
            else:
                raise UpstreamFailure(502, f"upstream {connection.pool.upstream.name}: "
                                           f"unexpected {piece!r}")

    def django_apply_middlewares_to_response(self, response: Response,
                                             request: UpstreamRequest) -> None:
        """The seed's stage for an upstream's response: its headers made the client's
        (hop-by-hop fields, the upstream's Server and Date dropped: headers.py). The
        server-level middlewares (--response-header) then apply in finalize_response, as for
        every app response."""
        response.headers = response_headers(response.headers)

    def handle_django_connection_upgrade(self, upgrade_request: UpstreamRequest,
                                         upgrade_response: h11.InformationalResponse,
                                         connection: UpstreamConnection,
                                         protocol_receive_timeout: float = 10.0,
                                         protocol_receive_buffer: int = 64 * 1024) -> None:
        """The seed's stage for an upstream's 101: the 101 goes to the client (the upstream's
        headers, hop-by-hop ones dropped but Upgrade, with the server's Server and Date; no
        --response-header, as for WebSocket handshakes), and the client connection and the
        upstream connection become the two ends of a byte tunnel (tunnel.py), idle for at most
        `protocol_receive_timeout` seconds, with at most about `protocol_receive_buffer`
        bytes waiting each way."""
        stream: Any = upgrade_request.stream  # an Http1Stream: a 101 is HTTP/1.1's
        http = stream.connection
        if http.closed:
            raise ClientDisconnected("client disconnected")
        headers = response_headers(upgrade_response.headers.raw_items(), keep_upgrade=True)
        state = http.state
        lines = [b"HTTP/1.1 101 Switching Protocols\r\n"]
        names = {name for name, _ in headers}
        if b"server" not in names:
            lines.append(b"Server: duck-prefork\r\n")
        lines.append(state.date_header)
        lines += [b"%s: %s\r\n" % (name, value) for name, value in headers]
        lines.append(b"\r\n")
        upstream_data = bytes(connection.h11.trailing_data[0])
        client_data = http.parser.take_upgrade_data()
        tunnel = Tunnel(state, connection, protocol_receive_timeout, protocol_receive_buffer,
                        upgrade_request.route.upstream.name)  # type: ignore[union-attr]
        connection.tunnel = tunnel
        read_paused = http.hand_over()
        http.transport.write(b"".join(lines))
        tunnel.switch(http.transport, http.facts, client_data, upstream_data, read_paused,
                      http.write_paused)
        response = upgrade_request.response = Response(101, headers)
        response.started = response.complete = True
        upgrade_request.upstream_time = asyncio.get_running_loop().time() \
            - upgrade_request.started
        self.log_upstream(upgrade_request, stream, 101, 0)

    # --- the response's last piece, and its access log line -----------------------------------

    def send_response(self, response: Response, stream: Stream, request: Request,
                      body: bytes = b"", more_body: bool = False) -> Awaitable[None] | None:
        """ASGI's, except that the access log line of an upstream's response names the
        upstream and the time it took."""
        if more_body or type(request) is not UpstreamRequest:
            return ASGI.send_response(self, response, stream, request, body, more_body)
        if response.started:
            stream.send_body(body, False)
        else:
            self.start_response(request, response, body, False)
        response.complete = True
        if self.access_log is not None:
            self.log_upstream(request, stream, response.status, stream.bytes_sent)
        return None

    def log_upstream(self, request: UpstreamRequest, stream: Stream, status: int,
                     size: int) -> None:
        if self.access_log is None:
            return
        upstream = request.route.upstream
        taken = request.upstream_time
        extra = f" upstream={upstream.name if upstream else '-'}" \
                f" upstream_time={taken:.6f}" if taken is not None else \
                f" upstream={upstream.name if upstream else '-'} upstream_time=-"
        self.access_log.write(
            request.scope["client"], stream.method, stream.target.decode("latin-1"),
            stream.http_version, status, size,
            asyncio.get_running_loop().time() - stream.start_time, extra)

