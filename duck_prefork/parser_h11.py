"""bytes -> request head / body / end of message, with h11 as the parser.

Only the request side of h11 is used: responses are framed by the shared pipeline, so h11 never
learns that a response was sent. A fresh h11.Connection per request cycle stands in for
h11's start_next_cycle() (which needs both sides DONE); the bytes a client pipelined behind the
previous request are carried over through `trailing_data`.

h11 is lenient in two ways a smuggling-aware server is not (RFC 9112 2.2 and 5.2 allow both
choices): it accepts a bare LF as a line ending and unfolds obsolete line folding. Both are
only visible in the raw head, so this adapter keeps the bytes of the head being read and
checks them once h11 has found its end.
"""

from __future__ import annotations

import h11

from .http11 import CONNECTION_CLOSED, END_OF_MESSAGE, NEED_DATA, PAUSED
from .request_head import DEFAULT_LIMITS, Limits, ParseError


class H11Parser:
    """The parser contract of http11.py, implemented over h11."""

    __slots__ = ("_conn", "_head", "_head_size", "_line_limit")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._head_size = limits.head_size
        self._line_limit = limits.request_line
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._head_size)
        self._head: bytearray | None = bytearray()  # raw bytes of the head being read

    def feed(self, data: bytes) -> None:
        if self._head is not None and len(self._head) <= self._head_size:
            self._head += data
        self._conn.receive_data(data)

    def next_event(self):
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise self._refusal(exc) from None
        kind = type(event)
        if kind is h11.Data:
            data = event.data
            return data if type(data) is bytes else bytes(data)
        if kind is h11.Request:
            self._check_raw_head()
            return (event.method, event.target, event.http_version, list(event.headers))
        if kind is h11.EndOfMessage:
            return END_OF_MESSAGE
        if event is h11.NEED_DATA:
            return NEED_DATA
        if event is h11.PAUSED:
            return PAUSED
        return CONNECTION_CLOSED

    def start_next_cycle(self) -> None:
        data, closed = self._conn.trailing_data
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._head_size)
        self._head = bytearray()
        if data:
            self.feed(bytes(data))
        if closed:
            self._conn.receive_data(b"")

    def _check_raw_head(self) -> None:
        head = self._head
        self._head = None  # the body and what follows are not head bytes
        end = head.find(b"\n\r\n")
        lf_end = head.find(b"\n\n")
        if end < 0 or 0 <= lf_end < end:
            end = lf_end
        head = head[:end + 1]
        if head.count(b"\n") != head.count(b"\r\n"):
            raise ParseError(400, "bare LF in the request head")
        if b"\n " in head or b"\n\t" in head:
            raise ParseError(400, "obsolete line folding in a header")

    def _refusal(self, exc: h11.RemoteProtocolError) -> ParseError:
        status = exc.error_status_hint
        if status == 431 and self._line_limit and self._head is not None:
            # The head outgrew its bound: say 414 if the request line alone did.
            line_end = self._head.find(b"\n")
            if line_end < 0 or line_end > self._line_limit:
                status = 414
        return ParseError(status, str(exc))
