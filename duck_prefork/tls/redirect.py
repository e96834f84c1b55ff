"""--redirect-https: a plain listener's connections answer every request with a 308 to the same
URL on the TLS listener, the usual bare-server setup (port 80 sends everyone to 443).

It is the one stage of the plain listeners' ConnectionPlan: it reads a request head (up to
HEAD_LIMIT bytes, within --header-timeout), answers it and closes the connection; the app is
never called and the HTTP/1.1 codec never runs. 308 keeps the method and the body (RFC 9110
15.4.9), so a POST is sent again to https, not turned into a GET.
"""

from __future__ import annotations

import re

from ..net.stages import Stage

HEAD_LIMIT = 16 * 1024
DEFAULT_TIMEOUT = 10.0

_HOST = re.compile(rb"(?:[A-Za-z0-9._~!$&'()*+,;=%-]+|\[[0-9A-Fa-f:.]+\])(?::\d*)?")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_ABSOLUTE = re.compile(rb"[Hh][Tt][Tt][Pp][Ss]?://([^/?#]*)(/[\x21-\x7e]*|[?][\x21-\x7e]*)?")

BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
               b"Connection: close\r\n\r\nBad Request\n")


def location(target: bytes, host: bytes | None, fallback_host: str, tls_port: int) -> bytes | None:
    """The https URL for a request's target and Host header (None: the request is malformed).
    `fallback_host`: for a request without Host (HTTP/1.0), the address it reached."""
    absolute = _ABSOLUTE.fullmatch(target)
    if absolute:
        host = absolute.group(1) or host
        path = absolute.group(2) or b"/"
        if path.startswith(b"?"):
            path = b"/" + path
    elif _TARGET.fullmatch(target):
        path = target
    elif target == b"*" or (b"/" not in target and b":" in target):  # OPTIONS *, CONNECT
        path = b"/"
    else:
        return None
    if host is None:
        name = fallback_host.encode("ascii")
        if b":" in name:
            name = b"[" + name + b"]"
    elif _HOST.fullmatch(host):
        name = host[:host.rindex(b":")] if host.rfind(b":") > host.rfind(b"]") else host
    else:
        return None
    port = b"" if tls_port == 443 else b":%d" % tls_port
    return b"https://" + name + port + path


class RedirectToHttps(Stage):
    """One plain connection: read a head, answer 308 (400 if it cannot be read), close."""

    name = "redirect to https"

    def __init__(self, tls_port: int, timeout: float) -> None:
        self.tls_port = tls_port
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.head = b""
        self.answered = False

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            end = self.head.find(b"\n\n")
        if end < 0:
            if len(self.head) > HEAD_LIMIT:
                self._answer(None)
            return
        self._answer(self._location(self.head[:end]))

    def _location(self, head: bytes) -> bytes | None:
        lines = head.replace(b"\r\n", b"\n").split(b"\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return None
        host = None
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if colon and name.strip().lower() == b"host":
                if host is not None:
                    return None  # two Host headers
                host = value.strip()
        server = self.link.facts.server
        fallback = str(server[0]) if server and server[1] is not None else "localhost"
        return location(parts[1], host or None, fallback, self.tls_port)

    def _answer(self, url: bytes | None) -> None:
        self.answered = True
        self.head = b""
        transport = self.link.transport
        if url is None:
            transport.write(BAD_REQUEST)
        else:
            transport.write(b"HTTP/1.1 308 Permanent Redirect\r\nLocation: " + url +
                            b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        # Our side ends after the answer, and what the client still sends (a request body) is
        # read and dropped until it closes or the timeout: closing with unread bytes would
        # make the kernel reset the connection, and the client could lose the answer.
        if transport.can_write_eof():
            transport.write_eof()
        else:
            self.link.fail("redirected to https")

    def eof_received(self) -> None:
        self.link.fail("the client closed its side")
