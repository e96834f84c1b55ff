"""bytes -> request head / body / end of message, with h11 as the parser.

Only the request side of h11 is used: responses are framed by the shared pipeline, so h11 never
learns that a response was sent. A fresh h11.Connection per request cycle stands in for
h11's start_next_cycle() (which needs both sides DONE); the bytes a client pipelined behind the
previous request are carried over through `trailing_data`.
"""

from __future__ import annotations

import h11

from .http11 import CONNECTION_CLOSED, END_OF_MESSAGE, NEED_DATA, PAUSED, ParseError

# h11 bounds the request head (request line + headers) with this many bytes.
MAX_HEAD_SIZE = 16 * 1024


class H11Parser:
    """The parser contract of http11.py, implemented over h11."""

    __slots__ = ("_conn",)

    def __init__(self) -> None:
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)

    def feed(self, data: bytes) -> None:
        self._conn.receive_data(data)

    def next_event(self):
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ParseError(exc.error_status_hint, str(exc)) from None
        kind = type(event)
        if kind is h11.Data:
            data = event.data
            return data if type(data) is bytes else bytes(data)
        if kind is h11.Request:
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
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
        if data:
            self._conn.receive_data(bytes(data))
        if closed:
            self._conn.receive_data(b"")
