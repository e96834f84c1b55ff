"""H11Parser: bytes in, the events of the http11.py parser contract out."""

from __future__ import annotations

import pytest

from duck_prefork.http11 import (
    CONNECTION_CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    PAUSED,
    ParseError,
)
from duck_prefork.parser_h11 import H11Parser
from duck_prefork.request_head import Limits

MAX_HEAD_SIZE = Limits().head_size

pytestmark = pytest.mark.timeout(30)

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Custom-Header: Value\r\n\r\n"


def events(parser: H11Parser, limit: int = 20) -> list:
    """Every event up to and including the first NEED_DATA / PAUSED / CONNECTION_CLOSED."""
    out = []
    for _ in range(limit):
        event = parser.next_event()
        out.append(event)
        if event in (NEED_DATA, PAUSED, CONNECTION_CLOSED):
            return out
    raise AssertionError(f"no stopping event in {out}")


def fed(data: bytes) -> H11Parser:
    parser = H11Parser()
    parser.feed(data)
    return parser


def test_simple_get():
    assert events(fed(GET)) == [
        (b"GET", b"/a?b=1", b"1.1", [(b"host", b"example.com"), (b"x-custom-header", b"Value")]),
        END_OF_MESSAGE,
        NEED_DATA,
    ]


def test_head_values_are_bytes_and_headers_a_list_of_pairs():
    method, target, version, headers = fed(GET).next_event()
    assert all(type(part) is bytes for part in (method, target, version))
    assert type(headers) is list
    assert all(type(name) is bytes and type(value) is bytes for name, value in headers)


def test_incomplete_head_needs_data():
    parser = fed(b"GET / HTTP/1.1\r\nHost: a\r\n")
    assert parser.next_event() == NEED_DATA
    parser.feed(b"\r\n")
    assert events(parser)[1:] == [END_OF_MESSAGE, NEED_DATA]


def test_body_with_content_length():
    parser = fed(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
    head, body, need = events(parser)
    assert head[0] == b"POST"
    assert (body, need) == (b"hello", NEED_DATA)
    parser.feed(b"world")
    assert events(parser) == [b"world", END_OF_MESSAGE, NEED_DATA]


def test_body_pieces_are_bytes():
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    parser.next_event()
    assert type(parser.next_event()) is bytes


def test_chunked_body():
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    out = events(parser)
    assert out[0][3] == [(b"host", b"a"), (b"transfer-encoding", b"chunked")]
    assert b"".join(e for e in out if type(e) is bytes) == b"hello world"
    assert out[-2:] == [END_OF_MESSAGE, NEED_DATA]


def test_pipelined_request_pauses_until_next_cycle():
    second = b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n"
    parser = fed(GET + second)
    out = events(parser)
    assert out[0][1] == b"/a?b=1"
    assert out[1:] == [END_OF_MESSAGE, PAUSED]
    assert parser.next_event() == PAUSED  # stays paused: the second is not parsed yet
    parser.start_next_cycle()
    out = events(parser)
    assert out[0][:3] == (b"GET", b"/second", b"1.1")
    assert out[1:] == [END_OF_MESSAGE, NEED_DATA]


def test_pipelined_partial_request_is_carried_over():
    parser = fed(GET + b"GET /second HT")
    assert events(parser)[-1] == PAUSED
    parser.start_next_cycle()
    assert parser.next_event() == NEED_DATA
    parser.feed(b"TP/1.1\r\nHost: a\r\n\r\n")
    assert parser.next_event()[1] == b"/second"


def test_next_cycle_after_a_complete_request_waits_for_more():
    parser = fed(GET)
    events(parser)
    parser.start_next_cycle()
    assert parser.next_event() == NEED_DATA
    parser.feed(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
    assert parser.next_event()[1] == b"/again"


def test_eof_on_a_fresh_connection_is_connection_closed():
    parser = fed(b"")
    assert parser.next_event() == CONNECTION_CLOSED


def test_eof_between_requests_is_connection_closed():
    parser = fed(GET)
    events(parser)
    parser.start_next_cycle()
    parser.feed(b"")
    assert parser.next_event() == CONNECTION_CLOSED


def test_eof_behind_pipelined_requests_is_seen_after_them():
    parser = fed(GET + GET)
    parser.feed(b"")
    assert events(parser)[-1] == PAUSED
    parser.start_next_cycle()
    assert events(parser)[1:] == [END_OF_MESSAGE, CONNECTION_CLOSED]
    parser.start_next_cycle()
    assert parser.next_event() == CONNECTION_CLOSED


def test_eof_inside_a_head_is_a_400():
    parser = fed(b"GET / HTTP/1.1\r\nHost: a\r\n")
    parser.feed(b"")
    with pytest.raises(ParseError) as info:
        parser.next_event()
    assert info.value.status == 400


def test_eof_inside_a_body_is_a_400():
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    parser.feed(b"")
    with pytest.raises(ParseError) as info:
        events(parser)
    assert info.value.status == 400


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\r\nthis is not a header\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n",
    b"NOT A REQUEST LINE\r\n\r\n",
])
def test_malformed_head_is_a_400(data):
    with pytest.raises(ParseError) as info:
        fed(data).next_event()
    assert info.value.status == 400
    assert str(info.value)


