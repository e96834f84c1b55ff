"""--upstream PREFIX=URL: which requests go to which upstream, and the target they get there.

Sans-IO. A route is a path prefix and where its requests go: an upstream HTTP/1.1 server
(`http://host:port`, `http://host:port/base`, `unix:/path/to.sock`) or, with `app`, the ASGI
app itself (to carve a prefix out of a shorter upstream one: `/=unix:/run/django.sock` and
`/api/v2=app`). The longest matching prefix wins.

Matching is on the path as the client sent it (percent-encoding not decoded, dot segments not
resolved), and by whole segments: PREFIX `/api` matches `/api`, `/api/...` and `/api?...`, not
`/apis`; a PREFIX ending in `/` matches every path that starts with it, as an nginx
`location` does. (So the table routes requests; it is not an access control.)

The target, nginx's proxy_pass rule: a URL without a path forwards the target unchanged; a URL
with a path (even just `/`) has that path replace PREFIX, the rest of the target kept as is:

    --upstream /legacy=http://127.0.0.1:8001          /legacy/a?x=1 -> /legacy/a?x=1
    --upstream /legacy/=http://127.0.0.1:8001/        /legacy/a?x=1 -> /a?x=1
    --upstream /legacy=http://127.0.0.1:8001/old      /legacy/a?x=1 -> /old/a?x=1
    --upstream /legacy/=http://127.0.0.1:8001/old/    /legacy/a?x=1 -> /old/a?x=1

As with nginx, a PREFIX and a path whose trailing slashes differ join literally
(`/legacy=http://h/` sends `/legacy/a` as `//a`): give both a trailing slash, or neither.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Upstream:
    """Where an upstream listens, and how to name it (logs, the Host of a request without)."""

    name: str  # as given, without the path: "http://127.0.0.1:8001", "unix:/run/app.sock"
    host: str = ""  # TCP: the host to connect to (brackets removed from IPv6)
    port: int = 0
    path: str = ""  # a unix socket's path
    authority: bytes = b"localhost"  # Host for a request that carried none (HTTP/1.0)


@dataclass(frozen=True)
class Route:
    """A path prefix and where its requests go: `upstream` (None: the ASGI app), with `base`
    replacing the prefix when the URL had a path (None: the target is forwarded unchanged)."""

    prefix: bytes
    upstream: Upstream | None
    base: bytes | None = None

    def target(self, target: bytes) -> bytes:
        """The origin-form target to send upstream for a matching origin-form `target`."""
        if self.base is None:
            return target
        return self.base + target[len(self.prefix):]


def parse_url(url: str) -> tuple[Upstream, bytes | None]:
    """`http://host[:port][/base]` or `unix:/path` -> (Upstream, base path or None); raises
    ValueError with what is wrong."""
    if url.startswith("unix:"):
        path = url[5:]
        if not path.startswith("/"):
            raise ValueError("a unix socket upstream is unix:/absolute/path")
        return Upstream(name=url, path=path), None
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise ValueError("expected a URL like http://127.0.0.1:8001, http://host:port/base or "
                         "unix:/path/to.sock")
    if scheme.lower() != "http":
        raise ValueError(f"{scheme}:// upstreams are not supported (plain http:// or unix: "
                         "only)")
    authority, slash, path = rest.partition("/")
    if "?" in authority or "#" in authority or "?" in path or "#" in path or "@" in authority:
        raise ValueError("the URL may have a host, a port and a path, nothing else")
    if authority.startswith("["):
        host, bracket, port_text = authority[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise ValueError(f"bad IPv6 host in {url!r}")
        port_text = port_text[1:]
        ipaddress.IPv6Address(host)
    else:
        host, _, port_text = authority.partition(":")
    if not host:
        raise ValueError("the URL has no host")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port {port_text!r}")
        port = int(port_text)
    else:
        port = 80
    if not all(33 <= ord(char) < 127 for char in authority + path):
        raise ValueError("the URL must be ASCII without spaces (percent-encode the path)")
    base = ("/" + path).encode("ascii") if slash else None
    name = f"http://{authority}"
    return Upstream(name=name, host=host, port=port, authority=authority.encode("ascii")), base


def parse_upstream(spec: str) -> Route:
    """One --upstream value, `PREFIX=URL` (URL `app`: the ASGI app) -> Route; raises
    ValueError with what is wrong."""
    prefix, equals, url = spec.partition("=")
    prefix, url = prefix.strip(), url.strip()
    if not equals or not prefix or not url:
        raise ValueError("expected PREFIX=URL, e.g. /=unix:/run/django.sock or "
                         "/legacy/=http://127.0.0.1:8001/")
    if not prefix.startswith("/"):
        raise ValueError(f"the prefix {prefix!r} must start with /")
    if not all(33 <= ord(char) < 127 for char in prefix) or "?" in prefix or "#" in prefix:
        raise ValueError(f"the prefix {prefix!r} must be an ASCII path without spaces, ? or #")
    if url == "app":
        return Route(prefix.encode("ascii"), None)
    upstream, base = parse_url(url)
    return Route(prefix.encode("ascii"), upstream, base)


class RouteTable:
    """The routes of a worker, longest prefix first; match() picks a request's route."""

    def __init__(self, routes: Iterable[Route]) -> None:
        by_prefix: dict[bytes, Route] = {}
        for route in routes:
            by_prefix[route.prefix] = route  # a prefix given twice: the last one wins
        self.routes = sorted(by_prefix.values(), key=lambda route: len(route.prefix),
                             reverse=True)
        # One Upstream object per distinct upstream, whatever routes share it (one pool each).
        self.upstreams = list(dict.fromkeys(route.upstream for route in self.routes
                                            if route.upstream is not None))

    @classmethod
    def parse(cls, specs: Iterable[str]) -> RouteTable:
        return cls(parse_upstream(spec) for spec in specs)

    def match(self, target: bytes) -> tuple[Route, bytes] | None:
        """The route of a request `target` that goes upstream, and the origin-form target to
        send there; None for the ASGI app (no prefix matches, an `app` route, a target that
        is not a path: `*`, authority-form)."""
        if target[:1] != b"/":
            target = origin_form(target)
            if not target:
                return None
        end = target.find(b"?")
        path = target if end < 0 else target[:end]
        for route in self.routes:
            prefix = route.prefix
            if path.startswith(prefix) and (len(path) == len(prefix) or prefix[-1] == 47
                                            or path[len(prefix)] == 47):  # 47: b"/"
                if route.upstream is None:
                    return None
                return route, route.target(target)
        return None


def origin_form(target: bytes) -> bytes:
    """An absolute-form target (`http://host/path?query`) as origin-form (`/path?query`); b""
    for a target that is neither (`*`, authority-form)."""
    scheme_end = target.find(b"://")
    if scheme_end <= 0:
        return b""
    path_start = len(target)
    for separator in (b"/", b"?"):
        found = target.find(separator, scheme_end + 3)
        if 0 <= found < path_start:
            path_start = found
    rest = target[path_start:]
    return rest if rest[:1] == b"/" else b"/" + rest
