"""What a request head must satisfy before the app sees it, whichever parser read it.

The parser has already split the head into method, target, version and headers. Here the
head is held to RFC 9112 where a server may be strict and where request smuggling lives
(conflicting framing, odd versions, control characters), and to the configured limits. One
pass over the headers also collects what the connection needs: keep-alive, Expect, and the
body framing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ..errors import ParseError

__all__ = ["DEFAULT_LIMITS", "Limits", "ParseError", "read_head"]


@dataclass(frozen=True)
class Limits:
    """Request size limits; 0 means no limit of that kind."""

    request_line: int = 8190
    fields: int = 100
    field_size: int = 8190
    body: int = 0

    @property
    def head_size(self) -> int:
        """The bound on a whole head, enforced while it is still arriving: room for the request
        line and the allowed fields, capped so that a slow client cannot pin much memory."""
        wanted = self.request_line + self.fields * (self.field_size + 4) + 4
        return max(16 * 1024, min(wanted, 64 * 1024))


DEFAULT_LIMITS: Final = Limits()

# A request target is visible ASCII: no controls, spaces, DEL or non-ASCII bytes. (A compiled
# pattern is one C pass with no set-up; bytes.translate builds its tables on every call.)
_VALID_TARGET: Final = re.compile(rb"[\x21-\x7e]*")
# A Host value (RFC 9110 7.2: uri-host [":" port]): a reg-name or IP literal, and a port.
_VALID_HOST: Final = re.compile(rb"[A-Za-z0-9._~!$&'()*+,;=%:-]*|\[[0-9A-Fa-f:.]+\](?::[0-9]*)?")
# authority-form (RFC 9112 3.2.3), host:port, for CONNECT.
# Host values found valid: a server answers to a few names, sent again with every request, so
# a set lookup replaces the pattern for nearly all of them (bounded: made-up names stop adding).
_HOSTS_SEEN: Final[set[bytes]] = set()
_HOSTS_SEEN_MAX: Final = 4096
_AUTHORITY = rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::[0-9]*)?"
_AUTHORITY_FORM: Final = re.compile(_AUTHORITY)
# absolute-form (RFC 9112 3.2.2), as sent to a proxy: http(s)://[userinfo@]authority[/path][?q]
_ABSOLUTE_FORM: Final = re.compile(
    rb"[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9._~!$&'()*+,;=%:-]*@)?" + _AUTHORITY
    + rb"(?:[/?].*)?", re.DOTALL)

# Header names that matter to the server; every other field is only counted and measured.
_CONNECTION: Final = 0
_EXPECT: Final = 1
_CONTENT_LENGTH: Final = 2
_TRANSFER_ENCODING: Final = 3
_HOST: Final = 4
_FORWARDED: Final = 5
_UPGRADE: Final = 6
_SERVER_HEADERS: Final = {
    b"connection": _CONNECTION,
    b"upgrade": _UPGRADE,
    b"expect": _EXPECT,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"host": _HOST,
    # Noted here so that the proxy step (proxy.py) runs only for requests that carry them.
    b"forwarded": _FORWARDED,
    b"x-forwarded-for": _FORWARDED,
    b"x-forwarded-proto": _FORWARDED,
    b"x-forwarded-host": _FORWARDED,
}


def read_head(method: bytes, target: bytes, http_version: bytes,
              headers: list[tuple[bytes, bytes]], limits: Limits
              ) -> tuple[bool, bool, int | None, bool, bool, bytes | None]:
    """Check a parsed request head; returns (keep_alive, expect_continue, content_length,
    chunked, forwarded, upgrade) or raises ParseError. Header names are lowercase, values
    stripped. `upgrade` is the lowercased Upgrade value when Connection lists "upgrade" (a
    protocol switch is asked for; RFC 9110 7.8), else None.

    The checks h11 makes before it returns a head come first (the target's bytes, the
    Content-Length values, the Host count: all 400), so that a head with several defects is
    refused with the same status whichever parser read it."""
    if _VALID_TARGET.fullmatch(target) is None:
        raise ParseError(400, "invalid character in request target")
    http11 = http_version == b"1.1"
    keep_alive = http11  # HTTP/1.0 closes after the response; 1.1 unless asked to
    expect_continue = False
    content_length: int | None = None
    chunked = False
    hosts = 0
    forwarded = False
    upgrade = None
    connection_upgrade = False
    refusal: ParseError | None = None  # the first of the refusals raised after h11's checks
    field_size = limits.field_size
    for name, value in headers:
        if field_size and len(name) + len(value) + 2 > field_size and refusal is None:
            refusal = ParseError(431, "header field too large")
        kind = _SERVER_HEADERS.get(name)
        if kind is None:
            continue
        if kind == _CONNECTION:
            tokens = [token.strip() for token in value.lower().split(b",")]
            if b"close" in tokens:
                keep_alive = False
            if b"upgrade" in tokens:
                connection_upgrade = True
        elif kind == _EXPECT:
            # RFC 9110 10.1.1: an HTTP/1.0 client cannot be waiting for a 100.
            expect_continue = http11 and value.lower() == b"100-continue"
        elif kind == _CONTENT_LENGTH:
            if not value.isdigit() or len(value) > 20:  # h11 takes at most 20 digits
                raise ParseError(400, "Content-Length is not a plain number")
            length = int(value)
            if content_length is not None and content_length != length:
                raise ParseError(400, "conflicting Content-Length headers")
            content_length = length
        elif kind == _TRANSFER_ENCODING:
            if (chunked or value.lower() != b"chunked") and refusal is None:
                refusal = ParseError(501, "only Transfer-Encoding: chunked is supported")
            chunked = True
        elif kind == _FORWARDED:
            forwarded = True
        elif kind == _UPGRADE:
            upgrade = value.lower()
        else:  # _HOST
            hosts += 1
            if value not in _HOSTS_SEEN and refusal is None:
                if _VALID_HOST.fullmatch(value) is None:
                    refusal = ParseError(400, "invalid Host header")
                elif len(_HOSTS_SEEN) < _HOSTS_SEEN_MAX:
                    _HOSTS_SEEN.add(value)
    if hosts > 1 or (http11 and hosts == 0):
        raise ParseError(400, "HTTP/1.1 requests need exactly one Host header")

    if not http11 and http_version != b"1.0":
        if http_version[:1].isdigit() and http_version[:1] >= b"2":
            raise ParseError(505, f"HTTP/{http_version.decode('latin-1')} is not supported")
        raise ParseError(400, "unsupported HTTP version")
    if limits.request_line and len(method) + len(target) + 10 > limits.request_line:
        raise ParseError(414, "request line too long")
    if target[:1] != b"/" and not _other_target_form_ok(method, target):
        raise ParseError(400, "request target form does not fit the method")
    if limits.fields and len(headers) > limits.fields:
        raise ParseError(431, "too many header fields")
    if refusal is not None:
        raise refusal
    if chunked and not http11:
        raise ParseError(400, "Transfer-Encoding in an HTTP/1.0 request")  # RFC 9112 6.1
    if chunked and content_length is not None:
        # RFC 9112 6.1: a request with both is how requests are smuggled past a proxy.
        raise ParseError(400, "both Content-Length and Transfer-Encoding")
    if limits.body and content_length is not None and content_length > limits.body:
        raise ParseError(413, "request body too large")
    if upgrade is not None and not connection_upgrade:
        upgrade = None  # Upgrade without "Connection: upgrade" asks for nothing
    return keep_alive, expect_continue, content_length, chunked, forwarded, upgrade


def _other_target_form_ok(method: bytes, target: bytes) -> bool:
    """RFC 9112 3.2: a target not in origin-form ("/...") is absolute-form, authority-form for
    CONNECT, or asterisk-form ("*": OPTIONS, and SSDP's M-SEARCH in practice; never PRI,
    which only opens an HTTP/2 connection)."""
    if target == b"*":
        return method != b"PRI"
    if method == b"CONNECT":
        return _AUTHORITY_FORM.fullmatch(target) is not None
    return _ABSOLUTE_FORM.fullmatch(target) is not None
