"""Behind a proxy: trusted X-Forwarded-* / Forwarded headers set client, scheme and host.

Why the right-most untrusted hop: each proxy appends the address it received the request from,
so a list reads "client, proxy1, proxy2", but whatever stands left of the entry written by our
outermost trusted proxy was sent by the client, which can write anything there. So the walk goes
from the right, past the hops that are themselves trusted proxies, and the first hop that is not
one is the client. The left-most entry, the one a naive server believes, is the one a client
forges.

Everything here is sans-IO: `ProxyHeaders.apply` rewrites a scope. A malformed header is ignored,
never an error: a worker must not die because of what a client sent.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

Hop = TypeVar("Hop")

# Header name -> the slot its values are collected in.
_FORWARDED_HEADERS = {
    b"forwarded": "forwarded",
    b"x-forwarded-for": "for",
    b"x-forwarded-proto": "proto",
    b"x-forwarded-host": "host",
}

SCHEMES = frozenset(("http", "https"))  # any other forwarded proto is ignored

# A plausible host[:port]: a bracketed IPv6 address or a name of URI unreserved characters.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]+)(?::[0-9]{1,5})?")

# Forwarded (RFC 7239) tokens: a quoted-string, a separator, a bare run, or a quote left open
# (it takes the rest of the line, which makes its element malformed).
_FORWARDED_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[,;=]|[^",;=]+|"[\s\S]*')
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: a parameter name
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def parse_trusted(text: str) -> list:
    """"127.0.0.1,::1,10.0.0.0/8" -> networks; "*" -> ["*"]. Raises ValueError."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if "*" in items:
        return ["*"]
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network (expected a list "
                             "like 127.0.0.1,10.0.0.0/8, or *)") from None
    return networks


def parse_node(text: str) -> tuple[str, int] | None:
    """A hop as proxies write it -> (ip, port), port 0 when unknown; None if it is no IP address.

    Accepts "192.0.2.1", "192.0.2.1:80", "2001:db8::1", "[2001:db8::1]" and
    "[2001:db8::1]:4711"; an obfuscated port ("_abc") is unknown. "unknown" and obfuscated
    names ("_hidden", RFC 7239 6.3) are None.
    """
    text = text.strip()
    port = ""
    if text.startswith("["):
        address, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and rest[0] != ":"):
            return None
        port = rest[1:] if rest else ""
        if (rest and not port) or ":" not in address:  # brackets are for IPv6 only
            return None
    elif text.count(":") == 1:  # IPv4:port; an IPv6 address has at least two colons
        address, _, port = text.partition(":")
        if not port:
            return None
    else:
        address = text
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if not port or port[0] == "_":
        number = 0
    elif port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535:
        number = int(port)
    else:
        return None
    return str(ip), number


def parse_forwarded(line: str) -> list[dict[str, str] | None]:
    """One Forwarded header line -> its elements, each {lowercase key: value}; None stands for a
    malformed element (a broken pair, a repeated key, a quote left open). Empty elements are
    dropped, as for any HTTP list."""
    elements: list[dict[str, str] | None] = []
    element: dict[str, str] | None = {}
    pair: list[str] = []
    for token in [*_FORWARDED_TOKEN.findall(line), ","]:
        if token == "," or token == ";":
            if pair:
                key_value = _pair(pair)
                if element is not None:
                    if key_value is None or key_value[0] in element:
                        element = None
                    else:
                        element[key_value[0]] = key_value[1]
                pair = []
            if token == ",":
                if element is None or element:
                    elements.append(element)
                element = {}
        elif token[0] == '"':
            pair.append(token)
        elif not token.isspace():
            pair.append(token.strip())
    return elements


def _pair(tokens: list[str]) -> tuple[str, str] | None:
    """["for", "=", '"[2001:db8::1]"'] -> ("for", "[2001:db8::1]"); None if malformed."""
    if len(tokens) != 3 or tokens[1] != "=" or not _TOKEN.fullmatch(tokens[0]):
        return None
    value = tokens[2]
    if value[0] == '"':
        quoted = _QUOTED.fullmatch(value)
        if quoted is None:
            return None
        value = _QUOTED_PAIR.sub(r"\1", quoted[1])
    elif any(char.isspace() for char in value):
        return None
    return tokens[0].lower(), value


def pick_hop(hops: Sequence[Hop], trusted: Callable[[Hop], bool]) -> Hop:
    """The right-most hop that is not trusted; the left-most if every hop is trusted."""
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0]


