"""What happens to a connection between accept and its wire protocol, and the protocol switch.

    accept -> stages, each optional (a PROXY header, a TLS handshake, ...) -> protocol choice
           -> the wire protocol (HTTP/1.1; later HTTP/2) -> maybe a switch (WebSocket, tunnel)

A listener's connections follow its ConnectionPlan: a sequence of stages, then the wire
protocol that the connection's facts name (`ConnectionFacts.protocol`: "http/1.1" unless a
stage learned otherwise, from ALPN or HTTP/2's prior-knowledge preface). A plan with no stage
costs nothing: the acceptor is handed the wire protocol's own factory, and the protocol's
connection_made reads the facts off the transport. A plan with stages gives the transport a
StagedConnection, which runs the stages one after the other, then switches to the protocol.

A stage (Stage) has one job and hands on three things: the transport (its own or, after TLS,
the one that decrypts), the bytes it read and did not consume, and the facts it learned or
rewrote (the PROXY header's addresses and TLVs, the TLS session's scheme, ALPN and
certificate). It has its own timeout, enforced by the worker's once-a-second sweep
(ServerState.tick calls StagedConnection.check_timeouts); during a drain it is cut to
DRAIN_STAGE_TIMEOUT, as for a connection that has not sent its first request head. A stage
that fails, times out or sees the client close ends the connection with no response: before
the wire protocol there is no one to speak it.

switch_protocol() is the one way a transport passes from one protocol to the next, for the
stages' end and for an upgrade (websocket.py): the next protocol is set on the transport, told
the facts and whether reading and writing are paused (take_over, its connection_made), and
given the bytes already read.

Where the later pieces plug in, each one class here or beside the wire protocols:
  PROXY protocol v1/v2   a Stage (net/proxy_stage.py, --proxy-protocol listeners, trusted
                         peers): reads and strips the header, rewrites facts.client and
                         facts.server, sets facts.scheme from the SSL TLV, facts.proxy to the
                         header and its scope extension; finish(rest)
  TLS (+ ALPN)           a Stage: puts an SSLProtocol on the transport and feeds it the bytes
                         already read; once the handshake is done, sets facts.scheme "https",
                         facts.tls and facts.protocol (ALPN), and finish(b"", transport=the TLS
                         transport); it forwards a connection_lost during the handshake to
                         StagedConnection.connection_lost
  HTTP/2 prior knowledge not a stage: the HTTP/1.1 connection of a trusted peer looks at
                         its first bytes, and a 24-byte preface switches it to "h2" (so a
                         plain listener keeps no stage, and a silent client still gets 408)
  HTTP/2                 the plan's protocols table gains "h2" (a Successor)
  an upstream's 101      a Successor that the HTTP side switches to with switch_protocol
"""

from __future__ import annotations

import asyncio
import functools
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mypy_extensions import mypyc_attr

from ..logs import log

# Wire protocols are named as ALPN names them (RFC 7301): "http/1.1", "h2".
HTTP_1_1 = "http/1.1"
H2 = "h2"

# What a client speaking HTTP/2 with prior knowledge sends first (RFC 9113 3.4).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def is_h2_preface(data: bytes) -> bool | None:
    """True: `data` starts with the whole HTTP/2 preface; False: it cannot; None: too short to
    say."""
    if len(data) >= len(H2_PREFACE):
        return data.startswith(H2_PREFACE)
    return None if H2_PREFACE.startswith(data) else False

# During a drain, a stage has at most this long (as a connection that has not yet sent its
# first request head has), so that a drain does not wait on a connection stuck in a stage.
DRAIN_STAGE_TIMEOUT = 1.0

Address = tuple[Any, ...]  # (host, port) for TCP; (path, None) for a unix socket's server


