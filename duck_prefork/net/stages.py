"""A connection's facts, and the protocol switch.

ConnectionFacts is what is known about a connection (its addresses, its scheme, the wire
protocol to speak; later what TLS and a PROXY header tell), created once and carried through
every protocol switch; the wire protocol and the ASGI scope read it.

switch_protocol() is the one way a transport passes from one protocol to the next (an upgrade
to a WebSocket, websocket.py; later the end of a connection's stages, an upstream's tunnel):
the next protocol is set on the transport, told the facts and whether reading and writing are
paused (take_over, its connection_made), and given the bytes already read.
"""

from __future__ import annotations

import asyncio
import typing
from typing import Any

# Wire protocols are named as ALPN names them (RFC 7301): "http/1.1", "h2".
HTTP_1_1 = "http/1.1"

Address = tuple[Any, ...]  # (host, port) for TCP; (path, None) for a unix socket's server


class ConnectionFacts:
    """What is known about one connection, created once at accept and carried through every
    protocol switch: the addresses, the scheme, the wire protocol chosen, and (later) what TLS
    and a PROXY header told. The wire protocol and the ASGI scope read it (client, server,
    scheme)."""

    __slots__ = ("client", "server", "scheme", "protocol", "tls", "proxy")

    def __init__(self, client: Address | None, server: Address | None, scheme: str = "http",
                 protocol: str = HTTP_1_1) -> None:
        self.client = client  # the peer: (host, port), None for a unix socket's
        self.server = server  # the local end: (host, port), (path, None) for a unix socket
        self.scheme = scheme  # "http" or "https"
        self.protocol = protocol  # the wire protocol to speak once the stages are done
        self.tls: Any = None  # the TLS session's facts (version, cipher, ALPN, certificate)
        self.proxy: Any = None  # the PROXY header's TLVs

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