def list_items(lines: list[str]) -> list[str]:
    """Comma-separated header lines -> their items, stripped, empty ones dropped."""
    return [item for item in (item.strip() for item in ",".join(lines).split(",")) if item]


def forwarded_scheme(value: str | None) -> str | None:
    scheme = value.strip().lower() if value else None
    return scheme if scheme in SCHEMES else None


def forwarded_host(value: str | None) -> str | None:
    return value if value and _HOST.fullmatch(value) else None


class ProxyHeaders:
    """Applies forwarded headers from trusted peers to an ASGI HTTP scope."""

    def __init__(self, trusted: str):
        self.networks = parse_trusted(trusted)
        self.trust_all = self.networks == ["*"]
        self._trusted_hosts: dict[str, bool] = {}  # peer address -> trusted, memoized

    def trusts(self, client: tuple | None) -> bool:
        """Is the peer `client` (host, port) one of the trusted proxies?"""
        if client is None:
            return self.trust_all  # a unix socket peer: trusted only with "*"
        host = client[0]
        trusted = self._trusted_hosts.get(host)
        if trusted is None:
            trusted = self.trust_all or self._in_networks(host)
            if len(self._trusted_hosts) < 4096:
                self._trusted_hosts[host] = trusted
        return trusted

    def _in_networks(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)  # IPv6Address only
        if mapped:  # ::ffff:10.0.0.1 is 10.0.0.1
            address = mapped
        return any(address in network for network in self.networks)

    def _trusts_node(self, node: tuple[str, int] | None) -> bool:
        # Not trusts(): hops are client-written text, kept out of the peer memo.
        return node is not None and (self.trust_all or self._in_networks(node[0]))

    def apply(self, scope: dict) -> None:
        """Rewrite scope["client"], scope["scheme"] and the Host header from the forwarded
        headers in scope["headers"]; the caller has checked that the peer is trusted.

        `Forwarded` wins over X-Forwarded-* whenever it is present: a proxy that speaks
        Forwarded may pass a client's X-Forwarded-* through untouched.
        """
        found: dict[str, list[str]] = {}
        for name, value in scope["headers"]:
            slot = _FORWARDED_HEADERS.get(name)
            if slot is not None:
                found.setdefault(slot, []).append(value.decode("latin-1"))
        if not found:
            return
        if "forwarded" in found:
            node, scheme, host = self._from_forwarded(found["forwarded"])
        else:
            node, scheme, host = self._from_x_forwarded(found)
        if node is not None:
            scope["client"] = node
        if scheme is not None:
            scope["scheme"] = scheme
        if host is not None:
            scope["headers"] = replace_host(scope["headers"], host.encode("ascii"))

    def _from_forwarded(self, lines: list[str]) -> tuple:
        """Forwarded lines -> (client, scheme, host), each None if not given or not valid."""
        elements = [element for line in lines for element in parse_forwarded(line)]
        if not elements:
            return None, None, None
        chosen = pick_hop(elements, lambda element: element is not None and self._trusts_node(
            parse_node(element["for"]) if "for" in element else None))
        if chosen is None:  # a malformed element: nothing in it can be believed
            return None, None, None
        return (parse_node(chosen["for"]) if "for" in chosen else None,
                forwarded_scheme(chosen.get("proto")), forwarded_host(chosen.get("host")))

    def _from_x_forwarded(self, found: dict[str, list[str]]) -> tuple:
        """X-Forwarded-For/-Proto/-Host lines -> (client, scheme, host), each None if not
        given or not valid."""
        hops = list_items(found.get("for", []))
        protos = list_items(found.get("proto", []))
        hosts = list_items(found.get("host", []))
        node = parse_node(pick_hop(hops, lambda hop: self._trusts_node(parse_node(hop)))) \
            if hops else None
        return (node, forwarded_scheme(protos[-1]) if protos else None,
                forwarded_host(hosts[-1]) if hosts else None)


def replace_host(headers: Sequence[tuple[bytes, bytes]], host: bytes) -> list:
    """A new headers list with the Host value replaced (added if there was none); the tuples and
    the list given are left as they are, since the connection may share them."""
    replaced: list[tuple[bytes, bytes]] = []
    seen = False
    for name, value in headers:
        if name == b"host":
            if seen:
                continue  # one Host is all an app should see
            seen = True
            value = host
        replaced.append((name, value))
    if not seen:
        replaced.append((b"host", host))
    return replaced
