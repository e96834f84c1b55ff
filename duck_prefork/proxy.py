"""Behind a proxy: trusted X-Forwarded-* / Forwarded headers set client, scheme and host."""

from __future__ import annotations

import ipaddress


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
            raise ValueError(f"not an IP address or network: {item!r}") from None
    return networks


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
        return any(address in network for network in self.networks)

    def apply(self, scope: dict) -> None:
        """Rewrite scope["client"], scope["scheme"] and the Host header from the forwarded
        headers in scope["headers"]. (To be completed.)"""