class ConnectionFacts:
    """What is known about one connection, created once at accept (or once its stages begin)
    and carried through every protocol switch: the addresses, the scheme, the wire protocol
    chosen, and what TLS and a PROXY header told. Stages may rewrite it; the wire protocol and
    the ASGI scope read it (client, server, scheme)."""

    __slots__ = ("client", "server", "scheme", "protocol", "tls", "proxy", "extensions")

    def __init__(self, client: Address | None, server: Address | None, scheme: str = "http",
                 protocol: str = HTTP_1_1) -> None:
        self.client = client  # the peer: (host, port), None for a unix socket's
        self.server = server  # the local end: (host, port), (path, None) for a unix socket
        self.scheme = scheme  # "http" or "https"
        self.protocol = protocol  # the wire protocol to speak once the stages are done
        self.tls: Any = None  # the TLS session's facts (version, cipher, ALPN, certificate)
        self.proxy: Any = None  # the PROXY header (net.proxy_protocol.ProxyHeader)
        # scope["extensions"] entries the stages made for this connection ("tls",
        # "proxy_protocol"), copied into each request's scope; None (no stage): nothing to copy.
        self.extensions: dict[str, Any] | None = None

    def add_extension(self, name: str, value: Any) -> None:
        """Give every request on this connection scope["extensions"][name] = value."""
        if self.extensions is None:
            self.extensions = {}
        self.extensions[name] = value

    @classmethod
    def of(cls, transport: asyncio.BaseTransport) -> ConnectionFacts:
        """The facts a freshly accepted transport tells."""
        peer = transport.get_extra_info("peername")
        sockname = transport.get_extra_info("sockname")
        return cls(tuple(peer[:2]) if isinstance(peer, tuple) else None,
                   tuple(sockname[:2]) if isinstance(sockname, tuple) else (sockname, None))

    def __repr__(self) -> str:
        return (f"ConnectionFacts(client={self.client!r}, server={self.server!r}, "
                f"scheme={self.scheme!r}, protocol={self.protocol!r})")


class Successor(typing.Protocol):
    """A protocol that a connection can be switched to: the wire protocol after the stages, a
    WebSocket after an upgrade, later an upstream tunnel. take_over is its connection_made."""

    def take_over(self, transport: asyncio.Transport, facts: ConnectionFacts,
                  read_paused: bool, write_paused: bool) -> None: ...

    def data_received(self, data: bytes) -> None: ...


def switch_protocol(transport: asyncio.Transport, successor: Successor, facts: ConnectionFacts,
                    data: bytes = b"", read_paused: bool = False,
                    write_paused: bool = False) -> None:
    """Hand `transport` to `successor`: from now on it gets the transport's callbacks; it is
    told the connection's facts and whether reading (by the previous owner's choice) and
    writing (by the transport's buffer) are paused, then given `data`, the bytes that were read
    and not consumed. The previous owner must not touch the transport again."""
    transport.set_protocol(successor)  # type: ignore[arg-type]
    successor.take_over(transport, facts, read_paused, write_paused)
    if data:
        successor.data_received(data)


