"""The HTTP/2 connection on h2: frames in, streams out, each stream served as a request.

h2 (H2Connection, server side, inbound headers validated) is the state machine; this is the
thin adapter around it: bytes from the transport go to h2, its events are dispatched through a
table to one method each, and what h2 has to send is written once per batch. A stream
(stream.py) is started per request head and served by the worker's request handler (the ASGI
pipeline), as an HTTP/1.1 request is; it never sees a frame.

Flow control both ways, tied to the app. Request bodies: a stream's window is reopened only as
the app reads its body (Http2Stream.read_body -> acknowledge), so a client cannot make us
buffer more than a window per stream; the connection's window is large (the streams' windows
bound memory) so that one stream whose app does not read cannot block the others. Responses:
send_data sends what the client's windows allow and returns an awaitable for the rest, which
waits for WINDOW_UPDATE; the transport's own buffer adds the usual drain(). --send-timeout
bounds both waits: a client that keeps its windows shut (or opens them a byte at a time) or
stops reading is cut off (ServerState.tick -> check_timeouts).

Attacks, each bounded by a limit (limits.py, the --http2-* options): concurrent streams (h2
enforces SETTINGS_MAX_CONCURRENT_STREAMS; we also refuse a stream while as many of our tasks
still run on this connection, since a reset stream's task may not have ended yet), a reset
budget (rapid reset: GOAWAY ENHANCE_YOUR_CALM), a control-frame budget (PING and SETTINGS
floods: GOAWAY ENHANCE_YOUR_CALM; and reading stops while our outbound buffer is above its
high-water mark, so that a client that does not read cannot make us queue replies), header
blocks bounded before decoding (HeaderBlockBuffer) and after (hpack's max_header_list_size:
HPACK bombs), and a stream count per connection after which the connection is drained.

Tunnels (RFC 8441 extended CONNECT, tunnel.py): with a hook for a :protocol (WebSocket, unless
--ws none) the connection advertises SETTINGS_ENABLE_CONNECT_PROTOCOL, and a CONNECT naming it
is handed over as a TunnelStream, which counts against the concurrent streams as any stream.

Drain (TERM, HUP, recycle, or --http2-max-streams reached): a GOAWAY carrying the last stream
id we took, written by hand because h2 refuses to send anything after its own GOAWAY; streams
above it are refused (REFUSED_STREAM, the client may retry them elsewhere); the streams in
flight finish, within --graceful-timeout; then h2's final GOAWAY and the close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from ..errors import ParseError
from ..http1.connection import FlowControlledProtocol
from ..logs import log
from ..net.stages import ConnectionFacts
from ..stream import ClientDisconnected, Waiter, error_response
from .limits import HeaderBlockBuffer, Http2Limits, RateBudget
from .stream import Http2Stream
from .tunnel import TunnelStream

if TYPE_CHECKING:
    from ..http1.connection import ServerState


# h2's configuration, the same for every connection: what arrives is validated by h2; what we
# send we get right ourselves (stream.py), and split Cookie fields are joined in the one pass
# the stream makes over a head anyway: each saves h2 a generator per header.
_CONFIG: Final = h2.config.H2Configuration(
    client_side=False, header_encoding=None, validate_inbound_headers=True,
    normalize_inbound_headers=False, validate_outbound_headers=False,
    normalize_outbound_headers=False)

# RFC 8441: a :protocol (lowercase) -> what takes a stream with it over: hook(stream, the head's
# fields with its pseudo-headers, whether END_STREAM came with it).
Tunnels = dict[bytes, Callable[[TunnelStream, list[tuple[bytes, bytes]], bool], None]]

# A send that has waited on the client's window restarts its --send-timeout clock only when one
# opening of the window lets this much go (or all that was left): a client that opens its
# window a few bytes at a time, however often, makes no progress.
STALL_PROGRESS: Final = 1024


class Http2Connection(FlowControlledProtocol):
    """One HTTP/2 connection (see the module docstring)."""

    __slots__ = ("state", "limits", "facts", "client", "server", "h2", "streams", "served",
                 "idle_since", "resets", "control", "goaway_id", "flush_pending", "drainers",
                 "tunnels", "_dispatch")

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
        self.goaway_id: int | None = None  # the last stream id of our first GOAWAY
        self.flush_pending = False
        self.drainers: list[asyncio.Future] = []  # streams waiting in drain()
        conn = self.h2 = h2.connection.H2Connection(config=_CONFIG)
        settings = {
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
        }
        if self.tunnels:
            settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1
        conn.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        conn.decoder.max_header_list_size = limits.max_header_list_size
        buffer = HeaderBlockBuffer(limits.max_continuation_frames, limits.max_header_list_size)
        buffer.max_frame_size = conn.max_inbound_frame_size
        conn.incoming_buffer = buffer
        self._dispatch: dict[type, Callable[[Any], None]] = {
            h2.events.RequestReceived: self.on_request,
            h2.events.DataReceived: self.on_data,
            h2.events.StreamEnded: self.on_end,
            h2.events.StreamReset: self.on_reset,
            h2.events.WindowUpdated: self.on_window,
            h2.events.RemoteSettingsChanged: self.on_settings,
            h2.events.PingReceived: self.on_ping,
            h2.events.ConnectionTerminated: self.on_goaway,
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
        conn = self.h2
        conn.initiate_connection()
        extra = self.limits.connection_window - 65535
        if extra > 0:
            conn.increment_flow_control_window(extra)
        self.flush()
        if state.draining:
            self.go_away()
        if state.debug:
            log.debug("HTTP/2 connection from %s", self.client)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued its GOAWAY (with ENHANCE_YOUR_CALM for the limits it enforces).
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
            self.end(ErrorCodes.INTERNAL_ERROR)
            return
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

    # h2 events

    def on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        state = self.state
        if self.goaway_id is not None and stream_id > self.goaway_id:
            self.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)  # after our GOAWAY
            return
        if len(self.streams) >= self.limits.max_concurrent_streams:
            # h2 counts open streams; a reset stream's task may still run: refuse, and count
            # it against the reset budget (a client resetting and reopening at speed).
            self.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
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
        if stream.content_length is None and event.stream_ended is None:
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

    def on_data(self, event: h2.events.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        length = event.flow_controlled_length
        if stream is None or stream.response_complete:
            if length:  # nobody will read it: give the window back at once
                self.h2.acknowledge_received_data(length, event.stream_id)
            return
        stream.body_received += len(event.data)
        body_limit = self.state.limits.body
        if body_limit and stream.body_received > body_limit:
            self.h2.acknowledge_received_data(length, event.stream_id)
            if stream.response_started:
                self.reset(stream)
            else:
                stream.feed_disconnect()
                self.answer(event.stream_id, 413)
            return
        stream.feed_body(event.data, length)

    def on_end(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.feed_end()

    def on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.feed_disconnect()
        if event.remote_reset:
            self.spend_reset()

    def on_window(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.window_waiter is not None:
                stream.window_waiter.wake()
        else:
            self.wake_windows()

    def on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        if not self.control.spend(self.state.loop.time()):
            self.calm("SETTINGS flood")
            return
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self.wake_windows()

    def on_ping(self, event: h2.events.PingReceived) -> None:
        if not self.control.spend(self.state.loop.time()):
            self.calm("PING flood")

    def on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        # h2 will send nothing after the client's GOAWAY: what is in flight cannot finish.
        self.end(None)

    # decisions on the budgets

    def spend_reset(self) -> None:
        if not self.resets.spend(self.state.loop.time()):
            self.calm(f"more than {self.limits.max_resets} stream resets a second")

    def calm(self, why: str) -> None:
        """A client abusing the protocol: GOAWAY ENHANCE_YOUR_CALM, and close."""
        log.info("HTTP/2 connection from %s: %s: GOAWAY ENHANCE_YOUR_CALM", self.client, why)
        self.end(ErrorCodes.ENHANCE_YOUR_CALM)

    # writing, for the streams

    def count_send_timeout(self) -> None:
        counts = self.state.counts
        if counts is not None:
            counts.send_timed_out()

    def flush(self) -> None:
        """Write what h2 has to send."""
        self.flush_pending = False
        if not self.closed:
            data = self.h2.data_to_send()
            if data:
                self.transport.write(data)

    def schedule_flush(self) -> None:
        """Write what h2 has to send at the end of this loop iteration: the frames of the
        streams served in one iteration go out in one write."""
        if not self.flush_pending:
            self.flush_pending = True
            self.state.loop.call_soon(self.flush)

    def send_headers(self, stream: Http2Stream, fields: list, end: bool) -> None:
        try:
            self.h2.send_headers(stream.stream_id, fields, end_stream=end)
        except h2.exceptions.ProtocolError as exc:  # the stream is gone (reset, closed)
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
        conn = self.h2
        stream_id = stream.stream_id
        try:
            size = len(data)
            window = conn.local_flow_control_window(stream_id)
            if size <= window:
                if size <= conn.max_outbound_frame_size:
                    conn.send_data(stream_id, data, end_stream=end)
                else:
                    self._send_frames(stream_id, data, end)
                if end:
                    self.stream_finished(stream)
                return None
            if window > 0:
                self._send_frames(stream_id, data[:window], False)
                data = data[window:]
            return data
        except h2.exceptions.ProtocolError as exc:  # reset or closed meanwhile
            stream.feed_disconnect()
            raise ClientDisconnected(str(exc)) from None

    def _send_frames(self, stream_id: int, data: bytes, end: bool) -> None:
        step = self.h2.max_outbound_frame_size
        last = len(data) - step
        for at in range(0, len(data), step):
            self.h2.send_data(stream_id, data[at:at + step], end_stream=end and at >= last)

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
            self.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)

    def reset_stream(self, stream_id: int, code: int) -> None:
        """RST_STREAM, unless the stream has closed meanwhile (a reset from the client later
        in the same batch of frames, say)."""
        try:
            self.h2.reset_stream(stream_id, code)
        except h2.exceptions.ProtocolError:
            pass

    def acknowledge(self, stream: Http2Stream, size: int) -> None:
        """The app has read `size` flow-controlled bytes of the stream's body."""
        if not self.closed and not stream.closed:
            try:
                self.h2.acknowledge_received_data(size, stream.stream_id)
            except h2.exceptions.ProtocolError:
                return
            self.schedule_flush()

    def wake_windows(self) -> None:
        for stream in self.streams.values():
            if stream.window_waiter is not None:
                stream.window_waiter.wake()

    def reset(self, stream: Http2Stream) -> None:
        """End a stream at once (RST_STREAM INTERNAL_ERROR unless it has already ended)."""
        if not stream.closed and not self.closed:
            self.reset_stream(stream.stream_id, ErrorCodes.INTERNAL_ERROR)
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
        conn = self.h2
        try:
            if conn.local_flow_control_window(stream_id) >= len(body):
                conn.send_headers(stream_id, fields)
                conn.send_data(stream_id, body, end_stream=True)
            else:
                fields[-2] = (b"content-length", b"0")
                conn.send_headers(stream_id, fields, end_stream=True)
            stream = conn.streams.get(stream_id)
            if stream is not None and not stream.closed:
                conn.reset_stream(stream_id, ErrorCodes.NO_ERROR)  # the body: not wanted
        except h2.exceptions.ProtocolError:
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
                self.end(ErrorCodes.NO_ERROR)  # drained: the final GOAWAY, and the close

    # tunnels (RFC 8441 extended CONNECT: tunnel.py)

    def open_tunnel(self, stream: Http2Stream, event: h2.events.RequestReceived) -> bool:
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
        hook(tunnel, headers, event.stream_ended is not None)
        return True

    def end_tunnel(self, stream: Http2Stream) -> None:
        """END_STREAM on a tunnel whose bytes have all gone. Not a response's end
        (stream_finished): not counted in the metrics; but as after a response, a client
        that has not ended its side is told to stop (RST_STREAM NO_ERROR)."""
        try:
            self.h2.send_data(stream.stream_id, b"", end_stream=True)
        except h2.exceptions.ProtocolError:  # reset or closed meanwhile
            return
        if not stream.body_complete:
            self.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)
        self.schedule_flush()

    # the end

    def go_away(self) -> None:
        """Drain: a GOAWAY with the last stream id taken; the streams in flight go on."""
        if self.goaway_id is not None or self.closed:
            return
        self.goaway_id = last = self.h2.highest_inbound_stream_id
        self.flush()  # what h2 has queued goes first
        self.transport.write(GoAwayFrame(stream_id=0, last_stream_id=last,
                                         error_code=ErrorCodes.NO_ERROR).serialize())
        if not self.streams:
            self.end(ErrorCodes.NO_ERROR)

    def end(self, error: int | None) -> None:
        """Close the connection; with `error`, after h2's GOAWAY with that code (None: h2 has
        already queued its own, or will send nothing more)."""
        if self.closed:
            return
        if error is not None:
            try:
                self.h2.close_connection(error, last_stream_id=self.goaway_id)
            except h2.exceptions.ProtocolError:
                pass  # h2 is already closed
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
            self.end(ErrorCodes.NO_ERROR)


def connection_factory(state: ServerState, limits: Http2Limits,
                       tunnels: Tunnels | None = None) -> Any:
    """The "h2" entry of a ConnectionPlan's protocols table."""
    return lambda: Http2Connection(state, limits, tunnels)
