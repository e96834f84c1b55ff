"""UpstreamASGI: the worker's request handler with --upstream: the ASGI pipeline, and the
seed's upstream stages around it.

It stands where the ASGI pipeline stands for the wire protocol (a StreamHandler) and holds the
worker's asgi.pipeline.ASGI: a request under no upstream prefix is handed to it untouched. One
under an upstream route (routes.py) is not given to the ASGI app: its exchange with the
upstream runs as the request's task instead, through the pipeline's own stages, so that drain,
limits, timeouts, Server/Date, --response-header and the access log apply unchanged:

  get_request (the scope: client, scheme and host after proxy-header trust)
  -> produce_final_response_failsafe(request, exchange.run): UpstreamFailure -> 502 / 504 when
     nothing was sent yet, else the client connection is aborted (never a short response that
     looks complete); any other exception is a bug and goes the app's way (500, logged)
  -> Exchange.run: a connection from the pool (pool.py), the request head (headers.py,
     written by codec.py) and body streamed up with backpressure, the response head
     -> 101: handle_django_connection_upgrade: the client connection becomes a byte tunnel
     -> else: django_apply_middlewares_to_response (the upstream's headers made the client's),
        then each body piece through send_response -> start_response -> finalize_response
        (the --response-header middlewares) as for an app, backpressured both ways; the last
        piece's access log line names the upstream and its time

A request that fails on a reused keep-alive connection before any byte came back (the upstream
closed it as it was lent) is sent again, once, on a new connection when its method is
idempotent (RFC 9110 9.2.2) and its body, if any, is still in hand (REPLAY_LIMIT).

It wraps the pipeline rather than subclassing it (both are compiled, build.py; the pipeline's
stages are called, not overridden). A worker without --upstream builds the plain pipeline and
never runs this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ..asgi.pipeline import ASGI, Request, Response
from ..errors import UpstreamFailure
from ..logs import log
from ..stream import ClientDisconnected, Stream, error_response
from .codec import CONNECTION_CLOSED, END_OF_MESSAGE, Head
from .headers import request_headers, response_headers
from .pool import Pool, Pools, UpstreamConnection
from .routes import Route, RouteTable
from .tunnel import Tunnel

# RFC 9110 9.2.2: a request with one of these methods may be sent again.
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))
# A request body is kept for a retry up to this size; past it the request is not retried.
REPLAY_LIMIT = 64 * 1024


class UpstreamASGI:
    """The request handler of a worker with --upstream (see the module docstring)."""

    def __init__(self, pipeline: ASGI, routes: RouteTable, max_connections: int = 0,
                 timeout: float = 60.0, tunnel_timeout: float = 10.0) -> None:
        self.pipeline = pipeline
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

    # --- the StreamHandler --------------------------------------------------------------------

    def __call__(self, application: Any, stream: Stream) -> Coroutine[Any, Any, Request]:
        match = self.routes.match(stream.target)
        if match is None:
            return self.pipeline(application, stream)
        route, target = match
        assert self.pools is not None and route.upstream is not None  # start() ran
        request = self.pipeline.get_request(stream)
        exchange = Exchange(self, request, route, target,
                            self.pools.by_upstream[route.upstream])
        return self.pipeline.produce_final_response_failsafe(request, exchange.run)

    def write_access_log(self, stream: Stream, client: tuple | None, status: int,
                         size: int) -> None:
        self.pipeline.write_access_log(stream, client, status, size)

    def get_websocket_scope(self, stream: Stream, subprotocols: list[str]) -> dict:
        return self.pipeline.get_websocket_scope(stream, subprotocols)

    # --- the seed's upstream stages -----------------------------------------------------------

    def django_apply_middlewares_to_response(self, response: Response,
                                             request: Request) -> None:
        """The seed's stage for an upstream's response: its headers made the client's
        (hop-by-hop fields, the upstream's Server and Date dropped: headers.py). The
        server-level middlewares (--response-header) then apply in the pipeline's
        finalize_response, as for every app response."""
        response.headers = response_headers(response.headers)

    def handle_django_connection_upgrade(self, upgrade_request: Exchange,
                                         upgrade_response: Head,
                                         protocol_receive_timeout: float = 10.0,
                                         protocol_receive_buffer: int = 64 * 1024) -> None:
        """The seed's stage for an upstream's 101: the 101 goes to the client (the upstream's
        headers, hop-by-hop ones dropped but Upgrade, with the server's Server and Date; no
        --response-header, as for WebSocket handshakes), and the client connection and the
        upstream connection become the two ends of a byte tunnel (tunnel.py), idle for at most
        `protocol_receive_timeout` seconds, with at most about `protocol_receive_buffer`
        bytes waiting each way."""
        exchange = upgrade_request
        request = exchange.request
        connection = exchange.connection
        assert connection is not None
        stream: Any = request.stream  # an Http1Stream: a 101 is HTTP/1.1's
        http = stream.connection
        if http.closed:
            raise ClientDisconnected("client disconnected")
        headers = response_headers(upgrade_response.headers, keep_upgrade=True)
        state = http.state
        lines = [b"HTTP/1.1 101 Switching Protocols\r\n"]
        if not any(name == b"server" for name, _ in headers):
            lines.append(b"Server: duck-prefork\r\n")
        lines.append(state.date_header)
        lines += [b"%s: %s\r\n" % (name, value) for name, value in headers]
        lines.append(b"\r\n")
        upstream_data = connection.codec.upgrade_data()
        client_data = http.parser.take_upgrade_data()
        tunnel = Tunnel(state, connection, protocol_receive_timeout, protocol_receive_buffer,
                        exchange.pool.upstream.name)
        connection.tunnel = tunnel
        exchange.pool.detach(connection)
        read_paused = http.hand_over()
        http.transport.write(b"".join(lines))
        tunnel.switch(http.transport, http.facts, client_data, upstream_data, read_paused,
                      http.write_paused)
        response = request.response = Response(101, headers)
        response.started = response.complete = True
        exchange.upstream_time = asyncio.get_running_loop().time() - exchange.started
        exchange.log(101, 0)


class Exchange:
    """One request passed to its upstream: the pipeline's Request, the route, the target sent
    there, the connection lent for it, what to replay, how long the upstream took."""

    __slots__ = ("handler", "pipeline", "request", "route", "target", "pool", "connection",
                 "replay", "started", "upstream_time")

    def __init__(self, handler: UpstreamASGI, request: Request, route: Route, target: bytes,
                 pool: Pool) -> None:
        self.handler = handler
        self.pipeline = handler.pipeline
        self.request = request
        self.route = route
        self.target = target
        self.pool = pool
        self.connection: UpstreamConnection | None = None
        self.replay: list[bytes] | None = [] if request.stream.method in IDEMPOTENT else None
        self.started = 0.0
        self.upstream_time: float | None = None

    async def run(self, request: Request) -> None:
        """The producer for the pipeline's failsafe: the exchange, its failures answered."""
        try:
            await self.exchange()
        except UpstreamFailure as failure:
            self.failed(failure)

    def failed(self, failure: UpstreamFailure) -> None:
        """502 or 504 while nothing was sent; else the client connection is aborted. One log
        line each, no traceback: not a bug of ours."""
        request = self.request
        stream = request.stream
        response = request.response
        target = stream.target.decode("latin-1")
        if self.upstream_time is None:
            self.upstream_time = asyncio.get_running_loop().time() - self.started
        if response is not None and response.started:
            log.warning("%s, after the response started: closing the client connection "
                        "(%s %s)", failure, stream.method, target)
            stream.abort()
        elif stream.closed or stream.disconnected:
            log.info("%s (the client had left)", failure)
            stream.close()
        else:
            log.warning("%s: answered %d (%s %s)", failure, failure.status, stream.method,
                        target)
            headers, body = error_response(failure.status)
            request.response = Response(failure.status, headers)
            self.send(request.response, body, False)

    async def exchange(self) -> None:
        """Pass the request to its upstream and the answer back (see the module docstring)."""
        request = self.request
        stream = request.stream
        pool = self.pool
        upstream = pool.upstream
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        upgrade = getattr(stream, "upgrade", None)  # an HTTP/1.1 request asking for a switch
        chunked = bool(getattr(stream, "chunked", False))
        has_body = chunked or bool(getattr(stream, "content_length", 0))
        # (What goes into the head was held to h11's rules by the server's request parser.)
        method = stream.method.encode("ascii")
        headers = self.upstream_headers(upgrade, chunked)
        fresh = False
        while True:
            connection = self.connection = await pool.acquire(fresh)
            try:
                connection.write(connection.codec.request(method, self.target, headers,
                                                          chunked, upgrade))
                event = await self.send_request(connection, has_body)
                break
            except UpstreamFailure as failure:
                pool.release(connection)
                if fresh or not connection.reused or connection.received_any \
                        or failure.status != 502 or self.replay is None or stream.closed:
                    raise
                log.debug("%s: sending %s %s again on a new connection", failure,
                          stream.method, self.target.decode("latin-1"))
                fresh = True
            except BaseException:
                pool.release(connection)
                raise
        try:
            if type(event) is not Head:
                raise UpstreamFailure(502, f"upstream {upstream.name}: no response")
            if event.status == 101:  # (send_request lets no other 1xx through)
                if upgrade is None:
                    raise UpstreamFailure(502, f"upstream {upstream.name} answered 101 to a "
                                               "request that asked for no protocol switch")
                self.handler.handle_django_connection_upgrade(
                    self, event, self.handler.tunnel_timeout)
                return
            await self.pass_response(event, connection)
        finally:
            if connection.tunnel is None:
                pool.release(connection)

    def upstream_headers(self, upgrade: bytes | None,
                         chunked: bool) -> list[tuple[bytes, bytes]]:
        request = self.request
        stream = request.stream
        scope = request.scope
        host = None
        for name, value in scope["headers"]:  # (the Host a trusted proxy forwarded, if any)
            if name == b"host":
                host = value
                break
        proxy = self.pipeline.proxy
        trusted = stream.forwarded and proxy is not None and proxy.trusts(stream.client)
        headers = request_headers(stream.headers, stream.client, trusted, scope["scheme"],
                                  host, self.pool.upstream.authority, upgrade)
        if chunked:
            headers.append((b"transfer-encoding", b"chunked"))  # the codec frames it again
        return headers

    async def send_request(self, connection: UpstreamConnection, has_body: bool) -> Any:
        """Send the request body (as the client sends it, paced by the upstream) after the
        head the caller wrote, and return the response's first event that is not a 100 or
        103."""
        codec = connection.codec
        if has_body:
            stream = self.request.stream
            replay = self.replay
            complete = True
            for chunk in replay or ():  # a retry: what the first attempt read
                connection.write(codec.body(chunk))
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
                        replay = self.replay = None
                connection.write(codec.body(body))
                if connection.write_paused:
                    await connection.drain()
                if connection.closed or connection.failure is not None \
                        or not codec.awaiting_head:
                    complete = False  # the upstream's answer (or failure) says the rest
                    break
            if complete:
                connection.write(codec.end())
        else:
            codec.end()
        while True:
            event = await connection.next_event()
            if type(event) is not Head or event.status >= 200 or event.status == 101:
                return event

    async def pass_response(self, event: Head, connection: UpstreamConnection) -> None:
        """The upstream's response to the client: the head with the first body bytes, then the
        body as it comes (what is already parsed goes out in one piece), each piece awaited
        when the client is behind. The upstream connection is back in the pool before the
        last piece is sent."""
        request = self.request
        response = request.response = Response(event.status, event.headers)
        self.handler.django_apply_middlewares_to_response(response, request)
        events = connection.events
        parts: list[bytes] = []
        while True:
            piece: Any = await connection.next_event()
            if type(piece) is bytes:
                parts.append(piece)
                if events and events[0] is not CONNECTION_CLOSED:
                    continue  # more is parsed already: one piece
                body = parts[0] if len(parts) == 1 else b"".join(parts)
                parts = []
                drained = self.send(response, body, True)
                if drained is not None:
                    await drained
            elif piece is END_OF_MESSAGE:
                self.upstream_time = asyncio.get_running_loop().time() - self.started
                self.pool.release(connection)  # before the client has it all
                self.send(response, b"".join(parts), False)
                return
            else:
                raise UpstreamFailure(502, f"upstream {self.pool.upstream.name}: "
                                           f"unexpected {piece!r}")

    def send(self, response: Response, body: bytes, more_body: bool) -> Awaitable[None] | None:
        """The pipeline's send_response, except that the last piece's access log line names
        the upstream and the time it took."""
        request = self.request
        stream = request.stream
        if more_body:
            return self.pipeline.send_response(response, stream, request, body, True)
        if response.started:
            stream.send_body(body, False)
        else:
            self.pipeline.start_response(request, response, body, False)
        response.complete = True
        self.log(response.status, stream.bytes_sent)
        return None

    def log(self, status: int, size: int) -> None:
        access_log = self.pipeline.access_log
        if access_log is None:
            return
        stream = self.request.stream
        taken = self.upstream_time
        extra = f" upstream={self.pool.upstream.name} upstream_time=" + \
            (f"{taken:.6f}" if taken is not None else "-")
        access_log.write(self.request.scope["client"], stream.method, stream.target,
                         stream.http_version, status, size,
                         self.pipeline.loop_time() - stream.start_time, stream.headers,
                         extra)
