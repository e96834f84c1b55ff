"""The client side of HTTP/1.1 towards an upstream, one exchange at a time. Sans-IO.

Requests are written here in one piece (the head joined once; a chunked body framed chunk by
chunk): what goes into them has already been held to h11's rules by the server's own request
parser (http1/), and the headers added (headers.py) are built from it.

Responses are read strictly, with h11 as the reference, like the requests of our own clients
(http1/parser_httptools.py): a fast path reads the responses that make up nearly all traffic,
and hands whatever it does not take, from the response's first byte, to an h11.Connection in
the client role, so the outcome is h11's either way. The fast path takes a response whose head

- is complete within MAX_HEAD bytes and matches h11's own grammar for a status line and header
  fields (h11/_abnf.py) with CRLF line ends only: `HTTP/1.1`, a final status 200-599, field
  names that are tokens, values without NUL, CR, LF, VT or FF, no obsolete line folding;
- frames its body with exactly one Content-Length of at most 20 digits (h11's bound) and no
  Transfer-Encoding, or has no body by its status (204, 304) or the request's method (HEAD);
- answers a request that asked for no protocol switch and is no CONNECT;

and counts its body off the Content-Length. Everything else (1xx responses and 101 switches,
HTTP/1.0, chunked bodies, bodies read to the close, several Content-Lengths, any head the
grammar above refuses) is h11's, plus the checks h11 does not make and our request parser does:
no bare LF, no folded lines, not both Content-Length and Transfer-Encoding. Keep-alive is h11's
rule (HTTP/1.1 without `Connection: close`), and a response followed by bytes nobody asked for
leaves a connection that is not reused (the upstream is out of step: an answer longer than its
Content-Length).
"""

from __future__ import annotations

import re
from typing import Any, Final

import h11

from ..errors import UpstreamResponseError

# The largest response head accepted from an upstream (h11's bound on an incomplete event).
MAX_HEAD: Final = 64 * 1024
_CONTENT_LENGTH_MAX_DIGITS: Final = 20  # h11's

# h11's grammar (h11/_abnf.py): a field name is a token; a field value, and the reason phrase,
# is bytes that are not NUL or whitespace (vchar_or_obs_text, [^\x00\s]) with SP and HTAB
# between them. With CR and LF only in CRLF pairs and none of NUL, VT, FF in a head, every line
# but the status line is a valid field once its name is a token (a line folded onto the one
# before starts with SP or HTAB: not a token).
_TOKEN: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
# Field names as sent -> lowercased, for the names that are tokens: upstreams send the same few
# with every response, so one lookup replaces a check and a lower() (bounded: made-up names
# stop adding).
_NAMES: Final[dict[bytes, bytes]] = {}
_NAMES_MAX: Final = 4096
_STATUS_START: Final = b"HTTP/1.1 "
# The end of a response head, as h11 finds it (it also takes bare LFs).
_H11_HEAD_END: Final = re.compile(rb"\r?\n\r?\n")
# The upstream's states once its response has ended (h11: the server's side).
_RESPONSE_DONE: Final = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.SWITCHED_PROTOCOL)

# Where the response being read is.
_HEAD_STATE: Final = 0  # its head is awaited (fast path)
_BODY_STATE: Final = 1  # its Content-Length body is read (fast path)
_DONE_STATE: Final = 2  # it has ended (fast path)
_H11_STATE: Final = 3  # h11 reads it


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# next_event()'s answers besides a Head and body bytes.
NEED_DATA: Final = _Sentinel("NEED_DATA")
END_OF_MESSAGE: Final = _Sentinel("END_OF_MESSAGE")
CONNECTION_CLOSED: Final = _Sentinel("CONNECTION_CLOSED")


class Head:
    """A response head: the status and the header fields (lowercase names, values as sent).
    A status below 200 is an interim response (a 101: the switch)."""

    __slots__ = ("status", "headers")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers

    def __repr__(self) -> str:
        return f"Head({self.status}, {self.headers!r})"


