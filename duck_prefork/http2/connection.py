"""The HTTP/2 connection: frames in, streams out, each stream served as a request.

The protocol is the machine's (machine.py, sans-IO, compiled); this is the asyncio side of
it: bytes from the transport go to the machine, its events are dispatched through a table to
one method each, and what it queues is written once per batch. A stream (stream.py) is
started per request head and served by the worker's request handler (the ASGI pipeline), as
an HTTP/1.1 request is; it never sees a frame.

Flow control both ways, tied to the app. Request bodies: a stream's window is reopened only as
the app reads its body (Http2Stream.read_body -> acknowledge), so a client cannot make us
buffer more than a window per stream; the connection's window is large (the streams' windows
bound memory) so that one stream whose app does not read cannot block the others. Responses:
send_data sends what the client's windows allow and returns an awaitable for the rest, which
waits for WINDOW_UPDATE; the transport's own buffer adds the usual drain(). --send-timeout
bounds both waits: a client that keeps its windows shut (or opens them a byte at a time) or
stops reading is cut off (ServerState.tick -> check_timeouts).

Attacks, each bounded by a limit (limits.py, the --http2-* options): concurrent streams (the
machine enforces SETTINGS_MAX_CONCURRENT_STREAMS; we also refuse a stream while as many of our tasks
still run on this connection, since a reset stream's task may not have ended yet), a reset
budget (rapid reset: GOAWAY ENHANCE_YOUR_CALM), a control-frame budget (PING and SETTINGS
floods: GOAWAY ENHANCE_YOUR_CALM; and reading stops while our outbound buffer is above its
high-water mark, so that a client that does not read cannot make us queue replies), header
blocks bounded as they arrive and while they are decoded (the machine: CONTINUATION floods,
HPACK bombs), and a stream count per connection after which the connection is drained.

Tunnels (RFC 8441 extended CONNECT, tunnel.py): with a hook for a :protocol (WebSocket, unless
--ws none or --ws-http2 false) the connection advertises SETTINGS_ENABLE_CONNECT_PROTOCOL, and
a CONNECT naming it is handed over as a TunnelStream, which counts against the concurrent
streams as any stream.

Drain (TERM, HUP, recycle, or --http2-max-streams reached): a GOAWAY carrying the last stream
id we took; streams above it are refused (REFUSED_STREAM, the client may retry them
elsewhere); the streams in flight finish, within --graceful-timeout; then the final GOAWAY
and the close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from ..errors import Http2ConnectionError, Http2StreamClosed, ParseError
from ..http1.connection import FlowControlledProtocol
from ..logs import log
from ..net.stages import ConnectionFacts
from ..stream import ClientDisconnected, Waiter, error_response
from .limits import Http2Limits, RateBudget
from .machine import (
    ENHANCE_YOUR_CALM,
    INITIAL_WINDOW_SIZE,
    INTERNAL_ERROR,
    NO_ERROR,
    REFUSED_STREAM,
    ConnectionTerminated,
    DataReceived,
    Http2Machine,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from .stream import Http2Stream
from .tunnel import TunnelStream

if TYPE_CHECKING:
    from ..http1.connection import ServerState


# RFC 8441: a :protocol (lowercase) -> what takes a stream with it over: hook(stream, the head's
# fields with its pseudo-headers, whether END_STREAM came with it).
Tunnels = dict[bytes, Callable[[TunnelStream, list[tuple[bytes, bytes]], bool], None]]

# A send that has waited on the client's window restarts its --send-timeout clock only when one
# opening of the window lets this much go (or all that was left): a client that opens its
# window a few bytes at a time, however often, makes no progress.
STALL_PROGRESS: Final = 1024


class Http2Connection(FlowControlledProtocol):
    """One HTTP/2 connection (see the module docstring)."""

    __slots__ = ("state", "limits", "facts", "client", "server", "machine", "streams", "served",
                 "idle_since", "head_since", "resets", "control", "goaway_id", "flush_pending",
                 "drainers", "tunnels", "_dispatch")

    facts: ConnectionFacts

    def __init__(self, state: ServerState, limits: Http2Limits,
                 tunnels: Tunnels | None = None) -> None:
        super().__init__()
        self.state = state
        self.limits = limits
        # RFC 8441 extended CONNECT: :protocol -> the hook that takes such a stream over
        # (open_tunnel); advertised with SETTINGS_ENABLE_CONNECT_PROTOCOL when there is one.
        self.tunnels = tunnels or None
        self.client: tuple | None = None
        self.server: tuple | None = None
        self.streams: dict[int, Http2Stream] = {}  # until release(): the tasks still running
        self.served = 0
        self.idle_since: float | None = None
        self.head_since: float | None = None  # a header block began arriving at, unfinished
        self.goaway_id: int | None = None  # the last stream id of our first GOAWAY
        self.flush_pending = False
        self.drainers: list[asyncio.Future] = []  # streams waiting in drain()
        self.machine = Http2Machine(
            max_concurrent_streams=limits.max_concurrent_streams,
            max_header_list_size=limits.max_header_list_size,
            stream_window=limits.stream_window, connection_window=limits.connection_window,
            max_continuation_frames=limits.max_continuation_frames,
            connect_protocol=bool(self.tunnels))
        self._dispatch: dict[type, Callable[[Any], None]] = {
            RequestReceived: self.on_request,
            DataReceived: self.on_data,
            TrailersReceived: self.on_trailers,
            StreamReset: self.on_reset,
            WindowUpdated: self.on_window,
            RemoteSettingsChanged: self.on_settings,
            PingReceived: self.on_ping,
            ConnectionTerminated: self.on_goaway,
        }

    # asyncio callbacks

    def take_over(self, transport: asyncio.Transport, facts: ConnectionFacts,
                  read_paused: bool = False, write_paused: bool = False) -> None:
        self.transport = transport
        self.facts = facts
        self.client = facts.client
        self.server = facts.server
        self.write_paused = write_paused
        state = self.state
        now = state.loop.time()
        self.resets = RateBudget(self.limits.max_resets, now)
        self.control = RateBudget(self.limits.max_control_frames, now)
        self.idle_since = now
        facts.add_extension("http.response.trailers", {})  # every stream may send trailers
        if read_paused:
            transport.resume_reading()
        state.http2_connections.add(self)
        counts = state.counts
        if counts is not None:
            counts.connections += 1
        self.machine.initiate_connection()
        self.flush()
        if state.draining:
            self.go_away()
        if state.debug:
            log.debug("HTTP/2 connection from %s", self.client)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.machine.receive_data(data)
        except Http2ConnectionError as exc:
            # The machine has queued its GOAWAY (ENHANCE_YOUR_CALM for the limits it enforces).
            log.debug("HTTP/2 connection from %s: %s; closing it", self.client, exc)
            self.end(None)
            return
        dispatch = self._dispatch
        try:
            for event in events:
                handler = dispatch.get(type(event))
                if handler is not None:
                    handler(event)
                    if self.closed:
                        return
        except Exception:  # a bug: this connection ends, the worker goes on
            log.exception("HTTP/2 connection from %s: handling a frame failed; closing it",
                          self.client)
            self.end(INTERNAL_ERROR)
            return
        if self.machine.receiving_headers():
            if self.head_since is None:
                self.head_since = self.state.loop.time()
        else:
            self.head_since = None
        self.flush()

    def eof_received(self) -> bool:
        return False  # the client is gone: close (connection_lost ends the streams)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        state = self.state
        state.http2_connections.discard(self)
        for stream in list(self.streams.values()):
            stream.feed_disconnect()
        self.wake_drain()
        state.check_drained()

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its low-water mark again: any number of
        streams may wait at once (FlowControlledProtocol's one waiter is for one writer)."""
        if self.write_paused and not self.closed:
            future = self.state.loop.create_future()
            self.drainers.append(future)
            await future

    def wake_drain(self) -> None:
        drainers, self.drainers = self.drainers, []
        for future in drainers:
            if not future.done():
                future.set_result(None)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.pause_reading()  # a client that does not read gets no more of our replies

    def resume_writing(self) -> None:
        super().resume_writing()
        self.resume_reading()

    # the machine's events

    def on_request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        state = self.state
        if self.goaway_id is not None and stream_id > self.goaway_id:
            self.reset_stream(stream_id, REFUSED_STREAM)  # after our GOAWAY
            return
        if len(self.streams) >= self.limits.max_concurrent_streams:
            # The machine counts open streams; a reset stream's task may still run: refuse,
            # and count it against the reset budget (a client resetting and reopening at speed).
            self.reset_stream(stream_id, REFUSED_STREAM)
            self.spend_reset()
            return
        try:
            stream = Http2Stream(self, stream_id, event.headers)
        except (ParseError, ValueError, UnicodeDecodeError) as exc:
            self.answer(stream_id, getattr(exc, "status", 400))
            return
        if state.concurrency and len(state.tasks) >= state.concurrency:
            state.refused_busy += 1
            self.answer(stream_id, 503)
            return
        if event.stream_ended:
            stream.body_complete = True
        elif stream.content_length is None:
            stream.chunked = True  # a body follows, its length unknown
        if state.timing:
            stream.start_time = state.clock()
        self.streams[stream_id] = stream
        self.idle_since = None
        self.served += 1
        if stream.method != "CONNECT" or not self.open_tunnel(stream, event):
            state.start_task(state.handler(state.app, stream), stream)
        if state.lame_duck or (self.limits.max_streams and
                               self.served >= self.limits.max_streams):
            # Enough on this connection, or the lame duck (the master is stopping: HTTP/1.1
            # answers with Connection: close): GOAWAY after this stream, so that the client
            # opens its next one elsewhere, or here on a new connection while we still accept.
            self.go_away()

    def on_data(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        length = event.flow_controlled_length
        if stream is None or stream.response_complete:
            if length:  # nobody will read it: give the window back at once
                self.machine.acknowledge_received_data(length, event.stream_id)
            return
        stream.body_received += len(event.data)
        body_limit = self.state.limits.body
        if body_limit and stream.body_received > body_limit:
            self.machine.acknowledge_received_data(length, event.stream_id)
            if stream.response_started:
                self.reset(stream)
            else:
                stream.feed_disconnect()
                self.answer(event.stream_id, 413)
            return
        stream.feed_body(event.data, length)
        if event.stream_ended:
            stream.feed_end()

    def on_trailers(self, event: TrailersReceived) -> None:
        """The request's trailers end its body (not passed to the app: ASGI has no request
        trailers)."""
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.feed_end()

    def on_reset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.feed_disconnect()
        if event.remote_reset:
            self.spend_reset()

    def on_window(self, event: WindowUpdated) -> None:
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.window_waiter is not None:
                stream.window_waiter.wake()
        else:
            self.wake_windows()

    def on_settings(self, event: RemoteSettingsChanged) -> None:
        if not self.control.spend(self.state.loop.time()):
            self.calm("SETTINGS flood")
            return
        if INITIAL_WINDOW_SIZE in event.changed_settings:
            self.wake_windows()

    def on_ping(self, event: PingReceived) -> None:
        if not self.control.spend(self.state.loop.time()):
            self.calm("PING flood")

    def on_goaway(self, event: ConnectionTerminated) -> None:
        # Nothing is sent after the client's GOAWAY: what is in flight cannot finish.
        self.end(None)

    # decisions on the budgets

    def spend_reset(self) -> None:
        if not self.resets.spend(self.state.loop.time()):
            self.calm(f"more than {self.limits.max_resets} stream resets a second")

    def calm(self, why: str) -> None:
        """A client abusing the protocol: GOAWAY ENHANCE_YOUR_CALM, and close."""
        log.info("HTTP/2 connection from %s: %s: GOAWAY ENHANCE_YOUR_CALM", self.client, why)
        self.end(ENHANCE_YOUR_CALM)

    # writing, for the streams

    def count_send_timeout(self) -> None:
        counts = self.state.counts
        if counts is not None:
            counts.send_timed_out()

    def flush(self) -> None:
        """Write what the machine has queued."""
        self.flush_pending = False
        if not self.closed:
            data = self.machine.data_to_send()
            if data:
                self.transport.write(data)

    def schedule_flush(self) -> None:
        """Write what the machine has queued at the end of this loop iteration: the frames of the
        streams served in one iteration go out in one write."""
        if not self.flush_pending:
            self.flush_pending = True
            self.state.loop.call_soon(self.flush)

    def send_headers(self, stream: Http2Stream, fields: list, end: bool) -> None:
        try:
            self.machine.send_headers(stream.stream_id, fields, end)
        except Http2StreamClosed as exc:  # the stream is gone (reset, closed)
            stream.feed_disconnect()
            raise ClientDisconnected(str(exc)) from None
        if end:
            self.stream_finished(stream)
        self.schedule_flush()

    def send_data(self, stream: Http2Stream, data: bytes, end: bool) -> Awaitable[None] | None:
        """Send `data` on the stream as far as the windows allow (END_STREAM with the last of
        it when `end`): None when all went and the transport is not behind, else what to
        await before sending more."""
        rest = self._push(stream, data, end)
        self.schedule_flush()
        if rest is not None:
            return self._send_rest(stream, rest, end)
        if self.write_paused:
            return self.drain()
        return None

    def _push(self, stream: Http2Stream, data: bytes, end: bool) -> bytes | None:
        """Send what the windows allow of `data`; the rest, or None when all of it went."""
        conn = self.machine
        stream_id = stream.stream_id
        try:
            size = len(data)
            window = conn.local_flow_control_window(stream_id)
            if size <= window:
                if size <= conn.max_outbound_frame_size:
                    conn.send_data(stream_id, data, end)
                else:
                    self._send_frames(stream_id, data, end)
                if end:
                    self.stream_finished(stream)
                return None
            if window > 0:
                self._send_frames(stream_id, data[:window], False)
                data = data[window:]
            return data
        except Http2StreamClosed as exc:  # reset or closed meanwhile
            stream.feed_disconnect()
            raise ClientDisconnected(str(exc)) from None

    def _send_frames(self, stream_id: int, data: bytes, end: bool) -> None:
        conn = self.machine
        step = conn.max_outbound_frame_size
        last = len(data) - step
        for at in range(0, len(data), step):
            conn.send_data(stream_id, data[at:at + step], end and at >= last)

    async def _send_rest(self, stream: Http2Stream, data: bytes | None, end: bool) -> None:
        """The rest of a send that the client's window stopped, sent as WINDOW_UPDATEs open
        it. The stall clock (stall_since, enforced by check_timeouts) restarts only when an
        opening lets STALL_PROGRESS bytes go: a window opened a byte at a time is no
        progress."""
        loop = self.state.loop
        waiter = stream.window_waiter
        if waiter is None:
            waiter = stream.window_waiter = Waiter()
        stream.stall_since = loop.time()
        while data is not None:
            await waiter.wait(loop)
            if stream.closed or self.closed:
                raise ClientDisconnected("client disconnected")
            before = len(data)
            data = self._push(stream, data, end)
            self.schedule_flush()
            if data is not None and before - len(data) >= STALL_PROGRESS:
                stream.stall_since = loop.time()
        stream.stall_since = None
        if self.write_paused:
            await self.drain()

    def stream_finished(self, stream: Http2Stream) -> None:
        """END_STREAM is out: the response is complete."""
        stream.finish_response()
        counts = self.state.counts
        if counts is not None:  # --metrics-bind: a stream counts as an HTTP/1.1 request does
            counts.count(stream.method, stream.status, self.state.clock() - stream.start_time,
                         stream.body_received, stream.bytes_sent)
        if not stream.body_complete and not stream.disconnected:
            # The app answered without reading the whole body: tell the client to stop
            # sending it (RFC 9113 8.1).
            self.reset_stream(stream.stream_id, NO_ERROR)

    def reset_stream(self, stream_id: int, code: int) -> None:
        """RST_STREAM, unless the stream has closed meanwhile (a reset from the client later
        in the same batch of frames, say)."""
        try:
            self.machine.reset_stream(stream_id, code)
        except Http2StreamClosed:
            pass

    def acknowledge(self, stream: Http2Stream, size: int) -> None:
        """The app has read `size` flow-controlled bytes of the stream's body, or will never
        read them (the stream has ended): the client may send as much again (on the
        connection only, once the stream has ended; the machine knows)."""
        if not self.closed:
            self.machine.acknowledge_received_data(size, stream.stream_id)
            self.schedule_flush()

    def wake_windows(self) -> None:
        for stream in self.streams.values():
            if stream.window_waiter is not None:
                stream.window_waiter.wake()

    def reset(self, stream: Http2Stream) -> None:
        """End a stream at once (RST_STREAM INTERNAL_ERROR unless it has already ended)."""
        if not stream.closed and not self.closed:
            self.reset_stream(stream.stream_id, INTERNAL_ERROR)
            self.schedule_flush()
        stream.feed_disconnect()

    def answer(self, stream_id: int, status: int) -> None:
        """Answer a stream we will not serve with the server's own response for `status`."""
        counts = self.state.counts
        if counts is not None:
            counts.refuse(status)  # by its status, as HTTP/1.1's refusals
        headers, body = error_response(status)
        fields = [(b":status", b"%d" % status), *(h for h in headers if h[0] != b"connection"),
                  (b"content-length", b"%d" % len(body)), (b"date", self.state.date)]
        conn = self.machine
        try:
            if conn.local_flow_control_window(stream_id) >= len(body):
                conn.send_headers(stream_id, fields)
                conn.send_data(stream_id, body, True)
            else:
                fields[-2] = (b"content-length", b"0")
                conn.send_headers(stream_id, fields, True)
            if stream_id in conn.streams:
                conn.reset_stream(stream_id, NO_ERROR)  # its body: not wanted
        except Http2StreamClosed:
            pass

    def stream_released(self, stream: Http2Stream) -> None:
        """The stream's task is done (Stream.release)."""
        task = stream.task
        if task is not None:
            stream.task = None
            self.state.task_finished(task)
        self.streams.pop(stream.stream_id, None)
        if not self.streams:
            self.idle_since = self.state.loop.time()
            if self.goaway_id is not None:
                self.end(NO_ERROR)  # drained: the final GOAWAY, and the close

    # tunnels (RFC 8441 extended CONNECT: tunnel.py)

    def open_tunnel(self, stream: Http2Stream, event: RequestReceived) -> bool:
        """A CONNECT whose :protocol has a hook in `tunnels` (a WebSocket) is handed to it as
        a TunnelStream, in `stream`'s place; False: any other CONNECT is served as a request
        (as an HTTP/1.1 Upgrade the worker does not take is: --ws none)."""
        tunnels = self.tunnels
        if tunnels is None:
            return False
        headers = event.headers
        hook = next((tunnels.get(value.lower()) for name, value in headers
                     if name == b":protocol"), None)
        if hook is None:
            return False
        tunnel = TunnelStream(self, stream.stream_id, headers)  # (parsed once already)
        tunnel.start_time = stream.start_time
        self.streams[stream.stream_id] = tunnel
        hook(tunnel, headers, event.stream_ended)
        return True

    def end_tunnel(self, stream: Http2Stream) -> None:
        """END_STREAM on a tunnel whose bytes have all gone. Not a response's end
        (stream_finished): not counted in the metrics; but as after a response, a client
        that has not ended its side is told to stop (RST_STREAM NO_ERROR)."""
        try:
            self.machine.send_data(stream.stream_id, b"", True)
        except Http2StreamClosed:  # reset or closed meanwhile
            return
        if not stream.body_complete:
            self.reset_stream(stream.stream_id, NO_ERROR)
        self.schedule_flush()

    # the end

    def go_away(self) -> None:
        """Drain: a GOAWAY with the last stream id taken; the streams in flight go on."""
        if self.goaway_id is not None or self.closed:
            return
        self.goaway_id = last = self.machine.highest_inbound_stream_id
        self.machine.send_goaway(last)
        self.flush()
        if not self.streams:
            self.end(NO_ERROR)

    def end(self, error: int | None) -> None:
        """Close the connection; with `error`, after a final GOAWAY with that code (None: the
        machine has already queued its own, or will send nothing more)."""
        if self.closed:
            return
        if error is not None:
            last = self.goaway_id
            self.machine.close_connection(error, -1 if last is None else last)
        self.flush()
        for stream in list(self.streams.values()):
            stream.feed_disconnect()
        self.close()

    def check_timeouts(self, now: float) -> None:
        """From the sweep (ServerState.tick): stalled sends, idle connections, the drain."""
        state = self.state
        if self.closed or self.write_paused:
            if self.send_stalled(now, state.send_timeout):
                log.debug("send timeout: HTTP/2 client %s read nothing for %.0f s",
                          self.client, state.send_timeout)
                self.count_send_timeout()
                self.abort()
            return
        head_since = self.head_since
        if head_since is not None and state.header_timeout \
                and now - head_since >= state.header_timeout:
            # A slow header block holds the whole connection (nothing else may come between
            # its frames): bounded as an HTTP/1.1 head is, whatever the other streams do.
            self.calm(f"a header block took more than {state.header_timeout:g} s")
            return
        send_timeout = state.send_timeout
        if send_timeout:
            for stream in self.streams.values():
                since = stream.stall_since
                if since is not None and now - since >= send_timeout:
                    self.count_send_timeout()
                    self.calm(f"its flow-control window stayed shut for {send_timeout:g} s")
                    return
        idle_since = self.idle_since
        if idle_since is None:
            return
        limit = state.keep_alive if self.served else (state.header_timeout or state.keep_alive)
        if state.draining:
            limit = min(limit, 1.0) if limit else 1.0
        if limit and now - idle_since >= limit:
            self.go_away()
            self.end(NO_ERROR)


def connection_factory(state: ServerState, limits: Http2Limits,
                       tunnels: Tunnels | None = None) -> Any:
    """The "h2" entry of a ConnectionPlan's protocols table."""
    return lambda: Http2Connection(state, limits, tunnels)
