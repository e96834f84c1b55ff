"""The parser contract of http11.py, for both adapters (H11Parser, HttptoolsParser): bytes in,
the same events out. Tests of one adapter alone are marked so; test_parser_httptools.py holds
the llhttp adapter's own, and a differential test over many generated requests."""

from __future__ import annotations

import pytest

from duck_prefork.http1.connection import (
    CONNECTION_CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    PAUSED,
    ParseError,
)
from duck_prefork.http1.parser_h11 import H11Parser
from duck_prefork.http1.parser_httptools import HttptoolsParser
from duck_prefork.http1.request_head import DEFAULT_LIMITS, Limits, read_head

MAX_HEAD_SIZE = Limits().head_size

pytestmark = pytest.mark.timeout(30)

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Custom-Header: Value\r\n\r\n"


@pytest.fixture(params=[HttptoolsParser, H11Parser], ids=["httptools", "h11"])
def parser_class(request):
    return request.param


@pytest.fixture
def fed(parser_class):
    """fed(data) -> a parser of the adapter under test that was fed `data`."""

    def make(data: bytes, limits: Limits = DEFAULT_LIMITS):
        parser = parser_class(limits)
        parser.feed(data)
        return parser

    return make


def refusal(parser, limits: Limits = DEFAULT_LIMITS) -> ParseError:
    """The refusal of the first request, as the connection makes it: from next_event(), or
    from read_head() for the head it returned (each adapter may leave a check to the other)."""
    with pytest.raises(ParseError) as info:
        for _ in range(20):
            event = parser.next_event()
            if type(event) is tuple:
                read_head(*event, limits)
    return info.value


def events(parser, limit: int = 20) -> list:
    """Every event up to and including the first NEED_DATA / PAUSED / CONNECTION_CLOSED."""
    out = []
    for _ in range(limit):
        event = parser.next_event()
        out.append(event)
        if event in (NEED_DATA, PAUSED, CONNECTION_CLOSED):
            return out
    raise AssertionError(f"no stopping event in {out}")


def test_simple_get(fed):
    assert events(fed(GET)) == [
        (b"GET", b"/a?b=1", b"1.1", [(b"host", b"example.com"), (b"x-custom-header", b"Value")]),
        END_OF_MESSAGE,
        NEED_DATA,
    ]


def test_head_values_are_bytes_and_headers_a_list_of_pairs(fed):
    method, target, version, headers = fed(GET).next_event()
    assert all(type(part) is bytes for part in (method, target, version))
    assert type(headers) is list
    assert all(type(name) is bytes and type(value) is bytes for name, value in headers)


def test_incomplete_head_needs_data(fed):
    parser = fed(b"GET / HTTP/1.1\r\nHost: a\r\n")
    assert parser.next_event() == NEED_DATA
    parser.feed(b"\r\n")
    assert events(parser)[1:] == [END_OF_MESSAGE, NEED_DATA]


