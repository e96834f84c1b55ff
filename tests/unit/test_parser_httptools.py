"""HttptoolsParser on its own: which requests llhttp reads and which it hands to h11, and a
differential test: generated requests (mutated, pipelined, split into random pieces, with and
without EOF, under several limits) driven through both adapters as HttpConnection drives them
must give the same events, heads, bodies and refusals. The contract tests for both adapters
are in test_parser_h11.py."""

from __future__ import annotations

import random
import sys

import pytest

from duck_prefork.http1.connection import CONNECTION_CLOSED, END_OF_MESSAGE, NEED_DATA, PAUSED
from duck_prefork.http1.parser_h11 import H11Parser
from duck_prefork.http1.parser_httptools import HttptoolsParser
from duck_prefork.http1.request_head import DEFAULT_LIMITS, Limits, ParseError, read_head

pytestmark = pytest.mark.timeout(60)

GET = b"GET /a HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\n\r\n"
POST = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"


def read_by_h11(parser: HttptoolsParser) -> bool:
    return parser._h11 is not None


# --- the fast path --------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    GET, POST, GET + POST + GET, b"\r\n" + GET, b"GET / HTTP/1.0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
])
def test_common_requests_stay_with_llhttp(raw):
    parser = HttptoolsParser()
    seen = []
    for piece in filter(None, (raw[:7], raw[7:30], raw[30:])):
        parser.feed(piece)
        while (event := parser.next_event()) is not NEED_DATA:
            assert not read_by_h11(parser)
            seen.append(event)
            if event is PAUSED:
                parser.start_next_cycle()
    assert seen.count(END_OF_MESSAGE) == raw.count(b"HTTP/1.")
    assert not read_by_h11(parser)


def test_the_parser_is_reused_across_requests():
    parser = HttptoolsParser()
    llhttp = parser._parser
    for _ in range(3):
        parser.feed(GET)
        assert [type(e) for e in (parser.next_event(), parser.next_event())] == [tuple, str]
        assert parser.next_event() is NEED_DATA
        parser.start_next_cycle()
    assert parser._parser is llhttp


@pytest.mark.parametrize("raw", [
    b"FOO /x HTTP/1.1\r\nHost: a\r\n\r\n",                                 # not llhttp's method
    b"GET  /x HTTP/1.1\r\nHost: a\r\n\r\n",                                # two spaces
    b"GET /x HTTP/9.9\r\nHost: a\r\n\r\n",                                 # llhttp refuses it
    b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",  # chunked
    b"GET /x HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",                       # llhttp refuses it
    b"POST /x HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: upgrade\r\n"
    b"Content-Length: 1\r\n\r\nx",                                         # a switch with a body
    b"PRI * HTTP/2.0\r\n\r\n",
])
def test_what_llhttp_would_judge_differently_goes_to_h11(raw):
    parser = HttptoolsParser()
    parser.feed(raw)
    assert read_by_h11(parser)


