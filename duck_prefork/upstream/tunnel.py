"""A 101's byte tunnel: the client's connection and the upstream's, each end's bytes written
to the other as they come.

The Tunnel is the client connection's protocol after the switch (net.stages.switch_protocol,
as a WebSocket session is) and the upstream connection's delegate (pool.UpstreamConnection
hands it what arrives). Flow control both ways: when one end's transport has more than
`buffer` bytes waiting to be written, the other end is not read until it drains, so at most
about that much waits each way however fast one side sends and however slowly the other reads.

When one end closes (or is lost), the other is closed once what it still has to write has gone:
a clean close, never a reset. A tunnel that carries nothing either way for `timeout` seconds
(--upstream-tunnel-timeout; 0: no limit) is closed, by the worker's once-a-second sweep (it
sits in ServerState.websockets, whose members the sweep and the drain look after). On drain
(TERM, HUP, ...) a tunnel is closed at once, both ends: it has no close handshake of its own
to offer, and a client told nothing else reconnects to another worker; --graceful-timeout
bounds the close as for WebSockets.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..logs import log
from ..net.stages import ConnectionFacts, switch_protocol

# A tunnel end that was closed and still is not gone this many seconds later is aborted (its
# peer does not read what was left to write).
CLOSE_WAIT = 5.0


class Tunnel(asyncio.Protocol):
    """One tunnel: the client end's protocol, and the upstream end's delegate."""

    transport: asyncio.Transport  # the client's; set by take_over
    facts: ConnectionFacts

    def __init__(self, state: Any, upstream: Any, timeout: float, buffer: int,
                 name: str) -> None:
        self.state = state  # the worker's ServerState
        self.upstream = upstream  # the pool.UpstreamConnection
        self.timeout = timeout
        self.buffer = buffer
        self.name = name  # the upstream's, for the log
        self.client: tuple | None = None
        self.closed = False  # both ends are closing
        self.closed_at = 0.0
        self.client_gone = False
        self.last_activity = state.loop.time()

    def switch(self, transport: asyncio.Transport, facts: ConnectionFacts, client_data: bytes,
               upstream_data: bytes, read_paused: bool, write_paused: bool) -> None:
        """Take the client's connection over (with the bytes it sent after its request head)
        and pass on what the upstream sent after its 101 head."""
        upstream_transport = self.upstream.transport
        upstream_transport.set_write_buffer_limits(high=self.buffer)
        transport.set_write_buffer_limits(high=self.buffer)
        if self.upstream.read_paused:
            self.upstream.read_paused = False
            upstream_transport.resume_reading()
        switch_protocol(transport, self, facts, client_data, read_paused, write_paused)
        if upstream_data:
            self.from_upstream(upstream_data)
        if self.state.draining:  # a 101 answered during a drain: the tunnel ends at once
            self.shutdown("the worker is stopping")

    # --- the client end (asyncio callbacks, and take_over for the switch) -------------------

    def take_over(self, transport: asyncio.Transport, facts: ConnectionFacts,
                  read_paused: bool, write_paused: bool) -> None:
        self.transport = transport
        self.facts = facts
        self.client = facts.client
        self.state.websockets.add(self)
        if write_paused:
            self.pause_writing()
        if read_paused and not self.upstream.write_paused:
            transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.state.loop.time()
        upstream = self.upstream
        if not upstream.closed:
            upstream.transport.write(data)

    def eof_received(self) -> bool:
        self.shutdown("the client closed its side")
        return True  # close() below ends it once the last bytes are written

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_gone = True
        if not self.closed:
            self.shutdown("the client connection was lost")
        self.state.websockets.discard(self)
        self.state.check_drained()

    def pause_writing(self) -> None:  # the client is behind: stop reading the upstream
        upstream = self.upstream
        if not upstream.closed:
            upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        upstream = self.upstream
        if not upstream.closed:
            upstream.transport.resume_reading()

    # --- the upstream end (called by UpstreamConnection) --------------------------------------

    def from_upstream(self, data: bytes) -> None:
        self.last_activity = self.state.loop.time()
        if not self.client_gone and not self.transport.is_closing():
            self.transport.write(data)

    def upstream_eof(self) -> None:
        self.shutdown(f"upstream {self.name} closed its side")

    def upstream_lost(self) -> None:
        if not self.closed:
            self.shutdown(f"upstream {self.name} connection lost")

    def upstream_pause_writing(self) -> None:  # the upstream is behind: stop reading the client
        if not self.client_gone and not self.transport.is_closing():
            self.transport.pause_reading()

    def upstream_resume_writing(self) -> None:
        if not self.client_gone and not self.transport.is_closing():
            self.transport.resume_reading()

    # --- the end, and what the worker's sweep and drain call ---------------------------------

    def shutdown(self, why: str) -> None:
        """Close both ends once what each has to write is written."""
        if self.closed:
            return
        log.debug("closing the tunnel from %s to upstream %s: %s", self.client, self.name, why)
        self.closed = True
        self.closed_at = self.state.loop.time()
        self.upstream.close()
        if not self.client_gone:
            self.transport.close()

    def check_timeouts(self, now: float) -> None:
        if self.closed:
            if now - self.closed_at >= CLOSE_WAIT:
                self.abort()  # an end that does not read what was left for it
            return
        if self.timeout and now - self.last_activity >= self.timeout:
            self.shutdown(f"nothing either way for {self.timeout:g} s "
                          "(--upstream-tunnel-timeout)")

    def going_away(self) -> None:
        self.shutdown("the worker is stopping")

    def abort(self) -> None:
        self.closed = True
        self.upstream.abort()
        if not self.client_gone:
            self.transport.abort()
