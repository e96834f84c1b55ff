"""bytes -> request head / body / end of message, with h11 as the parser.

Only the request side of h11 is used: responses are framed by the shared pipeline, so h11 never
learns that a response was sent. A fresh h11.Connection per request cycle stands in for
h11's start_next_cycle() (which needs both sides DONE); the bytes a client pipelined behind the
previous request are carried over through `trailing_data`.

h11 is lenient in ways a smuggling-aware server is not: it accepts a bare LF as a line ending
and unfolds obsolete line folding in the head (RFC 9112 2.2 and 5.2 allow both choices), and
it takes any bytes after a chunk size and chunk sizes of any length. These are only visible in
the raw bytes, so this adapter keeps the bytes of the head being read and checks them once h11
has found its end, and runs a ChunkedFraming check beside h11 over a chunked body.
"""

from __future__ import annotations

import re
from typing import Any, Final

import h11

from .connection import CONNECTION_CLOSED, END_OF_MESSAGE, NEED_DATA, PAUSED, Parser
from .request_head import DEFAULT_LIMITS, Limits, ParseError

_EMPTY_LINE_BYTES = (b"\r", b"\n")


class H11Parser(Parser):
    """The parser contract of http11.py, implemented over h11."""

    __slots__ = ("_conn", "_head", "_head_size", "_line_limit", "_chunked", "_error")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._head_size = limits.head_size
        self._line_limit = limits.request_line
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._head_size)
        # Raw bytes of the head being read: the data itself when the head arrives in one
        # piece, else a bytearray that each piece is appended to.
        self._head: bytes | bytearray | None = b""
        self._chunked: ChunkedFraming | None = None  # checks the chunked body being read
        self._error: ParseError | None = None  # found while feeding, raised by next_event

    def feed(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            if not head and data[:1] in _EMPTY_LINE_BYTES:
                # RFC 9112 2.2: a server SHOULD ignore empty lines before a request line. CRs
                # and LFs are skipped one by one, as llhttp does (parser_httptools.py).
                data = data.lstrip(b"\r\n")
                if not data:
                    return
            if not head:
                self._head = data  # usually a whole head arrives in one piece: no copy
            elif len(head) <= self._head_size:
                if type(head) is not bytearray:  # the second piece: from now on, one buffer
                    head = self._head = bytearray(head)
                head += data  # in place: a head arriving in many pieces costs linear time
        elif self._chunked is not None and self._error is None:
            self._check_chunked(data)
        self._conn.receive_data(data)

    def _check_chunked(self, data: bytes) -> None:
        try:
            # (callers check that a chunked body is being read: narrowing stops at the call)
            if self._chunked.feed(data):  # type: ignore[union-attr]
                self._chunked = None  # the body ended; what follows is the next request
        except ParseError as exc:
            self._error = exc

    def next_event(self):
        if self._error is not None:
            raise self._error
        try:
            event: Any = self._conn.next_event()  # dispatched on type(event) below
        except h11.RemoteProtocolError as exc:
            raise self._refusal(exc) from None
        kind = type(event)
        if kind is h11.Data:
            data = event.data
            return data if type(data) is bytes else bytes(data)
        if kind is h11.Request:
            # raw_items() is a plain list; iterating h11's Headers goes through
            # Sequence.__getitem__ one header at a time, at three times the cost.
            headers = [(name.lower(), value) for name, value in event.headers.raw_items()]
            body = self._check_raw_head(len(headers))
            for name, _ in headers:
                if name == b"transfer-encoding":  # h11 accepts no coding but chunked
                    self._chunked = ChunkedFraming()
                    self._check_chunked(bytes(body))
                    self._raise_error()
                    break
            return (event.method, event.target, event.http_version, headers)
        if kind is h11.EndOfMessage:
            self._chunked = None
            return END_OF_MESSAGE
        if event is h11.NEED_DATA:
            return NEED_DATA
        if event is h11.PAUSED:
            if self._conn.their_state is h11.DONE:
                data, closed = self._conn.trailing_data
                if not data.lstrip(b"\r\n"):
                    # Only empty lines after the request: not the start of another one (RFC 9112
                    # 2.2; llhttp skips them in passing). start_next_cycle() drops them.
                    return CONNECTION_CLOSED if closed else NEED_DATA
            return PAUSED
        return CONNECTION_CLOSED

    def take_upgrade_data(self) -> bytes:
        """The bytes after the head just returned, for the protocol the connection switches
        to (h11 holds them unparsed: an upgrade GET has no body)."""
        return bytes(self._conn.trailing_data[0])

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """The bytes received after the current request, and whether the client closed."""
        data, closed = self._conn.trailing_data
        return bytes(data), closed

    def start_next_cycle(self) -> None:
        data, closed = self._conn.trailing_data
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._head_size)
        self._head = b""
        self._chunked = None
        if data:
            self.feed(bytes(data))
        if closed:
            self._conn.receive_data(b"")

    def _raise_error(self) -> None:
        """Raise what _check_chunked found, if anything. (A method of its own: within
        next_event() the type checker still holds self._error to be None from the check above
        the call that set it, and the compiled build would enforce that.)"""
        if self._error is not None:
            raise self._error

    def _check_raw_head(self, fields: int) -> bytes | bytearray:
        """Refuse a head with bare LFs or folded lines; returns the bytes after it.

        A head of `fields` header lines that h11 accepted has exactly fields + 1 line ends
        before its blank line, all CRLF, unless a line was folded (h11 joins it to the one
        before: one line end more) or ends in a bare LF (one CRLF less). Searches are bound by
        `end`, so no copy of the head is made."""
        raw: Any = self._head  # bytes or bytearray: a head was just read
        self._head = None  # the body and what follows are not head bytes
        end = raw.find(b"\n\r\n")
        if end >= 0 and raw.count(b"\r\n", 0, end + 1) == raw.count(b"\n", 0, end + 1) \
                == fields + 1:
            return raw[end + 3:]
        if end < 0 or raw.count(b"\n", 0, end) != raw.count(b"\r\n", 0, end):
            raise ParseError(400, "bare LF in the request head")
        raise ParseError(400, "obsolete line folding in a header")

    def _refusal(self, exc: h11.RemoteProtocolError) -> ParseError:
        status = exc.error_status_hint
        if status == 431 and self._line_limit and self._head is not None:
            # The head outgrew its bound: say 414 if the request line alone did.
            line_end = self._head.find(b"\n")
            if line_end < 0 or line_end > self._line_limit:
                status = 414
        return ParseError(status, str(exc))


