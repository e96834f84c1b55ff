"""bytes -> request head / body / end of message, with httptools (llhttp, the C parser behind
Node.js) as the parser, and exactly the outcomes of the h11 adapter (parser_h11.py).

llhttp reads the requests that make up nearly all traffic: a head, then no body or a
Content-Length body. Whatever it would judge differently from h11 goes to an H11Parser for that
one request, fed the request's raw bytes from its first byte, so the outcome is h11's by
construction:
- a head llhttp refuses: llhttp's status can differ (400 for what h11 answers 501 or 505), and
  llhttp refuses what h11 accepts (methods outside llhttp's list: any token is a method; control
  characters in field values; "Content-Length: 5, 5"; HTTP/2.0 and other versions, which
  request_head.py answers 505 or 400);
- a request line with more than one space between its parts, which llhttp accepts, or a
  protocol other than HTTP (llhttp also reads RTSP/ and ICE/);
- a Transfer-Encoding field: llhttp refuses chunk extensions with whitespace (RFC 9112 allows
  BWS there) and skips h11's checks of codings and trailers;
- a protocol-switch request with a body: llhttp takes everything after the head as the new
  protocol's bytes, h11 reads the body first;
- a head still incomplete past the head-size bound, so that the 431 (or 414) is h11's.
At the next request cycle the bytes h11 holds after that request go back to llhttp.

llhttp parses all it is given, so a request's end is found in the raw bytes: a second request
starting in the same piece of data stops llhttp (on_message_begin raises), and the bytes from
the first request's end on wait for start_next_cycle(), like h11's trailing_data. The request
line is read from the raw bytes too (no on_url callback): that is also where the one-space
rule is checked. CRs and LFs between requests are skipped, as llhttp does (the h11 adapter
too). Checks of a head's meaning (Host, versions, Content-Length values, limits) are
request_head.py's, for both adapters.
"""

from __future__ import annotations

from typing import Any, Final

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)

from ..errors import ParserStopped
from .connection import CONNECTION_CLOSED, END_OF_MESSAGE, NEED_DATA, PAUSED, Parser
from .parser_h11 import H11Parser
from .request_head import DEFAULT_LIMITS, Limits, ParseError

# Where the request being read is, as seen by llhttp's callbacks.
_IDLE: Final = 0
_HEAD: Final = 1
_BODY: Final = 2
_DONE: Final = 3


_WATCHED: Final = frozenset((b"transfer-encoding", b"upgrade"))
# Request header names as sent -> lowercased: clients send the same few names with every
# request, so one lookup replaces a lower() (bounded: made-up names stop adding).
_LOWERED: Final[dict[bytes, bytes]] = {}
_LOWERED_MAX: Final = 4096
_NEXT_REQUEST: Final = 1
_TO_H11: Final = 2  # llhttp reached the next request; this request goes to h11


