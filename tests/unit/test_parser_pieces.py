"""A request that arrives in small pieces (down to a byte at a time) is read as if it had
arrived whole, by both adapters, and the work of keeping a partial head grows linearly with
its size, not with its size times the number of pieces."""

from __future__ import annotations

import pytest

from duck_prefork.http1.connection import CONNECTION_CLOSED, NEED_DATA, PAUSED
from duck_prefork.http1.parser_h11 import H11Parser
from duck_prefork.http1.parser_httptools import HttptoolsParser
from duck_prefork.http1.request_head import DEFAULT_LIMITS, Limits, ParseError, read_head

pytestmark = pytest.mark.timeout(60)

BIG_FIELDS = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 200) for i in range(30))

REQUESTS = {
    "get": b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Custom: Value\r\n\r\n",
    "big head": b"GET /big HTTP/1.1\r\nHost: a\r\n" + BIG_FIELDS + b"\r\n",
    "post": b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    "pipelined": b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    "empty lines first": b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "chunked": b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\nhi\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n",
    "http/1.0": b"GET /old HTTP/1.0\r\n\r\n",
    "unknown method": b"FOO /x HTTP/1.1\r\nHost: a\r\n\r\n",
    "two spaces": b"GET  /x HTTP/1.1\r\nHost: a\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
    "folding": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    "no host": b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
    "oversized head": b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: "
                      + b"a" * (DEFAULT_LIMITS.head_size + 10),
    "endless request line": b"GET /" + b"a" * (DEFAULT_LIMITS.head_size + 10),
    "eof inside the head": b"GET / HTTP/1.1\r\nHost:",
    "upgrade": b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
}


def outcome(parser_class: type, pieces: list[bytes], eof: bool,
            limits: Limits = DEFAULT_LIMITS) -> list:
    """Drive a parser as HttpConnection does and record what it makes of the bytes: the heads
    (checked by read_head), the body (pieces joined), the ends, and a refusal's status."""
    parser = parser_class(limits)
    seen: list = []

    def drain() -> bool:
        while True:
            try:
                event = parser.next_event()
                if type(event) is tuple:
                    read_head(*event, limits)
            except ParseError as exc:
                seen.append(("refused", exc.status))
                return False
            if event is NEED_DATA:
                return True
            if type(event) is bytes:
                if seen and type(seen[-1]) is bytes:
                    seen[-1] += event
                else:
                    seen.append(event)
                continue
            seen.append(event)
            if event is CONNECTION_CLOSED:
                return False
            if event is PAUSED:
                if type(seen[-2]) is tuple and seen[-2][1] == b"/ws":
                    return False  # a protocol switch: the parser is not used afterwards
                parser.start_next_cycle()

    for piece in pieces:
        parser.feed(piece)
        if not drain():
            return seen
    if eof:
        parser.feed(b"")
        drain()
    return seen


@pytest.fixture(params=[HttptoolsParser, H11Parser], ids=["httptools", "h11"])
def parser_class(request):
    return request.param


@pytest.mark.parametrize("eof", [False, True], ids=["open", "eof"])
@pytest.mark.parametrize("name", REQUESTS)
def test_a_request_fed_a_byte_at_a_time_reads_as_if_whole(parser_class, name, eof):
    raw = REQUESTS[name]
    whole = outcome(parser_class, [raw], eof)
    assert outcome(parser_class, [raw[i:i + 1] for i in range(len(raw))], eof) == whole
    assert outcome(parser_class, [raw[i:i + 7] for i in range(0, len(raw), 7)], eof) == whole
    assert whole or not eof  # something was read (an open head is read only at its end)


class CountingBytes(bytes):
    """bytes that count what concatenating them copies (`a + b` copies both)."""

    copied = 0

    def __add__(self, other):
        CountingBytes.copied += len(self) + len(other)
        return CountingBytes(bytes.__add__(self, other))


@pytest.mark.parametrize("size", [4_000, 16_000])
def test_a_head_arriving_a_byte_at_a_time_is_kept_in_linear_work(parser_class, size):
    """Each new piece is appended to what was kept, not joined into a new copy of it: for a
    head of n bytes fed one by one, a fresh copy per piece would copy about n * n / 2 bytes."""
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 90) for i in range(size // 100))
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
    limits = Limits(fields=1000)
    CountingBytes.copied = 0
    parser = parser_class(limits)
    for i in range(len(head)):
        parser.feed(CountingBytes(head[i:i + 1]))
        event = parser.next_event()
        if event is not NEED_DATA:
            break
    assert type(event) is tuple and len(event[3]) == 1 + size // 100
    assert CountingBytes.copied <= 2 * len(head)


class CountingLlhttp:
    """Stands in for HttptoolsParser's llhttp parser, counting what it is given."""

    def __init__(self, parser):
        self.parser = parser
        self.calls = 0

    def feed_data(self, data):
        self.calls += 1
        return self.parser.feed_data(data)

    def __getattr__(self, name):
        return getattr(self.parser, name)


def test_llhttp_is_given_a_head_arriving_a_byte_at_a_time_in_whole_lines():
    """llhttp (httptools) joins the pieces of a header value it is given one by one with a
    copy each: a 50 KB line given a byte at a time would be copied 50,000 times."""
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 50_000 + b"\r\nX-2: b\r\n\r\n"
    parser = HttptoolsParser()
    parser.feed(head[:1])
    llhttp = parser._parser = CountingLlhttp(parser._parser)
    for i in range(1, len(head)):
        parser.feed(head[i:i + 1])
    event = parser.next_event()
    assert type(event) is tuple and event[3][1] == (b"x-big", b"v" * 50_000)
    assert llhttp.calls == head.count(b"\n")
