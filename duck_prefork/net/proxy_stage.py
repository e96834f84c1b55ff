"""The PROXY header as the first stage of a --proxy-protocol listener's connections.

On such a listener the header is required (the specification forbids falling back to plain
HTTP: a client that can skip it could pass for the balancer). The connection is closed with
no response when its peer is not in --forwarded-allow-ips (at accept, before anything is
read), when its first bytes start no header of the version accepted, when the header is
malformed or too long, when the client closes first, or when the whole header has not
arrived within HEADER_TIMEOUT (the worker's once-a-second sweep enforces it). Bytes after the
header (the first request, pipelined ones) go on to the next stage (TLS) or to HTTP/1.1.

What the header changes, for every request on the connection (net/proxy_protocol.py):
  PROXY, INET/INET6   client and server are the header's addresses
  PROXY, AF_UNIX      client None (not an IP address), server (path, None)
  PROXY, UNKNOWN/UNSPEC  client None (the balancer does not know it; its own address would be
                      a lie, and would be trusted), server the socket's own
  LOCAL               the socket's own addresses (the balancer's health checks)
  SSL TLV, client SSL bit  scheme "https" (then "wss" for WebSockets)
  always              scope["extensions"]["proxy_protocol"] (ProxyHeader.extension)

Failures are counted by reason and logged as one line at most every SUMMARY_INTERVAL: a
balancer that does not send the header would otherwise fail silently.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from ..logs import log
from .proxy_protocol import LOCAL, ProxyHeader, ProxyProtocolError, parse
from .stages import Stage, StagedConnection

# A reason without its detail (the bytes, the numbers), as counted in the summary.
_DETAIL = re.compile(r"\s(?:b['\"]|\d).*")

HEADER_TIMEOUT = 3.0  # seconds from accept to the end of the header
SUMMARY_INTERVAL = 60.0  # seconds between two summary lines of refused connections


class ProxyProtocol:
    """A worker's PROXY side: which versions it accepts, whom it trusts, its failure counts."""

    def __init__(self, accept: str, trusts: Callable[[tuple | None], bool]) -> None:
        self.accept = accept  # "v1", "v2" or "any"
        self.trusts = trusts  # (host, port) of a peer -> may it send a PROXY header?
        self.failures: Counter[str] = Counter()
        self.next_summary = 0.0

    def stage(self) -> ProxyHeaderStage:
        """The stage factory of a --proxy-protocol listener's ConnectionPlan."""
        return ProxyHeaderStage(self)

    def failed(self, reason: str) -> None:
        self.failures[reason] += 1

    def flush(self, now: float) -> None:
        """From the worker's tick: the summary line, if one is due."""
        if not self.failures or now < self.next_summary:
            return
        total = sum(self.failures.values())
        detail = ", ".join(f"{count} {reason}" for reason, count in
                           self.failures.most_common())
        log.info("PROXY protocol: %d connection%s closed (%s); next summary in %g s at the "
                 "earliest", total, "" if total == 1 else "s", detail, SUMMARY_INTERVAL)
        self.failures.clear()
        self.next_summary = now + SUMMARY_INTERVAL


class ProxyHeaderStage(Stage):
    """One connection's PROXY header (see the module docstring)."""

    name = "PROXY header"
    timeout = HEADER_TIMEOUT

    def __init__(self, server: ProxyProtocol) -> None:
        self.server = server
        self.buffer = b""
        self.done = False

    def start(self, link: StagedConnection, data: bytes) -> None:
        self.link = link
        if not self.server.trusts(link.facts.client):
            self._fail("untrusted peer")
            return
        if data:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        buffer = self.buffer + data if self.buffer else data
        try:
            result = parse(buffer, self.server.accept)
        except ProxyProtocolError as exc:
            self._fail(str(exc))
            return
        if result is None:
            self.buffer = buffer
            return
        self.done = True
        header, size = result
        apply(header, self.link)
        self.link.finish(buffer[size:])

    def eof_received(self) -> None:
        self._fail("closed by the client" if not self.buffer else "truncated header")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            # Closed by the sweep (its ticks are a second apart), or by the client.
            link = self.link
            timed_out = link.plan.registry.loop.time() - link.stage_started >= \
                self.timeout - 1.0
            self.done = True
            self.server.failed("timed out" if timed_out else "connection lost")

    def _fail(self, reason: str) -> None:
        if not self.done:
            self.done = True
            self.server.failed(_DETAIL.sub("", reason))
            self.link.fail(reason)


def apply(header: ProxyHeader, link: StagedConnection) -> None:
    """The header's addresses, scheme and extension onto the connection's facts."""
    facts = link.facts
    if header.command != LOCAL:
        if header.family in ("TCP4", "TCP6", "INET", "INET6"):
            facts.client = header.client
            facts.server = header.server
        elif header.family == "UNIX":
            facts.client = None
            facts.server = header.server
        else:  # UNKNOWN, UNSPEC
            facts.client = None
        if header.secure:
            facts.scheme = "https"
    facts.proxy = header
    facts.add_extension("proxy_protocol", header.extension())