class HttptoolsParser(Parser):
    """The parser contract of http11.py, implemented over httptools (llhttp)."""

    __slots__ = ("_limits", "_head_size", "_parser", "_events", "_taken", "_phase", "_headers",
                 "_raw", "_unfed", "_stop", "_hold", "_h11", "_trailing", "_closed", "_switch",
                 "_error")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._head_size = limits.head_size
        # None once a callback stopped llhttp (unusable then): the slow paths set it so, with
        # _hold set, which keeps feed() off it. Typed as the hot path reads it: not Optional.
        self._parser = HttpRequestParser(self)
        # The events made and not yet returned are _events[_taken:]; the list is emptied once
        # all are taken. (A list and an index: plain C calls in the compiled build, where a
        # deque's append and popleft are calls by name.)
        self._events: list[Any] = []
        self._taken = 0
        self._phase = _IDLE
        self._headers: list[tuple[bytes, bytes]] = []
        # The request's bytes so far, while its head is read: the data itself when the head
        # arrives in one piece, else a bytearray that each piece is appended to.
        self._raw: bytes | bytearray | None = None
        self._unfed = 0  # bytes at the end of _raw not yet given to llhttp (see feed)
        self._stop = 0  # why a callback stopped llhttp
        # Set for every state but "llhttp reads the current request": feed(), next_event() and
        # start_next_cycle() then take their slow paths.
        self._hold = False
        self._h11: H11Parser | None = None  # reads the current request instead of llhttp
        self._trailing = b""  # bytes after a complete request, kept for the next cycle
        self._closed = False  # the client closed its side
        self._switch = False  # h11 would wait for a protocol switch after this request
        self._error: ParseError | None = None

    # --- the contract ------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if (self._hold or self._phase == _DONE) and self._feed_held(data):
            return
        if not data:
            self._eof()
            return
        phase = self._phase
        if phase == _IDLE:
            if data[0] <= 13:
                # RFC 9112 2.2: ignore empty lines before a request line; CRs and LFs are
                # skipped one by one, as llhttp skips them after a request, and the h11 adapter
                # does too.
                data = data.lstrip(b"\r\n")
                if not data:
                    return
            self._raw = data  # a whole head in one piece, the common case: no copy
        elif phase == _HEAD:
            raw: Any = self._raw  # bytes or bytearray while a head is read
            if type(raw) is not bytearray:  # the second piece: from now on, one buffer
                raw = self._raw = bytearray(raw)
            raw += data  # in place: a head arriving in many pieces costs linear time
            # llhttp joins the pieces of a header line it is given one by one with a copy each
            # (quadratic, for a long line arriving a byte at a time): it is given whole lines.
            unfed = self._unfed + len(data)
            if 10 not in data:  # no LF (an int: a plain memchr, see asgi.pipeline.PERCENT)
                self._unfed = unfed
                if len(raw) > self._head_size or raw.startswith(b"PRI "):
                    self._to_h11(raw)  # as below
                return
            self._unfed = 0
            if unfed > len(data):
                data = bytes(raw[-unfed:])
        mark = len(self._events)
        try:
            self._parser.feed_data(data)
        except HttpParserCallbackError:
            self._stopped(data, mark, phase)
        except HttpParserUpgrade as exc:
            self._upgrade(data, exc.args[0])
        except HttpParserError as exc:
            self._failed(data, mark, phase, exc)
        if self._phase == _HEAD:
            raw = self._raw
            # h11 answers a head past the bound (431, or 414 for the request line alone), and
            # reads PRI heads: llhttp waits for the HTTP/2 preface's "SM" before it says more.
            if len(raw) > self._head_size or raw.startswith(b"PRI "):
                self._to_h11(raw)
        else:
            self._raw = None

    def next_event(self):
        events = self._events
        taken = self._taken
        if taken < len(events):
            event = events[taken]
            if taken + 1 == len(events):
                events.clear()
                self._taken = 0
            else:
                self._taken = taken + 1
            return event
        if self._hold:
            return self._next_held()
        return NEED_DATA

    def start_next_cycle(self) -> None:
        if self._hold:
            self._next_cycle_held()
        else:
            self._phase = _IDLE

    def take_upgrade_data(self) -> bytes:
        if self._h11 is not None:
            return self._h11.take_upgrade_data()
        return self._trailing

    # --- llhttp's callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._phase == _DONE:  # a pipelined request: not before start_next_cycle()
            self._stop = _NEXT_REQUEST
            raise ParserStopped
        self._phase = _HEAD
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = _LOWERED.get(name)
        if lowered is None:
            lowered = name.lower()
            if len(_LOWERED) < _LOWERED_MAX:
                _LOWERED[name] = lowered
        name = lowered
        if name in _WATCHED:
            if name == b"transfer-encoding":
                self._stop = _TO_H11
            elif value.strip(b" \t,"):
                # h11 proposes a protocol switch for any Upgrade token (llhttp only with
                # "Connection: upgrade"): after the request, PAUSED until start_next_cycle().
                self._switch = self._hold = True
        if value and (value[-1] == 32 or value[-1] == 9):  # llhttp strips only leading OWS
            value = value.rstrip(b" \t")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # The request line, from the raw bytes: llhttp has checked the method (it ends at
        # len(method)) and the target's bytes, but allows more than one space between the
        # parts, and protocols other than HTTP.
        raw: Any = self._raw  # bytes or bytearray while a head is read
        if type(raw) is bytearray:  # the head came in pieces: the slices below must be bytes
            raw = bytes(raw)
        method = self._parser.get_method()
        start = len(method) + 1
        end = raw.find(b" ", start)
        # "HTTP/x.y" CRLF after the target: compared as a slice (startswith() with a position
        # parses its arguments the slow way)
        version_field = raw[end + 1:end + 11]
        if version_field == b"HTTP/1.1\r\n" and end > start and not self._stop:
            version = b"1.1"
        elif version_field[:5] == b"HTTP/" and version_field[8:] == b"\r\n" \
                and end > start and not self._stop:
            version = version_field[5:8]
        else:  # or Transfer-Encoding: h11 reads this request
            self._stop = _TO_H11
            raise ParserStopped
        self._events.append((method, raw[start:end], version, self._headers))
        self._phase = _BODY

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._events.append(END_OF_MESSAGE)
        self._phase = _DONE

    # --- the slow paths ----------------------------------------------------------------------

    def _feed_held(self, data: bytes) -> bool:
        """Take `data` outside llhttp's normal reading; False: read it normally."""
        if self._h11 is not None:
            self._h11.feed(data)
        elif self._error is not None or self._closed:
            pass
        elif self._phase == _DONE:  # the next request waits for start_next_cycle()
            if data:
                self._trailing += data
            else:
                self._closed = True
            self._hold = True
        else:
            return False
        return True

    def _next_held(self):
        if self._h11 is not None:
            return self._h11.next_event()
        if self._error is not None:
            raise self._error
        if self._phase == _DONE and (self._switch or self._trailing.lstrip(b"\r\n")):
            return PAUSED
        return CONNECTION_CLOSED if self._closed else NEED_DATA

    def _next_cycle_held(self) -> None:
        if self._h11 is not None:
            data, closed = self._h11.trailing_data
            self._h11 = None
        else:
            data, closed = self._trailing, self._closed
        self._trailing = b""
        self._closed = self._switch = self._hold = False
        self._error = None
        self._phase = _IDLE
        self._unfed = 0
        if self._parser is None:
            self._parser = HttpRequestParser(self)
        if data:
            self.feed(data)
        if closed:
            self.feed(b"")

    def _eof(self) -> None:
        self._closed = self._hold = True
        if self._phase != _IDLE:
            self._error = ParseError(400, "the client closed the connection inside a request")

    def _stopped(self, data: bytes, mark: int, phase: int) -> None:
        """A callback stopped llhttp (its parser is then unusable)."""
        self._parser = None  # type: ignore[assignment]  # see _parser in __init__
        reason, self._stop = self._stop, 0
        if reason == _NEXT_REQUEST:
            self._keep_trailing(data, mark, phase)
        elif reason == _TO_H11:
            self._to_h11(self._raw)
        else:
            raise AssertionError("llhttp callback failed")  # a bug: the context shows it

    def _failed(self, data: bytes, mark: int, phase: int, exc: HttpParserError) -> None:
        """llhttp refused the bytes."""
        self._parser = None  # type: ignore[assignment]  # see _parser in __init__
        if self._phase == _DONE:
            # Bytes after a request that closes the connection: they are not read.
            self._keep_trailing(data, mark, phase)
        elif self._phase == _BODY:
            self._fail(ParseError(400, str(exc)))
        else:
            self._to_h11(self._raw)

    def _upgrade(self, data: bytes, offset: int) -> None:
        """llhttp stops after the head of a CONNECT, or of a request with Upgrade and
        "Connection: upgrade", and calls the request complete, body or not."""
        self._parser = None  # type: ignore[assignment]  # see _parser in __init__
        headers = self._headers
        if any(name == b"content-length" and int(value) for name, value in headers):
            self._events.pop()  # END_OF_MESSAGE: h11 reads the body as the request's
            self._to_h11(self._raw)
            return
        self._trailing = data[offset:]
        method = self._events[-2][0]
        self._switch = method == b"CONNECT" or any(
            name == b"upgrade" and value.strip(b" \t,") for name, value in headers)
        self._hold = True

    def _keep_trailing(self, data: bytes, mark: int, phase: int) -> None:
        """llhttp went past the end of the complete request: keep the bytes after it."""
        end = 0
        if phase == _IDLE or phase == _HEAD:  # the head ended in this data
            raw: Any = self._raw  # bytes or bytearray: the head ended in this data
            end = raw.find(b"\r\n\r\n") + 4 - (len(raw) - len(data))
        events = self._events
        end += sum(len(events[i]) for i in range(mark, len(events)) if type(events[i]) is bytes)
        self._trailing = data[end:]
        self._hold = True

    def _to_h11(self, raw: bytes | bytearray | None) -> None:
        """Hand the current request, from its first byte, to an H11Parser."""
        self._parser = None  # type: ignore[assignment]  # see _parser in __init__
        self._stop = 0
        self._switch = False
        events = self._events
        while len(events) > self._taken and events[-1] is not END_OF_MESSAGE:
            events.pop()  # what llhttp made of this request
        self._h11 = H11Parser(self._limits)
        self._hold = True
        self._raw = None
        self._unfed = 0
        self._phase = _IDLE  # (for feed(): the request is h11's until start_next_cycle)
        if raw:
            self._h11.feed(bytes(raw))

    def _fail(self, error: ParseError) -> None:
        self._error = error
        self._hold = True