def test_missing_host_on_http11_is_a_400():
    with pytest.raises(ParseError) as info:
        fed(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n").next_event()
    assert info.value.status == 400
    assert "host" in str(info.value).lower()


def test_http10_without_host_is_accepted():
    method, target, version, headers = fed(b"GET / HTTP/1.0\r\n\r\n").next_event()
    assert (method, target, version, headers) == (b"GET", b"/", b"1.0", [])


def test_bad_chunk_size_is_a_400():
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    with pytest.raises(ParseError) as info:
        events(parser)
    assert info.value.status == 400


def test_oversized_head_is_refused():
    parser = fed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (MAX_HEAD_SIZE + 1))
    with pytest.raises(ParseError) as info:
        parser.next_event()
    assert info.value.status == 431


def test_endless_request_line_is_414():
    parser = fed(b"GET /" + b"a" * (MAX_HEAD_SIZE + 1))
    with pytest.raises(ParseError) as info:
        parser.next_event()
    assert info.value.status == 414


@pytest.mark.parametrize("raw, reason", [
    (b"GET / HTTP/1.1\nHost: a\n\n", "bare LF"),
    (b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", "bare LF"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "folding"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", "folding"),
])
def test_lenient_line_endings_and_folding_are_refused(raw, reason):
    parser = fed(raw)
    with pytest.raises(ParseError) as info:
        parser.next_event()
    assert info.value.status == 400 and reason in str(info.value)


def test_body_bytes_are_not_held_to_head_rules():
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\na\n b\nc")
    assert events(parser)[1:3] == [b"a\n b\nc", END_OF_MESSAGE]


def test_empty_lines_before_a_request_line_are_ignored():
    parser = fed(b"\r\n\r\n" + GET)
    assert type(parser.next_event()) is tuple


@pytest.mark.parametrize("body", [
    b"5 \r\nhello\r\n0\r\n\r\n",               # whitespace after the size
    b"5;\r\nhello\r\n0\r\n\r\n",               # an extension without a name
    b'5;a="open\r\nhello\r\n0\r\n\r\n',        # an unterminated quoted value
    b"5;a=b\rc\r\nhello\r\n0\r\n\r\n",         # a bare CR in an extension
    b"fffffffffffffffff\r\nhello\r\n",         # a size past 64 bits
    b"5\r\nhelloXX\r\n0\r\n\r\n",              # chunk data not followed by CRLF
])
def test_malformed_chunk_framing_is_refused(body):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    with pytest.raises(ParseError) as info:
        events(parser)
    assert info.value.status == 400


def test_well_formed_chunk_extensions_and_trailers_pass():
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b'5;name="quoted \\" value"\r\nhello\r\n0;last\r\nX-Trailer: 1\r\n\r\n'
                 + GET)
    seen = events(parser)
    assert seen[1:3] == [b"hello", END_OF_MESSAGE] and seen[-1] == PAUSED
    parser.start_next_cycle()
    assert type(parser.next_event()) is tuple  # the pipelined request is not chunk data


def test_chunk_framing_split_across_feeds():
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a")
    for piece in (b"=b\r", b"\nhel", b"lo\r\n0\r", b"\n\r\n"):
        parser.feed(piece)
    assert [e for e in events(parser) if e is not NEED_DATA][1:] == [b"hello", END_OF_MESSAGE]