def test_body_with_content_length(fed):
    parser = fed(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
    head, body, need = events(parser)
    assert head[0] == b"POST"
    assert (body, need) == (b"hello", NEED_DATA)
    parser.feed(b"world")
    assert events(parser) == [b"world", END_OF_MESSAGE, NEED_DATA]


def test_body_pieces_are_bytes(fed):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    parser.next_event()
    assert type(parser.next_event()) is bytes


def test_chunked_body(fed):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    out = events(parser)
    assert out[0][3] == [(b"host", b"a"), (b"transfer-encoding", b"chunked")]
    assert b"".join(e for e in out if type(e) is bytes) == b"hello world"
    assert out[-2:] == [END_OF_MESSAGE, NEED_DATA]


def test_pipelined_request_pauses_until_next_cycle(fed):
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


def test_pipelined_partial_request_is_carried_over(fed):
    parser = fed(GET + b"GET /second HT")
    assert events(parser)[-1] == PAUSED
    parser.start_next_cycle()
    assert parser.next_event() == NEED_DATA
    parser.feed(b"TP/1.1\r\nHost: a\r\n\r\n")
    assert parser.next_event()[1] == b"/second"


def test_next_cycle_after_a_complete_request_waits_for_more(fed):
    parser = fed(GET)
    events(parser)
    parser.start_next_cycle()
    assert parser.next_event() == NEED_DATA
    parser.feed(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
    assert parser.next_event()[1] == b"/again"


def test_eof_on_a_fresh_connection_is_connection_closed(fed):
    parser = fed(b"")
    assert parser.next_event() == CONNECTION_CLOSED


def test_eof_between_requests_is_connection_closed(fed):
    parser = fed(GET)
    events(parser)
    parser.start_next_cycle()
    parser.feed(b"")
    assert parser.next_event() == CONNECTION_CLOSED


def test_eof_behind_pipelined_requests_is_seen_after_them(fed):
    parser = fed(GET + GET)
    parser.feed(b"")
    assert events(parser)[-1] == PAUSED
    parser.start_next_cycle()
    assert events(parser)[1:] == [END_OF_MESSAGE, CONNECTION_CLOSED]
    parser.start_next_cycle()
    assert parser.next_event() == CONNECTION_CLOSED


def test_eof_inside_a_head_is_a_400(fed):
    parser = fed(b"GET / HTTP/1.1\r\nHost: a\r\n")
    parser.feed(b"")
    with pytest.raises(ParseError) as info:
        parser.next_event()
    assert info.value.status == 400


def test_eof_inside_a_body_is_a_400(fed):
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
def test_malformed_head_is_a_400(data, fed):
    with pytest.raises(ParseError) as info:
        fed(data).next_event()
    assert info.value.status == 400
    assert str(info.value)


def test_missing_host_on_http11_is_a_400(fed):
    error = refusal(fed(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"))
    assert error.status == 400
    assert "host" in str(error).lower()


def test_http10_without_host_is_accepted(fed):
    method, target, version, headers = fed(b"GET / HTTP/1.0\r\n\r\n").next_event()
    assert (method, target, version, headers) == (b"GET", b"/", b"1.0", [])


def test_bad_chunk_size_is_a_400(fed):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    with pytest.raises(ParseError) as info:
        events(parser)
    assert info.value.status == 400


def test_oversized_head_is_refused(fed):
    parser = fed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (MAX_HEAD_SIZE + 1))
    with pytest.raises(ParseError) as info:
        parser.next_event()
    assert info.value.status == 431


def test_endless_request_line_is_414(fed):
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
def test_lenient_line_endings_and_folding_are_refused(raw, reason, fed):
    parser = fed(raw)
    with pytest.raises(ParseError) as info:
        parser.next_event()
    assert info.value.status == 400 and reason in str(info.value)


def test_body_bytes_are_not_held_to_head_rules(fed):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\na\n b\nc")
    assert events(parser)[1:3] == [b"a\n b\nc", END_OF_MESSAGE]


def test_empty_lines_before_a_request_line_are_ignored(fed):
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
def test_malformed_chunk_framing_is_refused(body, fed):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    with pytest.raises(ParseError) as info:
        events(parser)
    assert info.value.status == 400


def test_well_formed_chunk_extensions_and_trailers_pass(fed):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b'5;name="quoted \\" value"\r\nhello\r\n0;last\r\nX-Trailer: 1\r\n\r\n'
                 + GET)
    seen = events(parser)
    assert seen[1:3] == [b"hello", END_OF_MESSAGE] and seen[-1] == PAUSED
    parser.start_next_cycle()
    assert type(parser.next_event()) is tuple  # the pipelined request is not chunk data


def test_chunk_framing_split_across_feeds(fed):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a")
    for piece in (b"=b\r", b"\nhel", b"lo\r\n0\r", b"\n\r\n"):
        parser.feed(piece)
    assert [e for e in events(parser) if e is not NEED_DATA][1:] == [b"hello", END_OF_MESSAGE]


# --- where h11 and llhttp differ on their own: the adapters answer alike ----------------------

@pytest.mark.parametrize("method", [b"FOO", b"-BLARGH", b"get", b"MKCOLA", b"M-SEARCH"])
def test_any_token_is_a_method(fed, method):
    head = fed(method + b" /x HTTP/1.1\r\nHost: a\r\n\r\n").next_event()
    assert head[:3] == (method, b"/x", b"1.1")


@pytest.mark.parametrize("line", [
    b"GET  /x HTTP/1.1",      # two spaces after the method
    b"GET /x  HTTP/1.1",      # two spaces before the version
    b"GET /x RTSP/1.0",       # another protocol
    b"SOURCE /x ICE/1.0",
    b"GET /x HTTP/1.1 ",
])
def test_request_line_is_exactly_method_target_version(fed, line):
    assert refusal(fed(line + b"\r\nHost: a\r\n\r\n")).status == 400


@pytest.mark.parametrize("version, status", [
    (b"2.0", 505), (b"3.0", 505), (b"5.6", 505), (b"1.2", 400), (b"0.9", 400),
])
def test_versions(fed, version, status):
    assert refusal(fed(b"GET / HTTP/" + version + b"\r\nHost: a\r\n\r\n")).status == status


def test_http2_preface_is_505(fed):
    parser = fed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert refusal(parser).status == 505


def test_http2_preface_without_its_body_is_505_too(fed):
    assert refusal(fed(b"PRI * HTTP/2.0\r\n\r\n")).status == 505


@pytest.mark.parametrize("head, status", [
    (b"Transfer-Encoding: gzip, chunked\r\n", 501),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 501),
    (b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n", 501),
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 400),
    (b"Content-Length: 000000000000000000005\r\n", 400),  # 21 digits
    (b"Content-Length: 99999999999999999999\r\n", 0),  # 20 digits: h11's bound
    (b"Content-Length: 5\r\nContent-Length: 6\r\n", 400),
])
def test_framing_fields(fed, head, status):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\n" + head + b"\r\n")
    if status:
        assert refusal(parser).status == status
    else:
        read_head(*parser.next_event(), DEFAULT_LIMITS)


def test_content_length_list_of_copies_is_one_value(fed):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc")
    assert events(parser)[0][3] == [(b"host", b"a"), (b"content-length", b"3")]


def test_content_length_given_twice_is_refused(fed):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n")
    assert refusal(parser).status == 400


def test_transfer_coding_is_lowercased(fed):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n")
    assert events(parser)[0][3][1] == (b"transfer-encoding", b"chunked")


def test_field_values_lose_their_whitespace(fed):
    head = fed(b"GET / HTTP/1.1\r\nHost: a\r\nX:  \t v \t \r\nY:\r\nZ: \r\n\r\n").next_event()
    assert head[3][1:] == [(b"x", b"v"), (b"y", b""), (b"z", b"")]


def test_control_characters_in_a_value_are_h11s_to_judge(fed):
    head = fed(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x07b\x7f\r\n\r\n").next_event()
    assert head[3][1] == (b"x", b"a\x07b\x7f")


def test_chunk_extensions_may_have_whitespace(fed):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5; a = b ;c\r\nhello\r\n0\r\n\r\n")
    assert events(parser)[1:] == [b"hello", END_OF_MESSAGE, NEED_DATA]


def test_lone_crs_and_lfs_before_a_request_line_are_ignored(fed):
    parser = fed(b"\n\r\r\n")
    assert parser.next_event() == NEED_DATA
    parser.feed(b"\n" + GET)
    assert type(parser.next_event()) is tuple


def test_empty_lines_after_a_request_do_not_pause(fed):
    parser = fed(GET + b"\r\n\r\n")
    assert events(parser)[1:] == [END_OF_MESSAGE, NEED_DATA]
    parser.feed(b"\r\n")
    assert parser.next_event() == NEED_DATA
    parser.feed(b"")
    assert parser.next_event() == CONNECTION_CLOSED


def test_a_request_after_empty_lines_pauses(fed):
    parser = fed(GET + b"\r\n")
    events(parser)
    parser.feed(b"\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert parser.next_event() == PAUSED
    parser.start_next_cycle()
    assert parser.next_event()[1] == b"/2"


def test_pipelined_refusal_comes_after_the_good_request(fed):
    parser = fed(GET + b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    assert events(parser)[1:] == [END_OF_MESSAGE, PAUSED]
    parser.start_next_cycle()
    with pytest.raises(ParseError) as info:
        parser.next_event()
    assert info.value.status == 400


def test_pipelined_after_a_chunked_body(fed):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n0\r\n\r\n" + GET
                 + b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    assert events(parser)[1:] == [b"abc", END_OF_MESSAGE, PAUSED]
    parser.start_next_cycle()
    assert events(parser)[1:] == [END_OF_MESSAGE, PAUSED]
    parser.start_next_cycle()
    assert events(parser)[1:] == [b"hi", END_OF_MESSAGE, NEED_DATA]


def test_head_bound_across_feeds(fed):
    parser = fed(b"GET / HTTP/1.1\r\nHost: a\r\n")
    for _ in range(MAX_HEAD_SIZE // 1000 + 1):
        assert parser.next_event() == NEED_DATA
        parser.feed(b"X-Pad: " + b"p" * 991 + b"\r\n")
    with pytest.raises(ParseError) as info:
        parser.next_event()
    assert info.value.status == 431


def test_endless_request_line_across_feeds_is_414(fed):
    parser = fed(b"GET /")
    for _ in range(MAX_HEAD_SIZE // 1000 + 1):
        assert parser.next_event() == NEED_DATA
        parser.feed(b"a" * 1000)
    with pytest.raises(ParseError) as info:
        parser.next_event()
    assert info.value.status == 414


def test_request_line_limit_with_a_complete_head(fed):
    limits = Limits(request_line=20)
    assert refusal(fed(b"GET /" + b"a" * 20 + b" HTTP/1.1\r\nHost: a\r\n\r\n", limits),
                   limits).status == 414


# --- protocol switches -------------------------------------------------------------------------

WS = (b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # a masked text frame, "Hello"


@pytest.mark.parametrize("after", [b"", FRAME, FRAME + FRAME, b"\r\n" + FRAME, GET])
def test_take_upgrade_data_after_the_head(fed, after):
    parser = fed(WS + after)
    head = parser.next_event()
    assert head[1] == b"/ws"
    assert parser.take_upgrade_data() == after


def test_take_upgrade_data_with_frames_in_a_later_piece(fed):
    parser = fed(WS[:30])
    assert parser.next_event() == NEED_DATA
    parser.feed(WS[30:] + FRAME[:4])
    parser.next_event()
    assert parser.take_upgrade_data() == FRAME[:4]


def test_upgrade_not_taken_is_served_as_http_and_the_connection_continues(fed):
    h2c = (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    parser = fed(h2c)
    # h11 waits for the server's decision: nothing more is parsed until the next cycle.
    assert events(parser)[1:] == [END_OF_MESSAGE, PAUSED]
    parser.feed(GET)
    assert parser.next_event() == PAUSED
    parser.start_next_cycle()
    assert events(parser)[0][1] == b"/a?b=1"
    parser.start_next_cycle()
    parser.feed(WS + GET)  # a WebSocket request the server answers as HTTP (--ws none)
    assert events(parser)[1:] == [END_OF_MESSAGE, PAUSED]
    parser.start_next_cycle()
    assert events(parser)[1:] == [END_OF_MESSAGE, NEED_DATA]


def test_upgrade_with_a_body_reads_the_body(fed):
    parser = fed(b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
                 b"Content-Length: 5\r\n\r\nhello" + GET)
    assert events(parser)[1:] == [b"hello", END_OF_MESSAGE, PAUSED]
    parser.start_next_cycle()
    assert events(parser)[0][1] == b"/a?b=1"


def test_connect_waits_for_the_next_cycle(fed):
    parser = fed(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n")
    assert events(parser)[1:] == [END_OF_MESSAGE, PAUSED]
    parser.feed(b"")
    assert parser.next_event() == PAUSED
    parser.start_next_cycle()
    assert parser.next_event() == CONNECTION_CLOSED


def test_upgrade_without_connection_option_also_waits(fed):
    parser = fed(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\n\r\n")
    assert events(parser)[1:] == [END_OF_MESSAGE, PAUSED]
    parser.start_next_cycle()
    assert parser.next_event() == NEED_DATA
