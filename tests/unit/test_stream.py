"""The stream interface without the ASGI side: an HttpConnection on a fake transport hands its
streams to a recording handler, and the tests drive the sink (send_head / send_body), the body
channel (read_body / wait_body) and the close directly, reading the bytes the codec wrote.
Also the pieces every kind of stream shares: the Waiter, the error mapping."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from duck_prefork.http1.connection import HttpConnection, ServerState
from duck_prefork.http1.parser_h11 import H11Parser
from duck_prefork.http1.stream import CONTINUE_RESPONSE, Http1Stream, encode_error
from duck_prefork.stream import (
    SERVER,
    ClientDisconnected,
    InvalidResponse,
    Stream,
    Waiter,
    error_response,
)

from .fakes import FakeTransport, StallingTransport, header_names, split_response

pytestmark = pytest.mark.timeout(30)

GET = b"GET /p?q=1 HTTP/1.1\r\nHost: a\r\n\r\n"


class Handler:
    """Stands in for the ASGI pipeline: records each stream, runs nothing."""

    def __init__(self) -> None:
        self.streams: list[Http1Stream] = []

    def __call__(self, app, stream: Http1Stream):
        self.streams.append(stream)
        return asyncio.sleep(0)  # the request's task: done at once, the stream stays open


def open_connection(transport: FakeTransport | None = None, keep_alive: float = 5.0):
    handler = Handler()
    state = ServerState(None, handler, H11Parser, keep_alive, timing=False)
    connection = HttpConnection(state)
    transport = transport or FakeTransport()
    transport.protocol = connection
    connection.connection_made(transport)
    return state, connection, transport, handler


def stream_for(request: bytes = GET, **options) -> tuple[Http1Stream, FakeTransport, ServerState]:
    state, connection, transport, handler = open_connection(**options)
    connection.data_received(request)
    (stream,) = handler.streams
    return stream, transport, state


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def run(scenario) -> None:
    asyncio.run(scenario())


# --- what the ASGI side sees ------------------------------------------------------------------


def test_http1_stream_offers_every_member_of_the_interface():
    members = {name for name in dir(Stream) if not name.startswith("_")}
    members |= set(Stream.__annotations__)
    missing = [name for name in members
               if not hasattr(Http1Stream, name) and name not in Http1Stream.__slots__]
    assert not missing
    for name in ("send_head", "send_body", "read_body", "wait_body", "close", "abort"):
        ours = inspect.signature(getattr(Http1Stream, name)).parameters
        theirs = inspect.signature(getattr(Stream, name)).parameters
        assert list(ours) == list(theirs), name


def test_head_facts():
    async def scenario():
        stream, _, _ = stream_for(b"POST /p?q=1 HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n"
                                  b"Content-Length: 0\r\n\r\n")
        assert (stream.method, stream.target, stream.http_version, stream.scheme) == \
            ("POST", b"/p?q=1", "1.1", "http")
        assert stream.headers == [(b"host", b"a"), (b"x-forwarded-for", b"1.2.3.4"),
                                  (b"content-length", b"0")]
        assert stream.client == ("10.0.0.1", 5555) and stream.server == ("127.0.0.1", 8000)
        assert stream.forwarded
        assert not (stream.closed or stream.disconnected or stream.response_complete)

    run(scenario)


# --- the sink: HTTP/1.1 framing -------------------------------------------------------------


def test_whole_body_in_one_call_gets_a_content_length_and_keeps_alive():
    async def scenario():
        stream, transport, _ = stream_for()
        assert stream.send_head(200, [(b"x-a", b"1")], b"hello") is None
        status, headers, body = split_response(transport.take())
        assert status == b"HTTP/1.1 200 OK"
        assert headers == [(b"Server", SERVER), (b"Date", transport.protocol.state.date),
                           (b"x-a", b"1"), (b"Content-Length", b"5")]
        assert body == b"hello"
        assert stream.response_complete and stream.bytes_sent == 5
        assert not transport.closed
        assert transport.protocol.request is None  # ready for the next request

    run(scenario)


def test_streaming_is_chunked_and_ends_with_the_last_chunk():
    async def scenario():
        stream, transport, _ = stream_for()
        stream.send_head(200, [], b"ab", more_body=True)
        stream.send_body(b"", more_body=True)  # an empty piece writes no chunk (it would end)
        stream.send_body(b"cde", more_body=True)
        assert not stream.response_complete
        stream.send_body(b"", more_body=False)
        status, headers, body = split_response(transport.take())
        assert (b"Transfer-Encoding", b"chunked") in headers
        assert body == b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
        assert stream.bytes_sent == 5 and stream.response_complete

    run(scenario)


def test_head_request_gets_the_head_only():
    async def scenario():
        stream, transport, _ = stream_for(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        stream.send_head(200, [], b"hello")
        status, headers, body = split_response(transport.take())
        assert (b"Content-Length", b"5") in headers and body == b""
        assert stream.bytes_sent == 0  # nothing of the body went out

    run(scenario)


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_have_no_framing(status):
    async def scenario():
        stream, transport, _ = stream_for()
        stream.send_head(status, [(b"content-length", b"3")], b"abc", more_body=True)
        stream.send_body(b"def", more_body=False)
        _, headers, body = split_response(transport.take())
        assert not {b"content-length", b"transfer-encoding"} & set(header_names(headers))
        assert body == b"" and stream.response_complete

    run(scenario)


def test_http10_streaming_ends_with_the_close():
    async def scenario():
        stream, transport, _ = stream_for(b"GET / HTTP/1.0\r\n\r\n")
        stream.send_head(200, [], b"a", more_body=True)
        stream.send_body(b"b", more_body=False)
        _, headers, body = split_response(transport.take())
        assert (b"Connection", b"close") in headers and body == b"ab"
        assert transport.closed

    run(scenario)


def test_draining_worker_says_connection_close():
    async def scenario():
        stream, transport, state = stream_for()
        state.lame_duck = True  # set from the start of a stop (the drain sets it too)
        stream.send_head(200, [], b"x")
        assert (b"Connection", b"close") in split_response(transport.take())[1]
        assert transport.closed

    run(scenario)


def test_header_with_a_line_break_is_refused_before_anything_is_written():
    async def scenario():
        stream, transport, _ = stream_for()
        with pytest.raises(InvalidResponse, match="CR, LF or NUL"):
            stream.send_head(200, [(b"x-a", b"1\r\nx-b: 2")], b"x")
        assert transport.take() == b"" and not stream.response_started

    run(scenario)


def test_body_past_the_content_length_is_refused():
    async def scenario():
        stream, transport, _ = stream_for()
        stream.send_head(200, [(b"content-length", b"3")], b"ab", more_body=True)
        with pytest.raises(InvalidResponse, match="longer than its Content-Length"):
            stream.send_body(b"cd", more_body=False)

    run(scenario)


def test_body_short_of_the_content_length_closes_the_connection():
    async def scenario():
        stream, transport, _ = stream_for()
        stream.send_head(200, [(b"content-length", b"3")], b"ab", more_body=True)
        stream.send_body(b"", more_body=False)
        assert transport.closed

    run(scenario)


def test_backpressure_is_an_awaitable_only_while_the_client_is_behind():
    async def scenario():
        transport = StallingTransport(high_water=200)
        stream, transport, _ = stream_for(transport=transport)
        assert stream.send_head(200, [], b"", more_body=True) is None  # a short head: room
        drained = stream.send_body(b"x" * 300, more_body=True)
        assert drained is not None  # above the high-water mark: wait
        waiting = asyncio.ensure_future(drained)
        await settle()
        assert not waiting.done()
        transport.drain_some(1000)
        await settle()
        assert waiting.done()
        assert stream.send_body(b"y", more_body=True) is None

    run(scenario)


def test_a_gone_client_makes_the_sink_raise():
    async def scenario():
        stream, transport, _ = stream_for()
        transport.protocol.connection_lost(None)
        assert stream.closed and stream.disconnected
        with pytest.raises(ClientDisconnected):
            stream.send_head(200, [], b"x")
        assert issubclass(ClientDisconnected, OSError)

    run(scenario)


def test_close_and_abort_end_the_stream_and_its_connection():
    async def scenario():
        stream, transport, _ = stream_for()
        stream.close()
        assert stream.closed and transport.closed and not transport.aborted
        stream, transport, _ = stream_for()
        stream.send_head(200, [(b"content-length", b"10")], b"part", more_body=True)
        stream.abort()
        assert stream.closed and transport.aborted

    run(scenario)


# --- the body channel ----------------------------------------------------------------------


def test_body_channel_reads_pieces_then_the_end():
    async def scenario():
        stream, _, _ = stream_for(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
        assert stream.read_body() == b"ab" and not stream.body_read
        assert stream.read_body() is None  # nothing more yet
        waiting = asyncio.ensure_future(stream.wait_body())
        await settle()
        assert not waiting.done()
        stream.connection.data_received(b"cd")
        await settle()
        assert waiting.done()
        assert stream.read_body() == b"cd" and stream.body_read
        assert stream.read_body() is None  # read in full

    run(scenario)


def test_empty_body_reads_as_one_empty_piece():
    async def scenario():
        stream, _, _ = stream_for()
        assert stream.read_body() == b"" and stream.body_read

    run(scenario)


def test_100_continue_goes_out_when_the_body_is_first_waited_for():
    async def scenario():
        stream, transport, _ = stream_for(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
                                          b"Expect: 100-continue\r\n\r\n")
        assert transport.take() == b""
        stream.wait_body()
        stream.wait_body()
        assert transport.take() == CONTINUE_RESPONSE  # once

    run(scenario)


# --- shared: the waiter and the error mapping ----------------------------------------------


def test_waiter_wakes_the_one_waiting_and_forgets_a_wake_without_one():
    async def scenario():
        loop = asyncio.get_running_loop()
        waiter = Waiter()
        waiter.wake()  # nobody waits: nothing remembered
        waiting = asyncio.ensure_future(waiter.wait(loop))
        await settle()
        assert not waiting.done()
        waiter.wake()
        waiter.wake()  # a second wake of a done future is harmless
        await settle()
        assert waiting.done()

    run(scenario)


def test_error_response_is_the_one_mapping():
    headers, body = error_response(503)
    assert body == b"Service Unavailable\n"
    assert (b"connection", b"close") in headers
    assert error_response(400, "no Host header")[1] == b"Bad Request: no Host header\n"
    assert error_response(599)[1] == b"Error\n"


def test_refusals_of_the_connection_use_the_mapping():
    async def scenario():
        state, connection, transport, _ = open_connection()
        connection.data_received(b"GET / HTTP/1.1\r\n\r\n")  # no Host
        raw = transport.take()
        assert raw == encode_error(400, state.date_header)
        status, headers, body = split_response(raw)
        assert body == error_response(400)[1]
        assert (b"Connection", b"close") in headers and (b"Server", SERVER) in headers

    run(scenario)
