"""Raw HTTP/1.1 exchanges for the conformance tests: send arbitrary bytes on a fresh
connection, collect what comes back, and split it into the sequence of responses.

Unlike conftest.read_response (http.client underneath), nothing here trusts the server's
output to be well formed: a truncated response, bytes that are not a response, or silence are
all results to report, not exceptions.
"""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass, field

SEND_PIECE = 8192


@dataclass
class Exchange:
    """What one connection saw: the bytes received, and how the exchange ended."""

    data: bytes
    closed: bool  # the server closed (EOF or reset); False: it went silent, connection open
    reset: bool = False  # the close was a reset (RST), possibly losing a response
    unsent: int = 0  # request bytes not sent because the server closed first


def exchange(port: int, raw: bytes, *, idle: float = 1.0, first: float | None = None,
             done=None, half_close: bool = False) -> Exchange:
    """Send `raw` on a new connection and read until the server closes it or stays silent.

    `first`: how long to wait for the first byte (default `idle`); `idle`: silence after the
    last byte that ends the exchange. `done(data)`: an optional early-out, asked after each
    read; when it returns true only a short grace period is left for anything unexpected.
    The request is sent in pieces while reading, so a server that answers and closes before
    the whole request is in gets its answer read, not lost to our own write error.
    `half_close`: shut down our sending side once everything is sent (EOF to the server).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return _exchange(sock, raw, idle, idle if first is None else first, done, half_close)
    finally:
        sock.close()


def _exchange(sock: socket.socket, raw: bytes, idle: float, first: float, done,
              half_close: bool) -> Exchange:
    chunks: list[bytes] = []
    sent = 0
    stop_at = len(raw)  # lowered when the server answers or closes before all is sent
    closed = reset = False
    sock.setblocking(False)
    last = time.monotonic()
    wait = first
    while True:
        sending = sent < stop_at
        timeout = 0.05 if sending else max(0.0, wait - (time.monotonic() - last))
        readable, writable, _ = select.select([sock], [sock] if sending else [], [], timeout)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                closed = reset = True
                break
            except BlockingIOError:
                continue
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
            last = time.monotonic()
            wait = idle
            stop_at = sent  # answered: stop sending the rest, as a client would
            if done is not None and done(b"".join(chunks)):
                wait = min(idle, 0.3)
            continue
        if sending:
            if writable:
                try:
                    sent += sock.send(raw[sent:min(stop_at, sent + SEND_PIECE)])
                except (BrokenPipeError, ConnectionResetError):
                    stop_at = sent  # the server is gone; read what it said
                except BlockingIOError:
                    pass
                last = time.monotonic()  # silence counts from the end of the request
                if half_close and sent >= len(raw):
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
            continue
        if time.monotonic() - last >= wait:
            break
    return Exchange(b"".join(chunks), closed, reset, unsent=len(raw) - sent)


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = True  # False: the stream ended inside this response

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def recorded(self) -> dict | None:
        """What the recorder app saw for this request, if the app answered it."""
        if self.header("x-recorded") != "1":
            return None
        text = self.header("x-recorded-json")
        return json.loads(text) if text is not None else json.loads(self.body)

    def __str__(self) -> str:
        recorded = self.recorded
        who = f"server {self.status}" if recorded is None else \
            f"app {self.status} for {recorded['method']} {recorded['path'][:60]}"
        return who + ("" if self.complete else " (truncated)")


@dataclass
class Parsed:
    responses: list[Response]
    junk: bytes = b""  # bytes after the last response that do not start a response
    error: str | None = None


def parse_responses(data: bytes, head_methods: set[int] | None = None) -> Parsed:
    """Split a byte stream into HTTP/1.1 responses (Content-Length, chunked, or to EOF).

    1xx interim responses are skipped. A response from the recorder app says which method it
    answered, so one to HEAD is known to have no body."""
    responses: list[Response] = []
    pos = 0
    while pos < len(data):
        if not data.startswith(b"HTTP/", pos):
            if data.startswith(b"HTTP/"[:len(data) - pos], pos):
                return Parsed(responses, data[pos:], "truncated status line")
            return Parsed(responses, data[pos:], "bytes that are not a response")
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return Parsed(responses, data[pos:], "truncated response head")
        lines = data[pos:end].decode("latin-1").split("\r\n")
        pos = end + 4
        parts = lines[0].split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            return Parsed(responses, data[pos:], f"bad status line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        response = Response(status, parts[2] if len(parts) > 2 else "", headers)
        if 100 <= status < 200:
            continue
        recorded_json = response.header("x-recorded-json")
        is_head = recorded_json is not None and json.loads(recorded_json)["method"] == "HEAD"
        te = (response.header("transfer-encoding") or "").lower()
        length = response.header("content-length")
        if is_head or status in (204, 304):
            pass
        elif te == "chunked":
            body = b""
            while True:
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    response.complete = False
                    pos = len(data)
                    break
                try:
                    size = int(data[pos:line_end].split(b";")[0], 16)
                except ValueError:
                    return Parsed(responses, data[pos:], "bad chunk size in a response")
                pos = line_end + 2
                if size == 0:
                    trailer_end = data.find(b"\r\n", pos)
                    while trailer_end > pos:  # skip trailer fields
                        pos = trailer_end + 2
                        trailer_end = data.find(b"\r\n", pos)
                    if trailer_end < 0:
                        response.complete = False
                        pos = len(data)
                    else:
                        pos = trailer_end + 2
                    break
                body += data[pos:pos + size]
                pos += size + 2
                if pos > len(data):
                    response.complete = False
                    break
            response.body = body
        elif length is not None:
            if not length.isdigit():
                return Parsed(responses, data[pos:], f"bad Content-Length {length!r}")
            n = int(length)
            response.body = data[pos:pos + n]
            response.complete = len(response.body) == n
            pos += n
        else:
            response.body = data[pos:]  # delimited by the close
            pos = len(data)
        responses.append(response)
    return Parsed(responses)


class LogWatch:
    """The lines a server logged since the last look that say something went wrong inside
    it: a traceback, or an ERROR/CRITICAL record. A client must never cause one."""

    MARKERS = ("Traceback", "[ERROR]", "[CRITICAL]", "Fatal error")

    def __init__(self, server) -> None:
        self.server = server
        self.offset = len(server.log())

    def new_problems(self) -> str:
        text = self.server.log()
        fresh, self.offset = text[self.offset:], len(text)
        if any(marker in fresh for marker in self.MARKERS):
            return fresh[-3000:]
        return ""


def describe(ex: Exchange, parsed: Parsed) -> str:
    """One line: the responses in order, then how the connection ended."""
    parts = [str(r) for r in parsed.responses] or ["no response"]
    if parsed.error:
        parts.append(f"{parsed.error} {parsed.junk[:40]!r}")
    parts.append("reset" if ex.reset else "closed" if ex.closed else "silent, left open")
    return ", ".join(parts)
