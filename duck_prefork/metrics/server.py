"""The scrape endpoint, served by the master from its poll loop: no thread, no event loop.

Every socket is non-blocking and every connection bounded: a request head of at most
MAX_REQUEST bytes, the whole exchange within DEADLINE seconds, at most MAX_SCRAPES
connections at once (one more is closed as soon as it is accepted), one request per
connection (the answer says Connection: close). A scraper that sends nothing, sends too much,
or opens a thousand connections costs the master a recv or an accept and a close each, and
supervision goes on: the master's loop never waits on a scraper.

GET /metrics   Prometheus text (OpenMetrics when Accept asks for application/openmetrics-text)
GET /status    the JSON that `duck-prefork status` reads

With a token (--metrics-token FILE), a request without `Authorization: Bearer <token>` is
answered 401; the token is compared in constant time (hmac.compare_digest).
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import os
import select
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from ..net.listeners import parse_bind, remove_stale_unix_socket

MAX_REQUEST = 8192
DEADLINE = 5.0
MAX_SCRAPES = 32
ACCEPTS_PER_WAKE = 64  # then the loop goes round (supervision first) and comes back
SOCKET_MODE = 0o600

# What a request gets: (status, content type, body) from the path and the Accept header.
Responder = Callable[[str, str], tuple[int, str, bytes]]

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 431: "Request Header Fields Too "
            "Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class MetricsBindError(Exception):
    """--metrics-bind cannot be served; str() is the one line for the operator."""


def needs_token(address: str) -> bool:
    """A TCP address anyone but this host can reach: serving it takes --metrics-token."""
    parsed = parse_bind(address)
    if parsed.kind != "tcp":
        return False
    if parsed.host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(parsed.host).is_loopback
    except ValueError:
        return True  # a host name: whatever it resolves to later


def bind(address: str) -> socket.socket:
    """The listening socket for --metrics-bind (unix:PATH made mode 0600, or HOST:PORT);
    raises MetricsBindError naming the reason."""
    parsed = parse_bind(address)
    try:
        if parsed.kind == "unix":
            directory = os.path.dirname(os.path.abspath(parsed.path))
            if not os.path.isdir(directory):
                raise MetricsBindError(f"--metrics-bind {address}: the directory {directory} "
                                       "does not exist")
            remove_stale_unix_socket(parsed.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o177)  # created 0600: no moment where others may connect
            try:
                sock.bind(parsed.path)
            except BaseException:
                sock.close()
                raise
            finally:
                os.umask(old_umask)
        elif parsed.kind == "tcp":
            infos = socket.getaddrinfo(parsed.host, parsed.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family, _, _, _, sockaddr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(sockaddr)
            except BaseException:
                sock.close()
                raise
        else:
            raise MetricsBindError(f"--metrics-bind {address}: expected unix:PATH or HOST:PORT")
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and parsed.kind == "unix":
            raise MetricsBindError(f"--metrics-bind {address}: {exc.strerror or exc} (a live "
                                   "process holds it)") from None
        raise MetricsBindError(f"--metrics-bind {address}: {exc.strerror or exc}") from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


def read_token(path: str) -> bytes:
    """The bearer token in FILE (surrounding whitespace dropped); raises MetricsBindError."""
    try:
        with open(path, "rb") as file:
            token = file.read().strip()
    except OSError as exc:
        raise MetricsBindError(f"--metrics-token: cannot read {path}: {exc.strerror or exc}") \
            from None
    if not token:
        raise MetricsBindError(f"--metrics-token: {path} is empty")
    return token


@dataclass
class Scrape:
    """One scraper's connection."""

    sock: socket.socket
    deadline: float
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytes = b""
    answered: bool = False