def head_refusal(raw: bytes | bytearray, start: int) -> tuple[int, str | None]:
    """Check the response head that starts at `start` of the raw bytes `raw` (which hold it
    whole: h11 has just parsed it) for what h11 lets through and our HTTP/1.1 codec refuses in
    a request (http1/parser_h11.py): a bare LF as a line ending, obsolete line folding. Returns
    where the head ends and why it is refused (None: it is not)."""
    match = _H11_HEAD_END.search(raw, start)
    if match is None:  # (h11 found an end: cannot happen)
        return len(raw), "no end to the response head"
    head = raw[start:match.end()]
    if match.group() != b"\r\n\r\n" or head.count(b"\n") != head.count(b"\r\n"):
        return match.end(), "bare LF in the response head"
    if b"\n " in head or b"\n\t" in head:
        return match.end(), "obsolete line folding in the response head"
    return match.end(), None


class ClientCodec:
    """One connection's HTTP/1.1 client side (see the module docstring): request() starts an
    exchange, receive() takes the upstream's bytes (b"": it closed), next_event() returns a
    Head, body bytes, END_OF_MESSAGE, CONNECTION_CLOSED or NEED_DATA, and raises
    UpstreamResponseError for a response that breaks HTTP/1.1."""

    __slots__ = ("_method", "_upgrade", "_chunked", "request_done", "keep_alive", "_state",
                 "_raw", "_remaining", "_events", "_h11", "_h11_raw", "_h11_checked")

    def __init__(self) -> None:
        self._method = b"GET"
        self._upgrade: bytes | None = None
        self._chunked = False
        self.request_done = False  # the whole request is written
        self.keep_alive = True  # nothing said the connection ends with this exchange
        self._state = _HEAD_STATE
        self._raw = b""  # the response head so far (fast path)
        self._remaining = 0  # Content-Length body bytes still to come (fast path)
        self._events: list[Any] = []  # made by receive(), taken by next_event()
        self._h11: h11.Connection | None = None
        # The h11 path's raw bytes of the response head(s) so far, checked as each is parsed
        # (head_refusal); None once the final head is in.
        self._h11_raw: bytearray | None = None
        self._h11_checked = 0  # where the next head starts in _h11_raw

    # --- the request ----------------------------------------------------------------------

    def request(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                chunked: bool, upgrade: bytes | None) -> bytes:
        """The request head to write. `chunked`: the body follows as chunks (headers has the
        Transfer-Encoding); `upgrade`: the Upgrade a switch was asked for with, if any."""
        self._method = method
        self._upgrade = upgrade
        self._chunked = chunked
        self.request_done = False
        if upgrade is not None or method == b"CONNECT":
            self._to_h11(b"")  # a switch, or a tunnel: h11 reads the answer
        lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
        for name, value in headers:
            lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"\r\n")
        return b"".join(lines)

    def body(self, data: bytes) -> bytes:
        """A piece of the request body as it goes on the wire."""
        if not self._chunked or not data:  # (an empty chunk would end the body)
            return data
        return b"%x\r\n%s\r\n" % (len(data), data)

    def end(self) -> bytes:
        """The end of the request body as it goes on the wire."""
        self.request_done = True
        return b"0\r\n\r\n" if self._chunked else b""

    # --- the response ---------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """The upstream's next bytes; b"" once it has closed its side."""
        state = self._state
        if state == _BODY_STATE:
            self._read_body(data)
        elif state == _HEAD_STATE:
            self._read_head(data)
        elif state == _H11_STATE:
            self._h11_receive(data)
        else:  # _DONE_STATE: bytes after the response, or the close: not reused
            self.keep_alive = False
            if not data:
                self._events.append(CONNECTION_CLOSED)

    def next_event(self) -> Any:
        events = self._events
        if events:
            return events.pop(0)
        if self._state == _H11_STATE:
            return self._h11_event()
        return NEED_DATA

    @property
    def awaiting_head(self) -> bool:
        """No final response head has come yet."""
        if self._state == _H11_STATE:
            assert self._h11 is not None
            return self._h11.their_state is h11.SEND_RESPONSE
        return self._state == _HEAD_STATE

    @property
    def response_done(self) -> bool:
        """The response has arrived whole (what next_event() has still to return included)."""
        if self._state == _H11_STATE:
            assert self._h11 is not None
            return self._h11.their_state in _RESPONSE_DONE
        return self._state == _DONE_STATE

    def reusable(self) -> bool:
        """Both sides of the exchange are done and the connection carries the next one."""
        if not (self.request_done and self.keep_alive) or self._events:
            return False
        if self._state == _H11_STATE:
            conn = self._h11
            assert conn is not None
            return conn.their_state is h11.DONE and not conn.trailing_data[0]
        return self._state == _DONE_STATE

    def start_next_cycle(self) -> None:
        """Ready for the next exchange (only after reusable() said so)."""
        self._state = _HEAD_STATE
        self._raw = b""
        self._h11 = None
        self._h11_raw = None
        self.request_done = False

    def upgrade_data(self) -> bytes:
        """The bytes the upstream sent after its 101 head: the new protocol's."""
        assert self._h11 is not None  # (a 101 is read by h11)
        return bytes(self._h11.trailing_data[0])

    # --- the fast path --------------------------------------------------------------------

    def _read_head(self, data: bytes) -> None:
        raw = self._raw + data if self._raw else data
        if not raw:  # (a failure, not CONNECTION_CLOSED: a reused connection is retried)
            raise UpstreamResponseError("connection closed without a response")
        if not data:  # closed inside the head: h11 says how that is wrong
            self._to_h11(raw)
            self._h11_receive(b"")
            return
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            # h11 ends a head at a bare LF too, and refuses some bytes before a line end:
            # whatever is not on its way to a head the fast path takes is h11's at once.
            if len(raw) > MAX_HEAD or b"\n\n" in raw or b"\n\r\n" in raw \
                    or not (raw.startswith(_STATUS_START) or _STATUS_START.startswith(raw)):
                self._to_h11(raw)
            else:
                self._raw = raw
            return
        end += 4
        headers = self._fields(raw, end - 4)
        if headers is None:
            self._to_h11(raw)
            return
        status = int(raw[9:12])
        length = -1
        for name, value in headers:
            if name == b"content-length":
                if length >= 0 or not value.isdigit() \
                        or len(value) > _CONTENT_LENGTH_MAX_DIGITS:
                    self._to_h11(raw)  # several, or "5, 5" (h11 takes that): h11's
                    return
                length = int(value)
            elif name == b"transfer-encoding":
                self._to_h11(raw)
                return
            elif name == b"connection":
                for token in value.split(b","):
                    if token.strip(b" \t").lower() == b"close":
                        self.keep_alive = False
        if status == 204 or status == 304 or self._method == b"HEAD":
            length = 0  # (h11's framing: no body, whatever the headers say)
        elif length < 0:  # read to the close: h11's
            self._to_h11(raw)
            return
        self._raw = b""
        self._events.append(Head(status, headers))
        self._remaining = length
        self._state = _BODY_STATE
        if length == 0 or len(raw) > end:
            self._read_body(raw[end:])

    @staticmethod
    def _fields(raw: bytes, end: int) -> list[tuple[bytes, bytes]] | None:
        """The header fields of the head whose lines are raw[:end] (the CRLF CRLF that ends
        it excluded), names lowercased, values stripped as h11 strips them; None when the fast
        path does not take the head (see the module docstring)."""
        # (Bytes looked for as ints: a plain memchr. `b"\x00" in head` first tries the bytes
        # as an int and clears the error; count() and find() with bounds parse them slowly.)
        head = raw[:end]
        if 0 in head or 11 in head or 12 in head:  # NUL, VT, FF
            return None
        # "HTTP/1.1 " three digits, then the end of the line or SP and the reason phrase
        if raw[:9] != _STATUS_START or not raw[9:12].isdigit() or not 50 <= raw[9] <= 53 \
                or raw[12] != 13 and raw[12] != 32:
            return None
        lines = head.split(b"\r\n")
        if head.count(b"\r") >= len(lines) or head.count(b"\n") >= len(lines):
            return None  # a bare CR or LF
        headers = []
        for i in range(1, len(lines)):
            name, colon, value = lines[i].partition(b":")
            lowered = _NAMES.get(name)
            if lowered is None:
                if not colon or _TOKEN.fullmatch(name) is None:
                    return None
                lowered = name.lower()
                if len(_NAMES) < _NAMES_MAX:
                    _NAMES[name] = lowered
            elif not colon:
                return None
            headers.append((lowered, value.strip(b" \t")))
        return headers

    def _read_body(self, data: bytes) -> None:
        remaining = self._remaining
        if not data:
            if remaining:
                raise UpstreamResponseError(
                    f"connection closed {remaining} bytes before the end of the response "
                    "body (Content-Length)")
        elif len(data) <= remaining:
            self._events.append(data)
            remaining -= len(data)
        else:  # more than the Content-Length: the upstream is out of step
            self._events.append(data[:remaining])
            remaining = 0
            self.keep_alive = False
        self._remaining = remaining
        if not remaining:
            self._events.append(END_OF_MESSAGE)
            self._state = _DONE_STATE

    # --- h11, the reference -------------------------------------------------------------

    def _to_h11(self, raw: bytes) -> None:
        """Hand the response, from its first byte, to h11: an h11.Connection that has sent
        the same request as far as reading the response depends on it (the method; the
        Upgrade: a 101 is only valid after one)."""
        conn = self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        headers = [(b"host", b"upstream")]
        if self._upgrade is not None:
            headers += [(b"connection", b"upgrade"), (b"upgrade", self._upgrade)]
        conn.send(h11.Request(method=self._method, target=b"/", headers=headers))
        conn.send(h11.EndOfMessage())
        self._state = _H11_STATE
        self._raw = b""
        self._h11_raw = bytearray()
        self._h11_checked = 0
        if raw:
            self._h11_receive(raw)

    def _h11_receive(self, data: bytes) -> None:
        conn = self._h11
        assert conn is not None
        if self._h11_raw is not None:
            self._h11_raw += data
        try:
            conn.receive_data(data)
        except RuntimeError:
            pass  # data after the close: h11 had already seen the end

    def _h11_event(self) -> Any:
        conn = self._h11
        assert conn is not None
        try:
            event: Any = conn.next_event()  # dispatched on type(event) below
        except h11.RemoteProtocolError as exc:
            raise UpstreamResponseError(f"invalid response: {exc}") from None
        kind = type(event)
        if kind is h11.Data:
            return bytes(event.data)
        if kind is h11.Response or kind is h11.InformationalResponse:
            final = kind is h11.Response or event.status_code == 101
            headers = [(name.lower(), value) for name, value in event.headers.raw_items()]
            self._check_head(headers, final)
            return Head(event.status_code, headers)
        if kind is h11.EndOfMessage:
            if conn.their_state is not h11.DONE:
                self.keep_alive = False
            return END_OF_MESSAGE
        if kind is h11.ConnectionClosed:
            self.keep_alive = False
            return CONNECTION_CLOSED
        return NEED_DATA  # (NEED_DATA, or PAUSED: after the response, or a switch)

    def _check_head(self, headers: list[tuple[bytes, bytes]], final: bool) -> None:
        """Hold the head h11 just parsed to our own rules too: head_refusal's, and no response
        with both Content-Length and Transfer-Encoding (h11 takes the chunks; a
        desynchronised connection is how responses get smuggled)."""
        raw = self._h11_raw
        if raw is None:
            return
        self._h11_checked, why = head_refusal(raw, self._h11_checked)
        if final:
            self._h11_raw = None
            names = {name for name, _ in headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                why = "both Content-Length and Transfer-Encoding in the response head"
        if why is not None:
            raise UpstreamResponseError(f"invalid response: {why}")
