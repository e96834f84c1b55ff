"""The upstream client codec (upstream/codec.py): its fast path for responses gives exactly the
outcomes of h11 (the reference: the same codec with every response handed to h11), fed whole,
in two pieces at every split and byte by byte; the responses it must leave to h11 are left to
it; the request is written as h11 would frame it."""

from __future__ import annotations

import pytest

from duck_prefork.errors import UpstreamResponseError
from duck_prefork.upstream.codec import (
    CONNECTION_CLOSED,
    END_OF_MESSAGE,
    MAX_HEAD,
    NEED_DATA,
    ClientCodec,
    Head,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

# (name, response bytes, whether the upstream closes after them, method): the fast path's.
FAST = [
    ("plain", OK, False, b"GET"),
    ("no reason phrase", b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", False, b"GET"),
    ("empty reason phrase", b"HTTP/1.1 404 \r\nContent-Length: 1\r\n\r\nx", False, b"GET"),
    ("reason with tab and obs-text", b"HTTP/1.1 500 Bad\tth\xefng\r\nContent-Length: 0\r\n\r\n",
     False, b"GET"),
    ("no fields", b"HTTP/1.1 204 No Content\r\n\r\n", False, b"GET"),
    ("whitespace around values", b"HTTP/1.1 200 OK\r\nX-A:  a  b \t\r\nX-B:\t\r\nX-C:\r\n"
     b"Content-Length: 2\r\n\r\nok", False, b"GET"),
    # h11 takes any byte but NUL and whitespace in a value; llhttp refuses control bytes: the
    # fast path follows h11.
    ("control byte and obs-text in a value", b"HTTP/1.1 200 OK\r\nX-A: \x01\x7f\xff\r\n"
     b"Content-Length: 0\r\n\r\n", False, b"GET"),
    ("mixed-case names", b"HTTP/1.1 200 OK\r\ncOnTeNt-LeNgTh: 3\r\nSET-COOKIE: a=1\r\n"
     b"Set-Cookie: b=2\r\n\r\nabc", False, b"GET"),
    ("Connection: close", b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\n"
     b"Content-Length: 2\r\n\r\nok", True, b"GET"),
    ("leading zeros", b"HTTP/1.1 200 OK\r\nContent-Length: 002\r\n\r\nok", False, b"GET"),
    ("204 ignores its Content-Length", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
     False, b"GET"),
    ("304 without a body", b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", False, b"GET"),
    ("HEAD: no body", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", False, b"HEAD"),
    ("more than the Content-Length", OK + b"HTTP/1.1 200 OK\r\n", False, b"GET"),
    ("body cut short", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", True, b"GET"),
    ("a 1 MiB body", b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n" + b"x" * 1048576,
     False, b"GET"),
]
# The responses the fast path leaves to h11, valid or not.
TO_H11 = [
    ("100 Continue first", b"HTTP/1.1 100 Continue\r\n\r\n" + OK, False, b"GET"),
    ("103 Early Hints first", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK, False,
     b"GET"),
    ("HTTP/1.0", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False, b"GET"),
    ("read to the close", b"HTTP/1.1 200 OK\r\n\r\nall of it", True, b"GET"),
    ("HTTP/1.0 read to the close", b"HTTP/1.0 200 OK\r\n\r\nall of it", True, b"GET"),
    ("chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
     False, b"GET"),
    ("chunked, ext with whitespace (llhttp refuses)", b"HTTP/1.1 200 OK\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n2 ; a=b\r\nok\r\n0\r\n\r\n", False, b"GET"),
    ("Content-Length 5, 5 (h11 takes it)", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
     False, b"GET"),
    ("two equal Content-Lengths (llhttp refuses)", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
     b"Content-Length: 2\r\n\r\nok", False, b"GET"),
    ("two Content-Lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n"
     b"\r\nok", False, b"GET"),
    ("Content-Length 2, 3", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok", False,
     b"GET"),
    ("Content-Length +2", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", False, b"GET"),
    ("Content-Length in hex", b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok", False,
     b"GET"),
    ("Content-Length of 21 digits", b"HTTP/1.1 200 OK\r\nContent-Length: "
     b"000000000000000000002\r\n\r\nok", False, b"GET"),
    ("Content-Length and Transfer-Encoding", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False, b"GET"),
    ("Transfer-Encoding gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok", True,
     b"GET"),
    ("bare LF", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", False, b"GET"),
    ("one bare LF", b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 2\r\n\r\nok", False, b"GET"),
    ("bare CR in a value", b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
     False, b"GET"),
    ("obsolete line folding", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n"
     b"\r\nok", False, b"GET"),
    ("space before the colon", b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 0\r\n\r\n",
     False, b"GET"),
    ("no colon", b"HTTP/1.1 200 OK\r\nX-A\r\nContent-Length: 0\r\n\r\n", False, b"GET"),
    ("empty name", b"HTTP/1.1 200 OK\r\n: 1\r\nContent-Length: 0\r\n\r\n", False, b"GET"),
    ("name not a token", b"HTTP/1.1 200 OK\r\nX(A): 1\r\nContent-Length: 0\r\n\r\n", False,
     b"GET"),
    ("NUL in a value", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n", False,
     b"GET"),
    ("VT in a value", b"HTTP/1.1 200 OK\r\nX-A: a\x0bb\r\nContent-Length: 0\r\n\r\n", False,
     b"GET"),
    ("FF in the reason", b"HTTP/1.1 200 O\x0cK\r\nContent-Length: 0\r\n\r\n", False, b"GET"),
    ("two-digit status", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", False, b"GET"),
    ("four-digit status", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", False, b"GET"),
    ("status 600 (h11 takes it)", b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n", False,
     b"GET"),
    ("status 099", b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n", False, b"GET"),
    ("two spaces after the version", b"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n", False,
     b"GET"),
    ("HTTP/2.0", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", False, b"GET"),
    ("lowercase version", b"http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, b"GET"),
    ("empty line first", b"\r\n" + OK, False, b"GET"),
    ("garbage", b"SOMETHING ELSE ENTIRELY\r\n\r\n", False, b"GET"),
    ("garbage without a line end", b"\x16\x03\x01\x02\x00", False, b"GET"),
    ("closed inside the head", b"HTTP/1.1 200 OK\r\nContent-Le", True, b"GET"),
    ("a head past the bound", b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * MAX_HEAD, False, b"GET"),
    ("101 without an Upgrade asked", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
     False, b"GET"),
    ("CONNECT", b"HTTP/1.1 200 OK\r\n\r\ntunnel bytes", False, b"CONNECT"),
]
CASES = FAST + TO_H11


def new_codec(method: bytes, reference: bool) -> ClientCodec:
    codec = ClientCodec()
    codec.request(method, b"/", [(b"host", b"u")], False, None)
    codec.end()
    if reference:
        codec._to_h11(b"")  # every response to h11 from its first byte: the reference
    return codec


def outcome(pieces: list[bytes], closes: bool, method: bytes, reference: bool = False
            ) -> tuple[list, bool, bool]:
    """(events, with the body joined; whether the codec ended in error; reusable()), the
    codec fed `pieces` (and the close, if `closes`)."""
    codec = new_codec(method, reference)
    events: list = []
    body = b""
    error = False
    try:
        for piece in [*pieces, *([b""] if closes else [])]:
            codec.receive(piece)
            while (event := codec.next_event()) is not NEED_DATA:
                if type(event) is bytes:
                    body += event
                    continue
                if body:
                    events.append(body)
                    body = b""
                if type(event) is Head:
                    events.append((event.status, event.headers))
                elif event is CONNECTION_CLOSED:
                    events.append("closed")
                    break
                else:
                    assert event is END_OF_MESSAGE
                    events.append("end")
    except UpstreamResponseError:
        error = True
    if body:
        events.append(body)
    return events, error, codec.reusable() and not error


def went_to_h11(raw: bytes, closes: bool, method: bytes) -> bool:
    codec = new_codec(method, False)
    try:
        codec.receive(raw)
        if closes:
            codec.receive(b"")
    except UpstreamResponseError:
        pass
    return codec._h11 is not None


@pytest.mark.parametrize("name,raw,closes,method", FAST, ids=[case[0] for case in FAST])
def test_the_fast_path_takes_these(name, raw, closes, method):
    assert not went_to_h11(raw, closes, method)


@pytest.mark.parametrize("name,raw,closes,method", TO_H11, ids=[case[0] for case in TO_H11])
def test_the_fast_path_leaves_these_to_h11(name, raw, closes, method):
    assert went_to_h11(raw, closes, method)


@pytest.mark.parametrize("name,raw,closes,method", CASES, ids=[case[0] for case in CASES])
def test_outcomes_are_h11s_however_the_bytes_arrive(name, raw, closes, method):
    expected = outcome([raw], closes, method, reference=True)
    assert outcome([raw], closes, method) == expected
    if len(raw) > 4096:
        splits = range(1, len(raw), 997)
    else:
        splits = range(1, len(raw))
        assert outcome([raw[i:i + 1] for i in range(len(raw))], closes, method) == expected
    for at in splits:
        assert outcome([raw[:at], raw[at:]], closes, method) == expected, at


def test_the_outcomes_themselves():
    """What the comparison rests on, for a few cases: h11's answers, as the codec gives them."""
    assert outcome([OK], False, b"GET") == (
        [(200, [(b"content-type", b"text/plain"), (b"content-length", b"2")]), b"ok", "end"],
        False, True)
    close = FAST[8][1]
    assert outcome([close], True, b"GET")[1:] == (False, False)  # Connection: close
    assert outcome([OK + b"HTTP/1.1 200 OK\r\n"], False, b"GET")[1:] == (False, False)
    assert outcome([b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"], False,
                   b"GET")[0] == [(204, [(b"content-length", b"5")]), "end"]
    assert outcome([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"], False, b"HEAD")[0] \
        == [(200, [(b"content-length", b"10")]), "end"]
    assert outcome([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], True,
                   b"GET")[1] is True
    for name in ("bare LF", "obsolete line folding", "Content-Length and Transfer-Encoding",
                 "two Content-Lengths", "NUL in a value", "closed inside the head"):
        case = next(case for case in TO_H11 if case[0] == name)
        assert outcome([case[1]], case[2], case[3])[1] is True, name
    assert outcome([TO_H11[7][1]], False, b"GET") == (  # Content-Length: 2, 2
        [(200, [(b"content-length", b"2")]), b"ok", "end"], False, True)


def test_closed_before_any_byte_is_an_error_not_a_response():
    codec = new_codec(b"GET", False)
    with pytest.raises(UpstreamResponseError):
        codec.receive(b"")


def test_awaiting_head_and_response_done():
    codec = new_codec(b"GET", False)
    assert codec.awaiting_head and not codec.response_done
    codec.receive(OK[:30])
    assert codec.awaiting_head
    codec.receive(OK[30:-1])
    assert not codec.awaiting_head and not codec.response_done
    codec.receive(OK[-1:])
    assert codec.response_done and not codec.reusable()  # (its events not taken yet)
    while codec.next_event() is not NEED_DATA:
        pass
    assert codec.reusable()
    codec.start_next_cycle()
    assert codec.awaiting_head and not codec.reusable()  # (the next request is not written)


def test_the_request_as_h11_would_frame_it():
    codec = ClientCodec()
    head = codec.request(b"POST", b"/a?b=1", [(b"host", b"h"), (b"transfer-encoding",
                                                               b"chunked")], True, None)
    assert head == b"POST /a?b=1 HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
    assert codec.body(b"hello") == b"5\r\nhello\r\n"
    assert codec.body(b"") == b""  # (an empty chunk would end the body)
    assert codec.body(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert not codec.request_done
    assert codec.end() == b"0\r\n\r\n" and codec.request_done
    codec = ClientCodec()
    codec.request(b"PUT", b"/", [(b"host", b"h"), (b"content-length", b"3")], False, None)
    assert codec.body(b"abc") == b"abc" and codec.end() == b""


def test_a_101_after_an_upgrade_request_is_the_switch():
    codec = ClientCodec()
    codec.request(b"GET", b"/ws", [(b"host", b"h")], False, b"websocket")
    codec.end()
    codec.receive(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n\r\n\x81\x02hi")
    head = codec.next_event()
    assert type(head) is Head and head.status == 101
    assert codec.next_event() is NEED_DATA
    assert codec.response_done and not codec.reusable()
    assert codec.upgrade_data() == b"\x81\x02hi"
