"""The HTTP/1.1 connection, independent of the parser: requests, keep-alive, flow, timeouts.

A parser adapter (parser_httptools.py, or parser_h11.py: --http) turns bytes into events, with
the same outcomes for every input whichever it is, and request_head.py holds each head
to the rules and limits; everything else about a connection lives here once: when a request
starts (as an Http1Stream, stream.py: the stream interface the ASGI side serves, with the
response framing), how its body is fed to it, when reading pauses, when the connection is kept
alive or closed, the answers to requests it refuses, and the timeouts, which one sweep a second
enforces (ServerState.tick) so that no timer is armed per request.

Parser contract, as used by HttpConnection.handle_events:
  feed(data)            bytes from the client; b"" means the client closed its side
  next_event()          one of:
      tuple             a request head: (method, target, http_version, headers), all bytes but
                        headers, a list of (lowercased name, value) byte pairs
      bytes             a piece of the request body
      END_OF_MESSAGE    the request is complete
      NEED_DATA         nothing more until more bytes arrive
      PAUSED            a request is complete, and bytes of the next one have arrived (empty
                        lines alone do not count) or it asked to switch protocols (Upgrade,
                        CONNECT): nothing more is parsed before start_next_cycle()
      CONNECTION_CLOSED the client closed the connection between requests
    or raises ParseError(status, reason) for a request that must be refused.
    After the END_OF_MESSAGE of a request that closes the connection it is not called again.
  start_next_cycle()    begin parsing the next request on this connection
  take_upgrade_data()   right after next_event() returned the head of a request the connection
                        switches protocols for (a GET with Upgrade and no body): the bytes
                        received after that head, maybe none; the parser is not used afterwards
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

from mypy_extensions import mypyc_attr

from ..logs import FailureLog, log, plural
from ..metrics.counters import RequestCounts
from ..net.stages import (
    H2,
    ConnectionFacts,
    StagedConnection,
    TransportProtocol,
    is_h2_preface,
    switch_protocol,
)
from ..stream import Stream, StreamHandler, Waiter, http_date
from .request_head import DEFAULT_LIMITS, Limits, ParseError
from .stream import Http1Stream, date_header, encode_error

# --max-requests-per-connection 0. Not sys.maxsize: the compiled build compares small ints
# (below 2**62) without a call, and this compare is made for every request.
NO_LIMIT: Final = 1 << 60

# While stopping, a keep-alive connection idle between requests this long is closed (the
# drain closes those idle at its start; this catches those that become idle after).
DRAIN_IDLE = 1.0

END_OF_MESSAGE = "END_OF_MESSAGE"
NEED_DATA = "NEED_DATA"
PAUSED = "PAUSED"
CONNECTION_CLOSED = "CONNECTION_CLOSED"


class Parser:
    """The parser contract above, as the base class of the adapters (HttptoolsParser,
    H11Parser): in the compiled build (build.py) the connection then calls them directly."""

    __slots__ = ()

    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    def next_event(self) -> Any:
        raise NotImplementedError

    def start_next_cycle(self) -> None:
        raise NotImplementedError

    def take_upgrade_data(self) -> bytes:
        raise NotImplementedError


# --- shared per-worker state ----------------------------------------------------------------

TASK_NAME: Final = "duck-prefork request"  # asyncio.current_task().get_name() in a request

# The ASGI pipeline, as the connection sees it: handler(app, stream) -> the request's coroutine.
RequestHandler = StreamHandler


@mypyc_attr(allow_interpreted_subclasses=True)  # the tests' stand-in (tests/unit/fakes.py)
class ServerState:
    """What every connection of one worker shares: the app, the pipeline, and the bookkeeping
    that graceful shutdown waits on (open connections and running request tasks)."""

    def __init__(self, app: Any, handler: RequestHandler, parser_factory: Callable[[], Parser],
                 keep_alive: float, timing: bool, limits: Limits = DEFAULT_LIMITS,
                 concurrency: int = 0, header_timeout: float = 0.0, send_timeout: float = 0.0,
                 upgrade: Callable[[HttpConnection, Http1Stream], bool] | None = None,
                 max_requests_per_connection: int = 0):
        self.loop = asyncio.get_running_loop()
        # loop.time, bound once: a call of it costs less than a method call on the loop, and
        # the hot path reads the clock once or twice per request.
        self.clock: Callable[[], float] = self.loop.time
        self.app = app
        self.handler = handler  # the ASGI pipeline: handler(app, stream)
        self.parser_factory = parser_factory
        self.keep_alive = keep_alive
        # The request on a connection whose response carries Connection: close; one compare
        # per request covers --keep-alive 0 (the first) and no limit (never).
        self.last_request_on_connection = 1 if keep_alive <= 0 else \
            max_requests_per_connection or NO_LIMIT
        self.limits = limits
        self.concurrency = concurrency  # most requests in progress at once; 0: no limit
        self.header_timeout = header_timeout
        self.send_timeout = send_timeout
        self.timing = timing  # record request start times (only the access log needs them)
        # --log-level debug: a line per connection opened and closed (never per request).
        self.debug = log.isEnabledFor(logging.DEBUG)
        # Offered each request that asks for a protocol switch: takes the connection over and
        # returns True, or returns False to serve it as plain HTTP (websocket.py; None: --ws none).
        self.upgrade = upgrade
        self.connections: set[HttpConnection] = set()
        self.staging: set[StagedConnection] = set()  # still in their stages (net/stages.py)
        self.websockets: set = set()  # connections taken over by websocket.py
        self.http2_connections: set[Any] = set()  # http2.connection.Http2Connection
        # --http2: the HTTP/2 protocol's factory, and whom cleartext HTTP/2 with prior
        # knowledge is for (--forwarded-allow-ips: a proxy speaking h2c to its upstream); a
        # trusted peer's HTTP/1.1 connection whose first bytes are the preface switches to it.
        self.h2c: Callable[[], Any] | None = None
        self.h2c_trusts: Callable[[tuple | None], bool] | None = None
        self.tasks: set[asyncio.Task] = set()
        self.pending_connects = 0  # accepted sockets whose connection is being set up
        self.draining = False  # stopping: the listeners are closed, idle connections close
        # Every response carries Connection: close: from the start of a stop, the master's lame
        # duck (--drain-delay) included, while the listeners still accept.
        self.lame_duck = False
        self.drained = asyncio.Event()
        self.date = b""  # the Date value of every response this second, and its HTTP/1.1 line
        self.date_header = b""
        self.refresh_date()
        self.requests_served = 0
        self.refused_busy = 0  # 503s for --limit-concurrency since the last tick
        # --metrics-bind: what this worker counts (published once a second by the worker's
        # tick); None costs one test per response.
        self.counts: RequestCounts | None = None
        self.failures = FailureLog()  # what went wrong in tick(), logged once each
        self.task_done = self.task_finished  # bound once, not per request

    def refresh_date(self) -> None:
        """The one place the Date of responses comes from (every kind of response and stream
        reads it here, so none slices it out of another's bytes)."""
        self.date = http_date()
        self.date_header = date_header(self.date)

    def tick(self, now: float) -> None:
        """Called once a second: refresh the Date header and enforce every connection timeout.
        One sweep for all connections, HTTP and WebSocket, keeps timers off the per-request
        path."""
        self.refresh_date()
        if self.refused_busy:
            log.warning("--limit-concurrency %d reached: answered %d %s with 503",
                        self.concurrency, self.refused_busy,
                        "request" if self.refused_busy == 1 else "requests")
            self.refused_busy = 0
        for task in [task for task in self.tasks if task.done()]:
            # A request's task counts itself out when its stream is released; one cancelled
            # before its coroutine ever ran never does.
            self.task_finished(task)
        for connection in [*self.staging, *self.connections, *self.websockets,
                           *self.http2_connections]:
            try:
                connection.check_timeouts(now)
            except Exception as exc:  # a bug; the sweep goes on for the other connections
                self.failures("checking a connection's timeouts failed; closing it", exc)
                self._abort_broken(connection)

    def _abort_broken(self, connection: Any) -> None:
        """Close a connection whose timeouts cannot be enforced, so that it cannot stay open
        (and hold up a drain) for ever; if even that fails, forget it."""
        try:
            connection.abort()
        except Exception:
            self.staging.discard(connection)
            self.connections.discard(connection)
            self.websockets.discard(connection)
            self.http2_connections.discard(connection)
            self.check_drained()

    def start_draining(self) -> None:
        """Stop taking new requests: close idle keep-alive connections now, the others after
        their current response (which then carries Connection: close). A connection accepted
        but not yet read from is left to the next tick, so that a request already on its way
        is still answered."""
        self.draining = True
        self.lame_duck = True
        for connection in list(self.connections):
            if connection.request is None and connection.served:
                connection.close()
        for websocket in list(self.websockets):
            websocket.going_away()
        for http2_connection in list(self.http2_connections):  # (a name of its own: mypyc)
            http2_connection.go_away()  # GOAWAY; closed once its streams are done
        self.check_drained()

    def start_task(self, coroutine: Coroutine[Any, Any, Any],
                   stream: Stream | None = None) -> None:
        """Run one request's (or WebSocket's) coroutine as a task the drain waits for. A
        request's stream is released by the ASGI side when its coroutine returns
        (Stream.release), which ends the task's count here; any other task is counted out by a
        done callback (scheduled by the loop: a second callback per request, which the stream
        saves)."""
        loop = self.loop
        if loop.get_task_factory() is None:
            # What loop.create_task does, but named: without a name, Task() formats
            # "Task-<n>" for every request (Python 3.11).
            task: asyncio.Task = asyncio.Task(coroutine, loop=loop, name=TASK_NAME)
        else:  # an app installed its own task factory (in its lifespan startup, say)
            task = loop.create_task(coroutine, name=TASK_NAME)
        self.tasks.add(task)
        if stream is None:
            task.add_done_callback(self.task_done)
        else:
            stream.task = task

    def task_finished(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.requests_served += 1
        if self.draining:
            self.check_drained()

    def check_drained(self) -> None:
        if self.draining and not self.connections and not self.tasks \
                and not self.pending_connects and not self.websockets and not self.staging \
                and not self.http2_connections:
            self.drained.set()


# --- the connection -------------------------------------------------------------------------

@mypyc_attr(allow_interpreted_subclasses=True)  # the base of asgi.websocket.WebSocketSession
class FlowControlledProtocol(TransportProtocol):
    """asyncio flow control both ways, for HttpConnection and websocket.WebSocketSession:
    reading is paused while what was read waits for the app, and a writer awaits drain()
    while the transport's buffer is above its high-water mark (and --send-timeout bounds how
    long that buffer may go without shrinking: send_stalled)."""

    __slots__ = ("_drain_waiter", "_stall_since", "_stall_size")

    def __init__(self) -> None:
        # TransportProtocol's fields, set here rather than by a super() call: one call less
        # for every connection accepted.
        self.closed = False
        self.read_paused = False
        self.write_paused = False
        self._drain_waiter: Waiter | None = None  # made at the first drain that waits
        self._stall_since: float | None = None  # a write is waiting on the client since
        self._stall_size = 0  # bytes it was waiting to send then

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark again."""
        if self.write_paused and not self.closed:
            waiter = self._drain_waiter
            if waiter is None:
                waiter = self._drain_waiter = Waiter()
            await waiter.wait(asyncio.get_running_loop())

    def pause_writing(self) -> None:
        self.write_paused = True
        self._stall_since = None  # the next tick starts watching for progress

    def send_stalled(self, now: float, send_timeout: float) -> bool:
        """For the once-a-second sweep, while a writer waits on the client (writing paused)
        or the last bytes do (after close()): True once the write buffer has not shrunk for
        `send_timeout` seconds (0: never), i.e. the client has stopped reading."""
        size = self.transport.get_write_buffer_size()
        if not size:
            return False
        if self._stall_since is None or size < self._stall_size:
            self._stall_since, self._stall_size = now, size  # progress: restart the clock
            return False
        return bool(send_timeout) and now - self._stall_since >= send_timeout

    def resume_writing(self) -> None:
        self.write_paused = False
        self.wake_drain()

    def wake_drain(self) -> None:
        """Let a writer waiting in drain() go on (also when the connection is lost)."""
        waiter = self._drain_waiter
        if waiter is not None:
            waiter.wake()


@mypyc_attr(allow_interpreted_subclasses=True)  # the tests' stand-in (tests/unit/fakes.py)
class HttpConnection(FlowControlledProtocol):
    """One client connection: feeds the parser, starts a request task per request head,
    answers refused requests, and decides between the next request and closing."""

    __slots__ = ("state", "parser", "facts", "client", "server", "request", "idle_since",
                 "head_started", "served", "input_done", "sniffing", "sniffed")

    facts: ConnectionFacts  # set by take_over

    def __init__(self, state: ServerState):
        super().__init__()
        self.state = state
        self.parser: Parser = state.parser_factory()
        self.client: tuple | None = None  # facts.client and facts.server, read once
        self.server: tuple | None = None
        self.request: Http1Stream | None = None
        self.idle_since: float | None = None  # waiting for a request head since
        self.head_started = False  # bytes of the next head have arrived
        self.served = 0  # requests started on this connection
        # The last request this connection will serve has been read (it asked to close, or
        # is HTTP/1.0): what else arrives is read and dropped, never parsed. Reading it still
        # (rather than pausing) lets the close be a FIN, not a reset that could destroy the
        # response in flight.
        self.input_done = False
        # A trusted peer's plain connection, before its first bytes are known not to be the
        # HTTP/2 preface (ServerState.h2c), and those bytes so far.
        self.sniffing = False
        self.sniffed = b""

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A connection with no stages (net/stages.py), straight from accept."""
        self.take_over(transport, ConnectionFacts.of(transport))  # type: ignore[arg-type]

    def take_over(self, transport: asyncio.Transport, facts: ConnectionFacts,
                  read_paused: bool = False, write_paused: bool = False) -> None:
        """The connection is ours (net.stages.switch_protocol, after the stages)."""
        self.transport = transport
        self.facts = facts
        self.client = facts.client
        self.server = facts.server
        self.write_paused = write_paused
        if read_paused:
            transport.resume_reading()  # paused by a stage: the first request head is wanted
        state = self.state
        state.connections.add(self)
        self.idle_since = state.loop.time()
        trusts = state.h2c_trusts
        if trusts is not None and facts.tls is None and trusts(facts.client):
            self.sniffing = True
        counts = state.counts
        if counts is not None:
            counts.connections += 1
        if self.state.debug:
            log.debug("connection from %s to %s", _peer(self.client), _peer(self.server))

    def data_received(self, data: bytes) -> None:
        if self.input_done:
            return
        if self.request is None:
            if self.sniffing:
                data = self.sniff(data)
                if not data:
                    return
            self.head_started = True
        self.parser.feed(data)
        self.handle_events()

    def sniff(self, data: bytes) -> bytes:
        """A trusted peer's first bytes: the HTTP/2 preface (RFC 9113 3.3, prior knowledge)
        switches the connection to HTTP/2; anything else is HTTP/1.1's, returned to be parsed
        (b"": nothing for HTTP/1.1 yet, or ever)."""
        data = self.sniffed + data
        verdict = is_h2_preface(data)
        if verdict is None:
            self.sniffed = data
            return b""
        self.sniffing = False
        self.sniffed = b""
        if not verdict:
            return data
        state = self.state
        successor = state.h2c
        assert successor is not None
        state.connections.discard(self)
        counts = state.counts
        if counts is not None:
            counts.connections -= 1  # (the HTTP/2 connection counts itself)
        self.input_done = True  # the transport is the HTTP/2 connection's from here
        self.facts.protocol = H2
        switch_protocol(self.transport, successor(), self.facts, data,
                        write_paused=self.write_paused)
        return b""

    def eof_received(self) -> bool:
        if self.input_done:
            return True
        self.parser.feed(b"")
        self.handle_events()
        return True  # keep our side open: a response may still be owed; we close it ourselves

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        if self.state.debug:
            log.debug("connection from %s closed after %s%s", _peer(self.client),
                      plural(self.served, "request"), f" ({exc})" if exc else "")
        request = self.request
        if request is not None:
            request.closed = True
            request.feed_disconnect()
        self.wake_drain()
        self.state.check_drained()

    # request side

    def handle_events(self) -> None:
        parser = self.parser
        while not self.closed:
            try:
                event = parser.next_event()
            except ParseError as exc:
                self.refuse(exc.status)
                return
            kind = type(event)
            if kind is bytes:
                request = self.request
                if request is not None:
                    request.body_received += len(event)
                    body_limit = self.state.limits.body
                    if body_limit and request.body_received > body_limit:
                        self.refuse(413)  # a chunked body past the limit
                        return
                    request.feed_body(event)
            elif kind is tuple:
                self.start_request(*event)
                if self.closed:
                    return
            elif event is END_OF_MESSAGE:
                request = self.request
                if request is not None:
                    request.feed_end()
                    if not request.keep_alive:
                        self.input_done = True
                        return
                    if request.response_complete:
                        self.next_cycle()
            elif event is NEED_DATA:
                return
            elif event is PAUSED:
                # A request is complete and its response pending: stop reading until it is
                # sent, so a pipelining client cannot make us buffer without bound.
                self.pause_reading()
                return
            else:  # CONNECTION_CLOSED
                if self.request is None:
                    self.close()
                else:
                    # EOF after a complete request: a client that is gone, or one that only
                    # half-closed and still reads. The app hears http.disconnect (so a long
                    # poll stops), but a response it sends anyway is still written; the
                    # connection closes after it.
                    self.request.keep_alive = False
                    self.request.feed_disconnect()
                return

    def start_request(self, method: bytes, target: bytes, http_version: bytes,
                      headers: list) -> None:
        state = self.state
        try:
            request = Http1Stream(self, method, target, http_version, headers)
        except ParseError as exc:
            self.refuse(exc.status)
            return
        if state.concurrency and len(state.tasks) >= state.concurrency:
            state.refused_busy += 1  # logged once a second by tick(), not per request
            self.refuse(503)
            return
        if state.timing:
            request.start_time = state.clock()
        if request.upgrade is not None and state.upgrade is not None \
                and state.upgrade(self, request):
            return  # the connection is a WebSocket now
        self.request = request
        self.idle_since = None
        self.served += 1
        if self.served >= state.last_request_on_connection:
            request.keep_alive = False  # --max-requests-per-connection, --keep-alive 0
        state.start_task(state.handler(state.app, request), request)

    def close(self) -> None:
        request = self.request
        if request is not None:
            request.closed = True  # a stream is closed with its connection
        super().close()

    def abort(self) -> None:
        request = self.request
        if request is not None:
            request.closed = True
        super().abort()

    def hand_over(self) -> bool:
        """The transport now belongs to another protocol (a WebSocket): forget it here.
        Returns whether reading is paused, for the new owner to know."""
        self.closed = True  # ends handle_events; nothing here touches the transport again
        self.request = None
        self.state.connections.discard(self)
        return self.read_paused

    def refuse(self, status: int) -> None:
        """Answer a request we will not serve, then close: nothing after it is parsed."""
        request = self.request
        if request is not None:
            request.feed_disconnect()  # a bad body: its app sees the client go
        counts = self.state.counts
        if counts is not None:
            counts.refuse(status)
        if request is None or not request.response_started:
            self.write(encode_error(status, self.state.date_header))
        self.close()

    def next_cycle(self, now: float = -1.0) -> None:
        """Ready for the next request; `now`, the loop time if the caller has just read it."""
        self.request = None
        if self.state.draining:
            self.close()
            return
        self.parser.start_next_cycle()
        self.idle_since = now if now >= 0.0 else self.state.clock()
        self.head_started = False
        if self.read_paused:
            self.resume_reading()
        self.handle_events()

    # response side, used by the stream (write, drain: FlowControlledProtocol)

    def response_complete(self, keep_alive: bool) -> None:
        """The response to the current request has been written in full."""
        request: Any = self.request  # the current request: set while its response is written
        request.finish_response()
        state = self.state
        counts = state.counts
        now = -1.0  # read once here for the metrics, and reused by next_cycle
        if counts is not None:
            now = state.clock()
            stream: Http1Stream = request  # typed: native attribute reads
            counts.count(stream.method, stream.status, now - stream.start_time,
                         stream.body_received, stream.bytes_sent)
        if not keep_alive:
            self.close()
        elif request.body_complete:
            self.next_cycle(now)
        else:
            # The app answered without reading the whole body: read the rest and drop it
            # (feed_body does), then next_cycle(). Counted as idle, so a client that stops
            # sending is closed by the keep-alive sweep.
            self.idle_since = self.state.loop.time()
            self.head_started = False  # what arrives now is body: keep-alive rules apply
            self.resume_reading()

    def check_timeouts(self, now: float) -> None:
        """Close the connection if it has outstayed a timeout (see ServerState.tick)."""
        state = self.state
        if self.closed or self.write_paused:
            # A response (or its last bytes, after close()) waits for the client to read.
            if self.send_stalled(now, state.send_timeout):
                log.debug("send timeout: client %s read nothing for %.0f s", self.client,
                          state.send_timeout)
                counts = state.counts
                if counts is not None:
                    counts.send_timed_out()
                self.abort()
            return
        idle_since = self.idle_since
        if idle_since is None:
            return  # a request is in progress: the app's time is not limited here
        # Idle between requests: --keep-alive, or DRAIN_IDLE once stopping. A head on its
        # way (or awaited on a new connection) is never cut by those: only --header-timeout,
        # the slow-client guard, bounds it, so a balancer's request is not lost to a close
        # that crosses it.
        if self.head_started:
            # (the first head of a connection: --keep-alive bounds it too under
            # --header-timeout 0)
            limit = state.header_timeout or (0.0 if self.served else state.keep_alive)
        elif state.draining:
            limit = DRAIN_IDLE
        elif self.served == 0:
            limit = state.header_timeout or state.keep_alive  # a new connection, no head yet
        else:
            limit = state.keep_alive
        if limit and now - idle_since >= limit:
            if self.served == 0 and not state.draining:
                counts = state.counts
                if counts is not None:
                    counts.refuse(408)
                self.write(encode_error(408, state.date_header))
            self.close()


def _peer(address: Any) -> str:
    """host:port of a TCP peer, the path of a unix socket's, for debug lines."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address or "-")