# chunk-size [chunk-ext] CRLF (RFC 9112 7.1.1), the size in at most 16 hex digits (64 bits):
# chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*" + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*\r\n")
_MAX_LINE = 4096  # a chunk-size or trailer line longer than this is refused


class ChunkedFraming:
    """Follows a chunked body's framing byte by byte, beside h11, and refuses what h11 lets
    through: malformed chunk extensions, whitespace after the size, sizes past 64 bits, and
    chunk data not followed by CRLF. feed() returns True once the body has ended."""

    __slots__ = ("_state", "_remaining", "_line")

    _SIZE: Final = 0
    _DATA: Final = 1
    _DATA_END: Final = 2
    _TRAILERS: Final = 3

    def __init__(self) -> None:
        self._state = self._SIZE
        self._remaining = 0
        self._line = b""

    def feed(self, data: bytes) -> bool:
        position, end = 0, len(data)
        while position < end:
            if self._state == self._DATA:
                taken = min(self._remaining, end - position)
                position += taken
                self._remaining -= taken
                if not self._remaining:
                    self._state = self._DATA_END
                continue
            newline = data.find(b"\n", position)
            if newline < 0:
                self._line += data[position:]
                if len(self._line) > _MAX_LINE:
                    raise ParseError(400, "chunk framing line too long")
                return False
            line = self._line + data[position:newline + 1]
            self._line = b""
            position = newline + 1
            if self._line_ends_body(line):
                return True
        return False

    def _line_ends_body(self, line: bytes) -> bool:
        if self._state == self._SIZE:
            match = _CHUNK_SIZE_LINE.fullmatch(line)
            if match is None:
                raise ParseError(400, "invalid chunk size line")
            self._remaining = int(match.group(1), 16)
            self._state = self._DATA if self._remaining else self._TRAILERS
        elif self._state == self._DATA_END:
            if line != b"\r\n":
                raise ParseError(400, "chunk data not followed by CRLF")
            self._state = self._SIZE
        elif line == b"\r\n":  # _TRAILERS: the empty line ends them, and the body
            return True
        return False
