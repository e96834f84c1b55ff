"""The headers of a passed-through exchange, both ways. Sans-IO.

Hop-by-hop fields (RFC 9110 7.6.1) belong to one connection and are never forwarded: the fixed
ones below and every field the Connection header names. An upgrade request keeps its Upgrade
and gets `Connection: upgrade` again, so that the upstream can answer 101.

Towards the upstream, what the server knows about the request, after its own proxy-header
trust (asgi/forwarded.py) has applied:

  X-Forwarded-For    the list a trusted peer sent, with the peer appended; from any other peer,
                     the peer alone (what it sent is dropped: it could be anything)
  Forwarded          the same rule, with one element for=peer;proto=scheme;host=host (RFC 7239)
  X-Forwarded-Proto  the scheme as the ASGI app would see it (a trusted proxy's word, else the
                     connection's)
  X-Forwarded-Host   the host as the ASGI app would see it
  Host               the client's, unchanged (the upstream builds its URLs from it; Django's
                     ALLOWED_HOSTS checks it); the upstream's own authority when there was none

`Expect` is not forwarded either: the server answers 100 Continue itself when it reads the body.

Towards the client: hop-by-hop fields dropped, and the upstream's `Server` and `Date` too (as
nginx hides them), so that the server's own apply like on every response, as do the
--response-header rules. Content-Length stays: the client's framing is the upstream's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# RFC 9110 7.6.1 (and the pre-standard Keep-Alive and Proxy-Connection it names).
HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade"))
# Never forwarded to the upstream as the client sent them.
_REQUEST_DROPPED = HOP_BY_HOP | {b"expect", b"x-forwarded-for", b"x-forwarded-proto",
                                 b"x-forwarded-host", b"forwarded"}
_RESPONSE_DROPPED = HOP_BY_HOP | {b"server", b"date"}
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2
# (peer address, scheme, host) -> the peer's X-Forwarded-For node, X-Forwarded-Proto and
# Forwarded element: the same few with every request from a client (bounded: new ones stop
# adding).
_ELEMENTS: dict[tuple[str | None, str, bytes | None], tuple[bytes, bytes, bytes]] = {}
_ELEMENTS_MAX = 4096


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The lowercase field names the Connection header(s) list."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
    tokens.discard(b"")
    return frozenset(tokens)


def _listed_fields(values: list[bytes]) -> set[bytes]:
    """The fields Connection header values name that are still to be dropped from a response
    (not `close` and `keep-alive`, what nearly every upstream sends)."""
    fields: set[bytes] = set()
    for value in values:
        lowered = value.lower()
        if lowered == b"close" or lowered == b"keep-alive":
            continue
        for token in lowered.split(b","):
            token = token.strip()
            if token and token not in _RESPONSE_DROPPED:
                fields.add(token)
    return fields


def node(client: tuple | None) -> str:
    """A peer as X-Forwarded-For writes it: the address, or `unknown` (a unix socket)."""
    return str(client[0]) if client else "unknown"


def forwarded_node(client: tuple | None) -> str:
    """A peer as a Forwarded `for=` value (RFC 7239 6): IPv6 bracketed and quoted."""
    if not client:
        return "unknown"
    address = str(client[0])
    return f'"[{address}]"' if ":" in address else address


def quoted(value: str) -> str:
    """A Forwarded parameter value: a token as is, anything else as a quoted-string."""
    if _TOKEN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def request_headers(headers: Iterable[tuple[bytes, bytes]], peer: tuple | None,
                    trusted: bool, scheme: str, host: bytes | None, authority: bytes,
                    upgrade: bytes | None = None) -> list[tuple[bytes, bytes]]:
    """The headers to send upstream for a client request.

    `headers`: the client's (lowercase names); `peer`: the connection's client address;
    `trusted`: whether that peer is a trusted proxy (its forwarded headers are kept and
    appended to); `scheme` and `host`: as the ASGI scope has them (after trust); `authority`:
    the upstream's, for a request without Host; `upgrade`: the Upgrade value of a request
    that asks for a protocol switch (kept, with Connection: upgrade)."""
    out: list[tuple[bytes, bytes]] = []
    previous_for: list[bytes] = []
    previous_forwarded: list[bytes] = []
    listed = False  # a Connection header names more fields to drop
    for name, value in headers:
        if name in _REQUEST_DROPPED:
            if name == b"connection":
                listed = True
            elif trusted:
                if name == b"x-forwarded-for":
                    previous_for.append(value)
                elif name == b"forwarded":
                    previous_forwarded.append(value)
            continue
        out.append((name, value))
    if listed:
        dropped = connection_tokens(headers)
        out = [(name, value) for name, value in out if name not in dropped]
    if not any(name == b"host" for name, _ in out):
        out.append((b"host", authority))
    key = (str(peer[0]) if peer else None, scheme, host)
    known = _ELEMENTS.get(key)
    if known is None:
        element = f"for={forwarded_node(peer)};proto={scheme}"
        if host:
            element += ";host=" + quoted(host.decode("latin-1"))
        known = (node(peer).encode("latin-1"), scheme.encode("ascii"),
                 element.encode("latin-1"))
        if len(_ELEMENTS) < _ELEMENTS_MAX:
            _ELEMENTS[key] = known
    peer_node, proto, element_bytes = known
    out.append((b"x-forwarded-for", b", ".join((*previous_for, peer_node))
                if previous_for else peer_node))
    out.append((b"x-forwarded-proto", proto))
    if host:
        out.append((b"x-forwarded-host", host))
    out.append((b"forwarded", b", ".join((*previous_forwarded, element_bytes))
                if previous_forwarded else element_bytes))
    if upgrade is not None:
        out.append((b"connection", b"upgrade"))
        out.append((b"upgrade", upgrade))
    return out


def response_headers(headers: Iterable[tuple[bytes, bytes]],
                     keep_upgrade: bool = False) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers (lowercase names, as codec.py gives them) as the
    client gets them. `keep_upgrade`: a 101, whose Upgrade and `Connection: upgrade` the
    client needs."""
    out: list[tuple[bytes, bytes]] = []
    upgrades: list[tuple[bytes, bytes]] = []
    listed: list[bytes] = []  # the Connection headers' values
    for name, value in headers:
        if name in _RESPONSE_DROPPED:
            if name == b"connection":
                listed.append(value)
            elif name == b"upgrade":
                upgrades.append((name, value))
            continue
        out.append((name, value))
    if listed:
        dropped = _listed_fields(listed)
        if dropped:
            out = [(name, value) for name, value in out if name not in dropped]
    if keep_upgrade:
        out += upgrades
        out.append((b"connection", b"upgrade"))
    return out