@mypyc_attr(allow_interpreted_subclasses=True)  # stages may be plain Python (tests, plug-ins)
class Stage:
    """One job on a connection before its wire protocol speaks. A new one is made for each
    connection (the plan holds factories); it is started with the bytes already read, then
    given what else arrives, and ends by calling exactly one of `self.link.finish(...)` and
    `self.link.fail(why)`. It may read and rewrite `self.link.facts`, write to and pause
    `self.link.transport`, or (TLS) put a protocol of its own on it.

    `timeout`: the seconds it may take from its start, 0 for no limit; `name`: for the log."""

    name = "stage"
    timeout = 0.0

    def start(self, link: StagedConnection, data: bytes) -> None:
        self.link = link
        if data:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError

    def eof_received(self) -> None:
        self.link.fail("the client closed its side")

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone (the StagedConnection forgets it right after)."""


StageFactory = Callable[[], Stage]


class Registry(typing.Protocol):
    """Where a worker keeps its connections (http1's ServerState): StagedConnections are in
    `staging` from accept until their switch or their end, which is what the sweep and the
    drain look at."""

    loop: asyncio.AbstractEventLoop
    staging: set[StagedConnection]
    draining: bool

    def check_drained(self) -> None: ...


class ConnectionPlan:
    """What a listener's connections go through: `stages` in order, then the wire protocol
    that `protocols` (a table from protocol name to factory) gives for the facts' protocol.
    The "http/1.1" protocol must also work as an asyncio protocol on its own (connection_made
    reading the facts off the transport): it is what a plan with no stage hands the acceptor."""

    def __init__(self, stages: Sequence[StageFactory],
                 protocols: Mapping[str, Callable[[], Any]], registry: Registry) -> None:
        self.stages = tuple(stages)
        self.protocols = protocols
        self.registry = registry

    def protocol_factory(self) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for the acceptor (loop.connect_accepted_socket)."""
        if not self.stages:
            return self.protocols[HTTP_1_1]  # straight to the protocol: nothing in between
        return functools.partial(StagedConnection, self)


@mypyc_attr(allow_interpreted_subclasses=True)  # a base of the WebSocket session too
class TransportProtocol(asyncio.Protocol):
    """A protocol that owns a transport: reading paused and resumed, closing and aborting,
    each once and never after the transport is closing. The base of StagedConnection here and
    of the wire protocols' flow control (http1.connection.FlowControlledProtocol), so that a
    connection keeps these rules across every protocol switch."""

    __slots__ = ("transport", "closed", "read_paused", "write_paused")

    transport: asyncio.Transport  # set by connection_made (or take_over), before any use

    def __init__(self) -> None:
        self.closed = False  # the transport is closing or closed: nothing more is written
        self.read_paused = False
        self.write_paused = False

    def pause_reading(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        """Close after what was written has been sent."""
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping unsent data."""
        self.closed = True
        self.transport.abort()


class StagedConnection(TransportProtocol):
    """A connection's protocol while its stages run: passes what arrives to the current stage,
    starts the next when one finishes, then switches to the wire protocol. It is in the
    registry's `staging` set meanwhile (the sweep enforces the current stage's timeout; the
    drain waits for it)."""

    __slots__ = ("plan", "facts", "stage", "index", "stage_started")

    facts: ConnectionFacts  # set by connection_made

    def __init__(self, plan: ConnectionPlan) -> None:
        super().__init__()
        self.plan = plan
        self.stage: Stage | None = None
        self.index = -1  # of the current stage in plan.stages
        self.stage_started = 0.0  # loop time

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.facts = ConnectionFacts.of(transport)
        self.plan.registry.staging.add(self)
        self._next(b"")

    def data_received(self, data: bytes) -> None:
        if self.stage is not None and not self.closed:
            self.stage.data_received(data)

    def eof_received(self) -> bool:
        if self.stage is not None and not self.closed:
            self.stage.eof_received()
        return True  # the stage decides; what it does not close, its timeout will

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        stage, self.stage = self.stage, None
        if stage is not None:
            stage.connection_lost(exc)
        registry = self.plan.registry
        registry.staging.discard(self)
        registry.check_drained()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False

    # for the stages

    def finish(self, data: bytes = b"", transport: asyncio.Transport | None = None) -> None:
        """The current stage is done. `data`: the bytes it read and did not consume, for the
        next stage or the protocol; `transport`: the transport to go on with, when the stage
        put one over the connection's (TLS)."""
        if self.closed:
            return
        if transport is not None:
            transport.set_protocol(self)
            self.transport = transport
            self.read_paused = self.write_paused = False
        self._next(data)

    def fail(self, why: str) -> None:
        """The current stage cannot go on: close the connection, with no response."""
        stage = self.stage
        log.debug("closing the connection from %s in its %s stage: %s", self.facts.client,
                  stage.name if stage is not None else "last", why)
        self.close()

    # for the sweep

    def check_timeouts(self, now: float) -> None:
        """Close the connection if its current stage has outstayed its timeout."""
        if self.closed:
            self.abort()  # closed, and still not gone at this tick: stop waiting for it
            return
        stage = self.stage
        if stage is None:
            return
        limit = stage.timeout
        if self.plan.registry.draining:
            limit = min(limit, DRAIN_STAGE_TIMEOUT) if limit else DRAIN_STAGE_TIMEOUT
        if limit and now - self.stage_started >= limit:
            self.fail(f"no end within {limit:g} s")

    # the transitions: the next stage, or the protocol once there is none

    def _next(self, data: bytes) -> None:
        plan = self.plan
        self.index += 1
        if self.index < len(plan.stages):
            stage = self.stage = plan.stages[self.index]()
            self.stage_started = plan.registry.loop.time()
            stage.start(self, data)
            return
        self.stage = None
        factory = plan.protocols.get(self.facts.protocol)
        if factory is None:  # a stage chose a protocol this listener does not serve: a bug
            log.error("no wire protocol %r on this listener: closing the connection from %s",
                      self.facts.protocol, self.facts.client)
            self.close()
            return
        registry = plan.registry
        try:
            switch_protocol(self.transport, factory(), self.facts, data, self.read_paused,
                            self.write_paused)
        finally:
            # The protocol has the connection in its own bookkeeping by now: a drain going on
            # waits for it there.
            self.closed = True  # nothing here touches the transport again
            registry.staging.discard(self)
            registry.check_drained()