def answer(status: int, content_type: str, body: bytes, head_only: bool = False,
           extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Cache-Control: no-store\r\n{extra}Connection: close\r\n\r\n")
    return head.encode("latin-1") + (b"" if head_only else body)


def parse_request(head: bytes) -> tuple[str, str, dict[str, str]] | None:
    """(method, path, headers with lowercase names) of a request head, or None if it is not
    one."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1."):
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    return method, target.partition("?")[0], headers


def authorized(headers: dict[str, str], token: bytes | None) -> bool:
    if token is None:
        return True
    given = headers.get("authorization", "")
    scheme, _, credentials = given.partition(" ")
    # compare_digest's time depends on the lengths only, not on where the bytes differ.
    return hmac.compare_digest(credentials.strip().encode("latin-1", "replace"), token) \
        and scheme.lower() == "bearer"


class MetricsServer:
    """The listening socket and its scrapes, driven by the master's poll loop: poll_fds() to
    register, on_event() for each ready descriptor, expire() every round."""

    def __init__(self, sock: socket.socket, respond: Responder, token: bytes | None,
                 now: Callable[[], float]):
        self.sock = sock
        self.respond = respond
        self.token = token
        self.now = now
        self.scrapes: dict[int, Scrape] = {}

    def poll_fds(self) -> dict[int, int]:
        fds = {self.sock.fileno(): select.POLLIN}
        for fd, scrape in self.scrapes.items():
            fds[fd] = select.POLLOUT if scrape.outbox else select.POLLIN
        return fds

    def deadline(self) -> float | None:
        return min((scrape.deadline for scrape in self.scrapes.values()), default=None)

    def on_event(self, fd: int) -> None:
        if fd == self.sock.fileno():
            self._accept()
            return
        scrape = self.scrapes.get(fd)
        if scrape is None:
            return
        if scrape.outbox:
            self._send(scrape)
        else:
            self._receive(scrape)

    def expire(self) -> None:
        now = self.now()
        for scrape in [s for s in self.scrapes.values() if now >= s.deadline]:
            self._close(scrape)

    def close(self) -> None:
        for scrape in list(self.scrapes.values()):
            self._close(scrape)
        self.sock.close()

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE, ECONNABORTED...: the next wake-up tries again
            if len(self.scrapes) >= MAX_SCRAPES:
                sock.close()  # too many at once: this one is cut at once
                continue
            sock.setblocking(False)
            scrape = self.scrapes[sock.fileno()] = Scrape(sock, self.now() + DEADLINE)
            # The request is usually there already: answered in this round, not the next
            # (and so never cut by a USR2 exec between the two).
            self._receive(scrape)

    def _receive(self, scrape: Scrape) -> None:
        try:
            data = scrape.sock.recv(MAX_REQUEST + 1 - len(scrape.inbox))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(scrape)
            return
        if not data:
            self._close(scrape)
            return
        scrape.inbox += data
        end = scrape.inbox.find(b"\r\n\r\n")
        if end < 0:
            if len(scrape.inbox) > MAX_REQUEST:
                self._reply(scrape, answer(431, "text/plain", b"request head too large\n"))
            return
        self._reply(scrape, self._handle(bytes(scrape.inbox[:end])))

    def _handle(self, head: bytes) -> bytes:
        request = parse_request(head)
        if request is None:
            return answer(400, "text/plain", b"bad request\n")
        method, path, headers = request
        if not authorized(headers, self.token):
            return answer(401, "text/plain", b"a bearer token is needed\n",
                          extra='WWW-Authenticate: Bearer realm="duck-prefork"\r\n')
        if method not in ("GET", "HEAD"):
            return answer(405, "text/plain", b"GET or HEAD\n", extra="Allow: GET, HEAD\r\n")
        status, content_type, body = self.respond(path, headers.get("accept", ""))
        return answer(status, content_type, body, head_only=method == "HEAD")

    def _reply(self, scrape: Scrape, response: bytes) -> None:
        scrape.outbox = response
        scrape.answered = True
        self._send(scrape)

    def _send(self, scrape: Scrape) -> None:
        try:
            sent = scrape.sock.send(scrape.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(scrape)
            return
        scrape.outbox = scrape.outbox[sent:]
        if not scrape.outbox:
            self._close(scrape)

    def _close(self, scrape: Scrape) -> None:
        self.scrapes.pop(scrape.sock.fileno(), None)
        scrape.sock.close()
