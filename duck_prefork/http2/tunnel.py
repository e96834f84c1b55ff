"""An HTTP/2 stream that carries a tunnel (RFC 8441 extended CONNECT: a WebSocket), as an asyncio
transport for the protocol that takes it over.

Http2Connection hands a CONNECT whose :protocol it has a hook for (its tunnels table) to that
hook as a TunnelStream, which is an Http2Stream (the head, the response's HEADERS through
send_head) and, to the protocol given to start(), what a socket's transport is to a
connection's protocol, so that the protocol (asgi.websocket.WebSocketSession) is the same
over both:

  data_received   each DATA frame's bytes as they arrive, and only then is their window
                  reopened (acknowledge): while the protocol has paused reading they wait
                  here unacknowledged, so a client can never have more than the stream's
                  window buffered (--http2 limits: the initial window)
  eof_received    the client's END_STREAM (RFC 8441 4: the TCP FIN of the tunnel)
  connection_lost the client's RST_STREAM, the connection's end, or our own close or abort
                  done (called soon, as asyncio does; the stream is released then)
  write()         DATA frames as the client's windows allow, in order: what a window holds
                  up queues behind it, and the protocol is told pause_writing until it is
                  out (its writer awaits its drain); the stall rule is the connection's
                  (--send-timeout on a shut window, as for every stream)
  close()         END_STREAM once what is queued is out (the client, if it has not ended
                  its side, is told to stop: RST_STREAM NO_ERROR, as after a response);
                  before any answer, RST_STREAM CANCEL
  abort()         RST_STREAM CANCEL at once

Bytes of a tunnel are not a request body: --limit-request-body does not apply, and the end of a
tunnel is not counted as a response by the metrics (a WebSocket over HTTP/1.1 is not either).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any

from ..stream import ClientDisconnected, Waiter
from .machine import CANCEL
from .stream import Http2Stream

if TYPE_CHECKING:
    from .connection import Http2Connection


class WindowWaiter(Waiter):
    """A tunnel's window_waiter (what the connection wakes on WINDOW_UPDATE, and a send
    waiting for the client's window waits on): a Waiter that also remembers a wake that came
    while nobody waited. A tunnel's send that the window held up is awaited by its own task
    (the pump), which starts a loop iteration later; a WINDOW_UPDATE read in between must
    not be lost, or the send would wait for one the client has no reason to send."""

    __slots__ = ("woken",)

    def __init__(self) -> None:
        super().__init__()
        self.woken = False

    def wait(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        self._future = future = loop.create_future()
        if self.woken:
            self.woken = False
            future.set_result(None)  # the waiter re-checks the window: at worst, no progress
        return future

    def wake(self) -> None:
        future = self._future
        if future is None or future.done():
            self.woken = True
        else:
            future.set_result(None)


class TunnelStream(Http2Stream):
    """One extended CONNECT's stream, a transport to the protocol that took it over."""

    __slots__ = ("protocol", "reading", "held", "eof_held", "outbox", "pump", "closing",
                 "done")

    def __init__(self, connection: Http2Connection, stream_id: int,
                 headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(connection, stream_id, headers)
        self.protocol: Any = None  # the asyncio.Protocol-like given to start()
        self.reading = True
        self.held: deque[tuple[bytes, int]] = deque()  # (data, flow-controlled length)
        self.eof_held = False  # the client's END_STREAM came behind held data
        self.outbox: list[bytes] = []  # written while a send waits for the client's window
        self.pump: asyncio.Task | None = None  # that send, and then the outbox's
        self.closing = False  # close() was called: END_STREAM once the outbox is out
        self.done = False  # connection_lost is scheduled, the stream released with it
        self.window_waiter = WindowWaiter()

    # The connection adds each DATA frame's size to the body's, for --limit-request-body;
    # a tunnel's bytes are not a body.
    @property
    def body_received(self) -> int:
        return 0

    @body_received.setter
    def body_received(self, value: int) -> None:
        pass

    def start(self, protocol: Any) -> None:
        """Hand the stream to `protocol` (take_over(transport, facts, read_paused,
        write_paused), as net.stages.switch_protocol does for a socket)."""
        self.protocol = protocol
        protocol.take_over(self, self.connection.facts, False, False)

    def respond(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole response instead of a tunnel (a refusal): head, body, END_STREAM."""
        try:
            self.send_head(status, [*headers, (b"content-length", b"%d" % len(body))], b"",
                           True)
        except ClientDisconnected:
            self._finish()
            return
        self.write(body)
        self.close()

    # --- fed by the connection --------------------------------------------------------------

    def feed_body(self, data: bytes, flow_length: int) -> None:
        if self.done:
            self._discard(flow_length)
            return
        if not self.reading or self.held or self.protocol is None:
            self.held.append((data, flow_length))  # not acknowledged: the window stays shut
            return
        self.protocol.data_received(data)
        if flow_length:
            self.connection.acknowledge(self, flow_length)

    def feed_end(self) -> None:
        self.body_complete = True
        if self.held:
            self.eof_held = True
        else:
            self._eof()

    def feed_disconnect(self) -> None:
        super().feed_disconnect()  # wakes a send waiting for the window: it raises
        self.stall_since = None  # (nothing is waiting on this client any more)
        self._finish()

    def _eof(self) -> None:
        protocol = self.protocol
        if protocol is not None and not self.done and not protocol.eof_received():
            self.close()

    # --- the transport ----------------------------------------------------------------------

    def send_body(self, body: bytes, more_body: bool) -> Awaitable[None] | None:
        if not body and more_body:
            return None  # (send_head's empty first body: no empty DATA frame)
        return super().send_body(body, more_body)

    def write(self, data: bytes) -> None:
        if self.closing or self.closed:
            return
        if self.pump is not None:
            self.outbox.append(data)
            return
        try:
            waiting = self.send_body(data, True)
        except ClientDisconnected:
            return  # the stream is gone: feed_disconnect has told the protocol
        if waiting is not None:
            if self.protocol is not None:
                self.protocol.pause_writing()
            self.pump = self.connection.state.loop.create_task(self._send_queued(waiting))

    async def _send_queued(self, waiting: Awaitable[None]) -> None:
        """Wait for the send the client's window (or the connection's transport) held up,
        then send what queued behind it, in order; then resume the protocol's writer."""
        try:
            await waiting
            while self.outbox:
                outbox, self.outbox = self.outbox, []
                waiting_more = self.send_body(b"".join(outbox), True)
                if waiting_more is not None:
                    await waiting_more
        except ClientDisconnected:
            self.outbox = []
        finally:
            self.pump = None
        if self.protocol is not None:
            self.protocol.resume_writing()
        if self.closing:
            self._end()

    def close(self) -> None:
        if self.closing or self.done:
            return
        self.closing = True
        if self.pump is None:
            self._end()

    def _end(self) -> None:
        if self.closed:
            self._finish()
        elif not self.response_started:
            self.abort()  # nothing was answered: no END_STREAM without a head
        else:
            self.ended = self.closed = True
            self.connection.end_tunnel(self)
            self._finish()

    def abort(self) -> None:
        connection = self.connection
        if not self.closed and not connection.closed:
            connection.reset_stream(self.stream_id, CANCEL)
            connection.schedule_flush()
        self.outbox = []
        self.feed_disconnect()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
        held = self.held
        while held and self.reading and not self.done:
            data, flow_length = held.popleft()
            self.protocol.data_received(data)
            if flow_length:
                self.connection.acknowledge(self, flow_length)
        if self.eof_held and not held:
            self.eof_held = False
            self._eof()

    def is_closing(self) -> bool:
        return self.closing or self.closed

    def get_write_buffer_size(self) -> int:
        """0: what waits for the client's window is the connection's to time (--send-timeout
        on its streams' windows and on its transport), not the protocol's."""
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.connection.transport.get_extra_info(name, default)

    # --- the end ----------------------------------------------------------------------------

    def _finish(self) -> None:
        """Once: tell the protocol the stream is gone, and release it (both soon, as asyncio
        calls connection_lost: never inside the connection's own loops over its streams)."""
        if not self.done:
            self.done = True
            self._discard(sum(flow_length for _, flow_length in self.held))
            self.held.clear()
            self.connection.state.loop.call_soon(self._lost)

    def _discard(self, flow_length: int) -> None:
        """Bytes nobody will read: the connection's window gets them back (the stream's, if
        it is still open, too: the machine skips a closed one)."""
        connection = self.connection
        if flow_length and not connection.closed:
            connection.machine.acknowledge_received_data(flow_length, self.stream_id)
            connection.schedule_flush()

    def _lost(self) -> None:
        protocol = self.protocol
        if protocol is not None:
            protocol.connection_lost(None)
        self.release()
