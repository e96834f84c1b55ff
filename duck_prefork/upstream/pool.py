"""A worker's connections to its upstreams: one Pool per upstream.

An UpstreamConnection is an asyncio protocol over one connection to an upstream, speaking
HTTP/1.1 through the client codec (codec.py): what the upstream answers is held to h11's rules
(a response that breaks them is an UpstreamFailure, 502). Response events are parsed as they
arrive and wait in a queue for the exchange; past HIGH_WATER bytes of body the socket is not
read until the exchange has taken them, so a slow client slows the upstream down and a worker
never holds more than about that much per exchange.

A Pool lends connections to exchanges and takes them back: kept for the next request when both
sides of the exchange are done and the upstream keeps the connection alive, else closed. At
most `max_connections` are open at once (0: no limit); an exchange beyond it waits for one to
come back or close (up to --upstream-timeout, then 504). An idle connection is closed after
IDLE_TIMEOUT, and forgotten at once when the upstream closes it, so it is never reused after
that; the race left (an upstream closing an idle connection just as it is lent out) is what the
exchange's one retry is for.

Timeouts, without a timer per request: once a second the Pools' sweep (Pools.sweep) closes
idle connections past IDLE_TIMEOUT and fails the exchanges whose upstream has sent nothing for
--upstream-timeout while they waited on it (UpstreamFailure 504). Only a new connection's
connect has its own timer (asyncio.wait_for), since there is no connection to sweep yet.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from ..errors import UpstreamFailure, UpstreamResponseError
from ..logs import log
from ..net.stages import TransportProtocol
from ..stream import Waiter
from .codec import CONNECTION_CLOSED, NEED_DATA, ClientCodec
from .routes import Upstream

__all__ = ["UpstreamFailure", "UpstreamConnection", "Pool", "Pools"]

# Response body bytes an exchange may have queued before the upstream is no longer read.
HIGH_WATER = 64 * 1024
# An idle keep-alive connection to an upstream is closed after this many seconds (the common
# upstreams keep theirs longer: gunicorn's gthread and uvicorn 2 s and 5 s... so, shorter than
# most, and the race with a shorter one is the retry's).
IDLE_TIMEOUT = 4.0


class UpstreamConnection(TransportProtocol):
    """One connection to an upstream: the client codec (codec.py), response events queued for
    the exchange, flow control both ways; once a 101 is answered, the upstream end of a tunnel
    (tunnel.py). Pausing, resuming, closing and aborting are TransportProtocol's."""

    def __init__(self, pool: Pool) -> None:
        super().__init__()
        self.pool = pool
        self.codec = ClientCodec()
        self.events: deque[Any] = deque()
        self.buffered = 0  # body bytes in self.events
        self.waiter = Waiter()  # the exchange, waiting for an event or for drain
        self.failure: UpstreamFailure | None = None  # why the exchange cannot go on
        self.reused = False  # lent before: it may have been closed by the upstream meanwhile
        self.received_any = False  # bytes came back during the current exchange
        self.waiting_since: float | None = None  # the exchange waits on the upstream since
        self.idle_since = 0.0
        self.tunnel: Any = None  # the Tunnel, once this connection carries one

    # --- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_upstream(data)
            return
        if self.closed:
            return
        if self.pool.is_idle(self):
            # Bytes nobody asked for: the upstream is out of step (or closing with a 408).
            log.debug("upstream %s sent %d bytes on an idle connection; closing it",
                      self.pool.upstream.name, len(data))
            self.abort()
            return
        self.received_any = True
        if self.waiting_since is not None:
            self.waiting_since = self.pool.loop.time()  # progress: the timeout starts again
        self._parse(data)

    def eof_received(self) -> bool:
        if self.tunnel is not None:
            self.tunnel.upstream_eof()
            return True
        if not self.closed and not self.pool.is_idle(self):
            self._parse(b"")
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.tunnel is not None:
            self.tunnel.upstream_lost()
            return
        if self.failure is None and not self.codec.response_done:
            # (a reset: eof_received never came, so the codec never learnt of the close)
            why = f"connection lost ({exc})" if exc else "connection closed"
            self.failure = UpstreamFailure(502, f"upstream {self.pool.upstream.name}: {why}")
        self.waiter.wake()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.upstream_pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.upstream_resume_writing()
        self.waiter.wake()

    # --- for the exchange -----------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        """Give the codec the upstream's bytes (b"": it closed) and queue what it makes of
        them."""
        codec = self.codec
        events = self.events
        try:
            codec.receive(data)
            while True:
                event: Any = codec.next_event()
                if event is NEED_DATA:
                    break
                events.append(event)
                if type(event) is bytes:
                    self.buffered += len(event)
                elif event is CONNECTION_CLOSED:
                    break
        except UpstreamResponseError as exc:
            self.failure = UpstreamFailure(502, f"upstream {self.pool.upstream.name}: {exc}")
            self.abort()
        if self.buffered > HIGH_WATER:
            self.pause_reading()
        self.waiter.wake()

    def write(self, data: bytes) -> None:
        """Write request bytes (nothing once the connection is closing)."""
        if data and not self.closed:
            self.transport.write(data)

    async def next_event(self) -> Any:
        """The next response event (codec.py): a Head, body bytes, END_OF_MESSAGE,
        CONNECTION_CLOSED. Raises UpstreamFailure when there is none to come."""
        events = self.events
        while not events:
            if self.failure is not None:
                raise self.failure
            if self.closed:
                raise UpstreamFailure(502, f"upstream {self.pool.upstream.name}: connection "
                                           "closed")
            self.waiting_since = self.pool.loop.time()
            try:
                await self.waiter.wait(self.pool.loop)
            finally:
                self.waiting_since = None
        event = events.popleft()
        if type(event) is bytes:
            self.buffered -= len(event)
            if self.buffered <= HIGH_WATER // 2:
                self.resume_reading()
        return event

    async def drain(self) -> None:
        """Wait until the upstream has taken what was written (its buffer is below the
        low-water mark), has answered (it may not read the rest of a body it answered early),
        or the connection is lost. Counts as waiting on the upstream."""
        while self.write_paused and not self.closed and self.failure is None \
                and self.codec.awaiting_head:
            self.waiting_since = self.pool.loop.time()
            try:
                await self.waiter.wait(self.pool.loop)
            finally:
                self.waiting_since = None

    def time_out(self, now: float) -> None:
        """Called by the sweep: the upstream has sent nothing for --upstream-timeout."""
        if self.failure is None:
            timeout = self.pool.timeout
            what = "no response" if self.codec.awaiting_head else "nothing more"
            self.failure = UpstreamFailure(
                504, f"upstream {self.pool.upstream.name}: {what} within --upstream-timeout "
                     f"{timeout:g} s")
        self.abort()
        self.waiter.wake()

    def reusable(self) -> bool:
        """Both sides of the exchange are done and the upstream keeps the connection."""
        return not self.closed and self.failure is None and not self.events \
            and self.codec.reusable()


class Pool:
    """The connections of one worker to one upstream (see the module docstring)."""

    def __init__(self, upstream: Upstream, max_connections: int, timeout: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.upstream = upstream
        self.max_connections = max_connections
        self.timeout = timeout  # --upstream-timeout; 0: no limit
        self.loop = loop
        self.idle: list[UpstreamConnection] = []  # most recently used last (taken first)
        self.busy: set[UpstreamConnection] = set()
        self.connecting = 0
        self.waiters: deque[asyncio.Future] = deque()
        self.opened = 0  # connections opened in the worker's life (for the tests and logs)

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.busy) + self.connecting

    def is_idle(self, connection: UpstreamConnection) -> bool:
        return connection not in self.busy

    async def acquire(self, fresh: bool = False) -> UpstreamConnection:
        """A connection for one exchange: an idle one (unless `fresh`), else a new one, else
        the first to come back or close. Raises UpstreamFailure (502 refused, 504 timeout)."""
        while True:
            if not fresh:
                while self.idle:
                    connection = self.idle.pop()
                    if not connection.closed:
                        connection.reused = True
                        return self._lend(connection)
            if not self.max_connections or self.size < self.max_connections:
                return self._lend(await self._connect())
            if fresh and self.idle:
                self.idle.pop(0).close()  # make room for the fresh one
                continue
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            handed: UpstreamConnection | None  # (None: the right to open one)
            try:
                if self.timeout:
                    handed = await asyncio.wait_for(waiter, self.timeout)
                else:
                    handed = await waiter
            except TimeoutError:
                raise UpstreamFailure(504, f"upstream {self.upstream.name}: no connection "
                                           f"free within --upstream-timeout {self.timeout:g} s "
                                           f"({self.max_connections} open: "
                                           "--upstream-max-connections)") from None
            except asyncio.CancelledError:
                # Handed a connection just as the exchange was cancelled: give it back.
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self._give_back(waiter.result())
                raise
            if handed is not None:
                if not handed.closed and not fresh:
                    handed.reused = True
                    return self._lend(handed)
                self._give_back(handed)  # (fresh wanted: make room on the next turn)

    def _lend(self, connection: UpstreamConnection) -> UpstreamConnection:
        self.busy.add(connection)
        connection.received_any = False
        return connection

    async def _connect(self) -> UpstreamConnection:
        upstream = self.upstream
        loop = self.loop
        self.connecting += 1
        try:
            # (asyncio.timeout: a timer for the connect, where wait_for would add a task)
            async with asyncio.timeout(self.timeout or None):
                if upstream.path:
                    _, connection = await loop.create_unix_connection(
                        lambda: UpstreamConnection(self), upstream.path)
                else:
                    _, connection = await loop.create_connection(
                        lambda: UpstreamConnection(self), upstream.host, upstream.port)
        except BaseException as exc:
            self.connecting -= 1
            self._wake_waiter(None)  # its place is free again
            if isinstance(exc, TimeoutError):
                raise UpstreamFailure(504, f"upstream {upstream.name}: no connection within "
                                           f"--upstream-timeout {self.timeout:g} s") from None
            if isinstance(exc, OSError):
                raise UpstreamFailure(502, f"upstream {upstream.name}: cannot connect: "
                                           f"{exc.strerror or exc}") from None
            raise
        self.connecting -= 1  # (and lent at once: the count stays)
        self.opened += 1
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        """An exchange is done with `connection`: kept for the next if it can be, else closed.
        (Once per lending: a second call does nothing.)"""
        if connection not in self.busy:
            return
        self.busy.discard(connection)
        if not connection.reusable():
            connection.abort() if connection.failure is not None else connection.close()
            self._wake_waiter(None)
            return
        connection.codec.start_next_cycle()
        self._give_back(connection)

    def _give_back(self, connection: UpstreamConnection) -> None:
        """A connection ready for its next request: to the first exchange waiting for one
        (counted in `busy` meanwhile), else to the idle list."""
        self.busy.discard(connection)
        if connection.closed:
            self._wake_waiter(None)
            return
        connection.idle_since = self.loop.time()
        if self._wake_waiter(connection):
            self.busy.add(connection)
        else:
            self.idle.append(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        """`connection` is gone (connection_lost)."""
        if connection in self.idle:
            self.idle.remove(connection)
            self._wake_waiter(None)
        elif connection in self.busy and connection.tunnel is not None:
            self.busy.discard(connection)  # a tunnel's connection counted until it ends
            self._wake_waiter(None)

    def detach(self, connection: UpstreamConnection) -> None:
        """`connection` now carries a tunnel: still counted against --upstream-max-connections
        until it closes, but no longer an exchange's (not swept for --upstream-timeout)."""
        connection.waiting_since = None

    def _wake_waiter(self, connection: UpstreamConnection | None) -> bool:
        """Hand `connection` (or, with None, the right to open one) to the first exchange
        waiting for one. Returns whether someone took it."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    def sweep(self, now: float) -> None:
        timeout = self.timeout
        if timeout:
            for connection in list(self.busy):
                since = connection.waiting_since
                if since is not None and now - since >= timeout:
                    connection.time_out(now)
        while self.idle and now - self.idle[0].idle_since >= IDLE_TIMEOUT:
            self.idle.pop(0).close()  # (forget() finds it gone from idle)

    def close(self) -> None:
        """The worker stops: close the idle connections (busy ones end with their exchange)."""
        for connection in self.idle:
            connection.close()
        self.idle.clear()


class Pools:
    """A worker's pools, one per upstream, and their once-a-second sweep."""

    def __init__(self, upstreams: list[Upstream], max_connections: int, timeout: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.by_upstream = {upstream: Pool(upstream, max_connections, timeout, loop)
                            for upstream in upstreams}
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._timer = self.loop.call_at(int(self.loop.time()) + 1.0, self._tick)

    def _tick(self) -> None:
        self._timer = self.loop.call_at(int(self.loop.time()) + 1.0, self._tick)
        now = self.loop.time()
        for pool in self.by_upstream.values():
            try:
                pool.sweep(now)
            except Exception:  # a bug: logged, and the sweep goes on next second
                log.exception("sweeping the connections to upstream %s failed",
                              pool.upstream.name)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pool in self.by_upstream.values():
            pool.close()