def test_after_a_request_read_by_h11_llhttp_reads_the_next():
    parser = HttptoolsParser()
    parser.feed(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\nhi\r\n0\r\n\r\n" + GET)
    assert parser.next_event()[1] == b"/c"
    assert [parser.next_event() for _ in range(3)] == [b"hi", END_OF_MESSAGE, PAUSED]
    parser.start_next_cycle()
    assert not read_by_h11(parser)
    assert parser.next_event()[1] == b"/a"


def test_a_head_past_the_bound_goes_to_h11_for_its_answer():
    limits = Limits(request_line=100, fields=2, field_size=100)  # head_size: 16 KiB
    parser = HttptoolsParser(limits)
    parser.feed(b"GET /" + b"a" * 50 + b" HTTP/1.1\r\nHost: a\r\n")
    assert parser.next_event() is NEED_DATA and not read_by_h11(parser)
    parser.feed(b"X: " + b"x" * limits.head_size)
    assert read_by_h11(parser)
    with pytest.raises(ParseError) as info:
        parser.next_event()
    assert info.value.status == 431


# --- both adapters, generated input ------------------------------------------------------------

def drive(parser_class, pieces: list[bytes], limits: Limits, take_upgrade: bool,
          batch: int) -> list:
    """What HttpConnection does with the parser's events, as a list: every head (once read_head
    accepted it), body, end, pause and close, the refusal that ends it, and the upgrade data of
    a WebSocket-like request. The response to a request is taken to be written once the parser
    has said what follows it (NEED_DATA or PAUSED): then start_next_cycle()."""
    parser = parser_class(limits)
    trace: list = []
    answering = keep_alive = False

    def handle() -> bool:
        nonlocal answering, keep_alive
        while True:
            try:
                event = parser.next_event()
            except ParseError as exc:
                trace.append(("refused", exc.status))
                return True
            if type(event) is tuple:
                try:
                    head = read_head(*event, limits)
                except ParseError as exc:
                    trace.append(("refused", exc.status))
                    return True
                trace.append(("head", event[0], event[1], event[2], tuple(event[3])))
                keep_alive, upgrade = head[0], head[5]
                if take_upgrade and upgrade is not None and event[0] == b"GET" \
                        and not head[2] and not head[3]:
                    trace.append(("upgrade data", parser.take_upgrade_data()))
                    return True
            elif type(event) is bytes:
                trace.append(("body", event)) if not trace or trace[-1][0] != "body" \
                    else trace.__setitem__(-1, ("body", trace[-1][1] + event))
            elif event is END_OF_MESSAGE:
                trace.append("end")
                if not keep_alive:
                    return True
                answering = True
            elif event is NEED_DATA or event is PAUSED:
                trace.append(event)
                if not answering:
                    return event is PAUSED  # paused without a request: a bug
                answering = False
                parser.start_next_cycle()
            else:
                trace.append(event)
                return True

    for index, piece in enumerate(pieces):
        parser.feed(piece)
        if (index % batch == 0 or index == len(pieces) - 1) and handle():
            break
    return trace


SEEDS = [
    GET, POST, b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5; a=b\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    b"\x81\x85abcde",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nContent-Length: 3\r\n"
    b"\r\nabc",
    b"CONNECT a.com:443 HTTP/1.1\r\nHost: a.com:443\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a.com/x HTTP/1.1\r\nHost: a.com\r\n\r\n",
    b"FOO /x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nxyz",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\r\n",
]
PIECES = [
    b" ", b"  ", b"\r", b"\n", b"\r\n", b"\t", b":", b"\x00", b"\x07", b"\x7f", b"\x80", b",", b";",
    b"=", b'"', b"0", b"5", b"a", b"-", b"/", b"?", b"#", b"chunked", b"\r\n\r\n", b"HTTP/1.1",
    b"HTTP/2.0", b" HTTP/1.0", b"RTSP/1.0", b"Host: b\r\n", b"Content-Length: 3\r\n",
    b"Content-Length: 5, 5\r\n", b"Content-Length: 000000000000000000001\r\n",
    b"Transfer-Encoding: chunked\r\n", b"TRANSFER-ENCODING: gzip, CHUNKED\r\n", b"Upgrade: x\r\n",
    b"Connection: upgrade\r\n", b"Connection: close\r\n", b"X: \xe9 \r\n", b"\r\n \r\n",
    b"ffffffffffffffffff", GET,
]


def generate(rnd: random.Random) -> bytes:
    parts = []
    for _ in range(rnd.choice([1, 1, 2, 3])):
        raw = bytearray(rnd.choice(SEEDS))
        for _ in range(rnd.choice([0, 1, 1, 2, 3])):
            at = rnd.randint(0, len(raw))
            piece = rnd.choice(PIECES) if rnd.random() < 0.8 else rnd.randbytes(rnd.randint(1, 3))
            choice = rnd.random()
            if choice < 0.4:
                raw[at:at] = piece
            elif choice < 0.7:
                raw[at:at + len(piece)] = piece
            else:
                del raw[at:at + rnd.randint(1, 4)]
        parts.append(bytes(raw))
    if rnd.random() < 0.02:  # a large head, complete or not
        parts.append(b"GET /" + b"a" * rnd.choice([100, 9000, 70000]) + b" HTTP/1.1\r\nHost: a\r\n"
                     + b"X: " + b"v" * rnd.choice([10, 70000]) + rnd.choice([b"", b"\r\n\r\n"]))
    return b"".join(parts)


def split(raw: bytes, rnd: random.Random) -> list[bytes]:
    cuts = sorted(rnd.sample(range(1, len(raw)), min(len(raw) - 1, rnd.randint(0, 6)))) \
        if len(raw) > 1 and rnd.random() < 0.7 else []
    pieces = [raw[i:j] for i, j in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    return pieces + [b""] if rnd.random() < 0.4 else pieces


LIMITS = [DEFAULT_LIMITS] * 5 + [Limits(request_line=30, fields=2, field_size=20, body=2),
                                 Limits(request_line=0, fields=0, field_size=0, body=10)]


@pytest.mark.parametrize("seed", range(4))
def test_both_adapters_answer_generated_requests_alike(seed):
    rnd = random.Random(seed)
    for case in range(2500):
        pieces = split(generate(rnd), rnd)
        limits = rnd.choice(LIMITS)
        take_upgrade = rnd.random() < 0.3
        batch = rnd.choice([1, 1, 2, 3])
        expected = drive(H11Parser, pieces, limits, take_upgrade, batch)
        got = drive(HttptoolsParser, pieces, limits, take_upgrade, batch)
        assert got == expected, f"case {seed}/{case}: {pieces!r:.2000} with {limits}"
        assert CONNECTION_CLOSED not in expected[:-1]


# --- --http ---------------------------------------------------------------------------------------

def test_http_option_picks_the_parser(monkeypatch):
    from duck_prefork.worker.process import BootFailure, parser_class

    assert parser_class("auto") is HttptoolsParser
    assert parser_class("httptools") is HttptoolsParser
    assert parser_class("h11") is H11Parser
    monkeypatch.setitem(sys.modules, "duck_prefork.http1.parser_httptools", None)
    assert parser_class("auto") is H11Parser  # httptools not importable: h11
    with pytest.raises(BootFailure, match="--http httptools: cannot import httptools"):
        parser_class("httptools")
