"""Http1Stream (keep-alive, 100-continue, the body channel, flow control; read through the
ASGI receive callable) and the HttpConnection around it, driven through a fake transport."""

from __future__ import annotations

import asyncio

import pytest

from duck_prefork.asgi.pipeline import ASGI, Request
from duck_prefork.http1.connection import HttpConnection, ServerState
from duck_prefork.http1.parser_h11 import H11Parser
from duck_prefork.http1.stream import BODY_HIGH_WATER, CONTINUE_RESPONSE, Http1Stream

from .fakes import FakeConnection, FakeTransport, split_response

pytestmark = pytest.mark.timeout(30)

DISCONNECT = {"type": "http.disconnect"}


def request_data(version: bytes = b"1.1", headers=(), method: bytes = b"POST",
                 connection: FakeConnection | None = None) -> Http1Stream:
    headers = list(headers)
    if not any(name == b"host" for name, _ in headers):
        headers.append((b"host", b"test"))  # HTTP/1.1 requires exactly one
    return Http1Stream(connection or FakeConnection(), method, b"/", version, headers)


def receive(data: Http1Stream):
    """The ASGI receive callable over `data`'s body channel (one call: one message)."""
    return Request({}, data, None, ASGI()).receive()


async def settle() -> None:
    """Let every ready callback and task step run."""
    for _ in range(5):
        await asyncio.sleep(0)


# --- keep-alive -------------------------------------------------------------------------------


@pytest.mark.parametrize("version, headers, keep_alive", [
    (b"1.1", [], True),
    (b"1.1", [(b"connection", b"keep-alive")], True),
    (b"1.1", [(b"connection", b"close")], False),
    (b"1.1", [(b"connection", b"Close")], False),
    (b"1.1", [(b"connection", b"keep-alive, close")], False),
    (b"1.1", [(b"connection", b"upgrade,close ")], False),
    (b"1.1", [(b"connection", b"keep-alive"), (b"connection", b"close")], False),
    (b"1.1", [(b"connection", b"closed")], True),  # a token, not a substring
    (b"1.1", [(b"x-connection", b"close")], True),
    (b"1.0", [], False),
    (b"1.0", [(b"connection", b"keep-alive")], False),
])
def test_keep_alive(version, headers, keep_alive):
    assert request_data(version, headers).keep_alive is keep_alive


def test_head_fields_are_text_where_the_scope_wants_text():
    data = request_data(b"1.1", [(b"host", b"a")], method=b"GET")
    assert (data.method, data.http_version, data.target) == ("GET", "1.1", b"/")


# --- the body channel ------------------------------------------------------------------------


def test_receive_returns_the_body_then_disconnect_once_the_response_is_complete():
    async def run():
        data = request_data()
        data.feed_body(b"ab")
        data.feed_body(b"cd")
        assert await receive(data) == {"type": "http.request", "body": b"abcd",
                                        "more_body": True}
        data.feed_body(b"ef")
        data.feed_end()
        assert await receive(data) == {"type": "http.request", "body": b"ef",
                                        "more_body": False}
        waiting = asyncio.ensure_future(receive(data))
        await settle()
        assert not waiting.done()  # the body is delivered; nothing until the response ends
        data.finish_response()
        assert await waiting == DISCONNECT
        assert await receive(data) == DISCONNECT

    asyncio.run(run())


def test_receive_without_a_body():
    async def run():
        data = request_data(method=b"GET")
        data.feed_end()
        assert await receive(data) == {"type": "http.request", "body": b"",
                                        "more_body": False}

    asyncio.run(run())


def test_receive_waits_for_body_then_wakes():
    async def run():
        data = request_data()
        waiting = asyncio.ensure_future(receive(data))
        await settle()
        assert not waiting.done()
        data.feed_body(b"x")
        assert await waiting == {"type": "http.request", "body": b"x", "more_body": True}

    asyncio.run(run())


def test_client_disconnect_wakes_receive():
    async def run():
        data = request_data()
        waiting = asyncio.ensure_future(receive(data))
        await settle()
        data.feed_disconnect()
        assert await waiting == DISCONNECT
        assert data.disconnected

    asyncio.run(run())


def test_body_fed_after_the_response_is_complete_is_dropped():
    async def run():
        connection = FakeConnection()
        data = request_data(connection=connection)
        data.finish_response()
        data.feed_body(b"x" * (BODY_HIGH_WATER + 1))
        assert connection.pauses == 0
        assert await receive(data) == DISCONNECT

    asyncio.run(run())


# --- Expect: 100-continue ---------------------------------------------------------------------


EXPECT = [(b"host", b"a"), (b"content-length", b"5"), (b"expect", b"100-continue")]


def test_100_continue_is_sent_when_receive_waits_for_the_body():
    async def run():
        connection = FakeConnection()
        data = request_data(headers=EXPECT, connection=connection)
        assert data.expect_continue
        assert connection.written == b""  # not before the app asks for the body
        waiting = asyncio.ensure_future(receive(data))
        await settle()
        assert connection.written == CONTINUE_RESPONSE
        data.feed_body(b"hello")
        data.feed_end()
        assert await waiting == {"type": "http.request", "body": b"hello", "more_body": False}
        assert connection.written == CONTINUE_RESPONSE  # once only

    asyncio.run(run())


def test_100_continue_is_sent_only_once():
    async def run():
        connection = FakeConnection()
        data = request_data(headers=EXPECT, connection=connection)
        first = asyncio.ensure_future(receive(data))
        await settle()
        data.feed_body(b"he")
        await first
        second = asyncio.ensure_future(receive(data))
        await settle()
        data.feed_body(b"llo")
        data.feed_end()
        await second
        assert connection.written == CONTINUE_RESPONSE

    asyncio.run(run())


def test_no_100_continue_when_the_body_is_already_here():
    async def run():
        connection = FakeConnection()
        data = request_data(headers=EXPECT, connection=connection)
        data.feed_body(b"hello")
        data.feed_end()
        assert (await receive(data))["body"] == b"hello"
        assert connection.written == b""

    asyncio.run(run())


def test_no_100_continue_when_the_app_never_reads():
    async def run():
        connection = FakeConnection()
        data = request_data(headers=EXPECT, connection=connection)
        data.finish_response()
        assert await receive(data) == DISCONNECT
        assert connection.written == b""

    asyncio.run(run())


def test_other_expectations_are_not_100_continue():
    assert not request_data(headers=[(b"expect", b"something-else")]).expect_continue
    assert request_data(headers=[(b"expect", b"100-Continue")]).expect_continue


def test_no_100_continue_for_http10():
    # RFC 9110 10.1.1: a server that receives 100-continue in an HTTP/1.0 request MUST ignore it.
    async def run():
        connection = FakeConnection()
        data = request_data(b"1.0", headers=EXPECT, connection=connection)
        waiting = asyncio.ensure_future(receive(data))
        await settle()
        data.feed_body(b"hello")
        data.feed_end()
        await waiting
        assert connection.written == b""

    asyncio.run(run())


def test_no_100_continue_after_the_response_started():
    # An interim 100 after the final response's head would land inside the response body.
    async def run():
        connection = FakeConnection()
        data = request_data(headers=EXPECT, connection=connection)
        data.response_started = True
        waiting = asyncio.ensure_future(receive(data))
        await settle()
        data.feed_body(b"hello")
        data.feed_end()
        await waiting
        assert CONTINUE_RESPONSE not in connection.written

    asyncio.run(run())


# --- flow control -----------------------------------------------------------------------------


def test_reading_pauses_above_the_high_water_mark_and_resumes_on_receive():
    async def run():
        connection = FakeConnection()
        data = request_data(connection=connection)
        data.feed_body(b"x" * BODY_HIGH_WATER)
        assert not connection.read_paused  # at the mark: still reading
        data.feed_body(b"y")
        assert connection.read_paused
        message = await receive(data)
        assert len(message["body"]) == BODY_HIGH_WATER + 1
        assert not connection.read_paused
        assert connection.resumes == 1

    asyncio.run(run())


def test_receive_below_the_mark_does_not_resume():
    async def run():
        connection = FakeConnection()
        data = request_data(connection=connection)
        data.feed_body(b"small")
        await receive(data)
        assert connection.resumes == 0

    asyncio.run(run())


# --- the connection around it ------------------------------------------------------------------


async def echo_path(scope, receive, send):
    while (await receive()).get("more_body"):
        pass
    body = scope["path"].encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def refuse_unread(scope, receive, send):
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def open_connection(app, keep_alive: float = 5.0):
    state = ServerState(app, ASGI(), H11Parser, keep_alive, timing=False)
    connection = HttpConnection(state)
    transport = FakeTransport()
    connection.connection_made(transport)
    return state, connection, transport


async def finish(state: ServerState) -> None:
    """Wait until no request task is left, including ones started by pipelining."""
    await settle()
    while state.tasks:
        await asyncio.wait(list(state.tasks), timeout=5)
        await settle()


def test_pipelined_requests_are_answered_in_order():
    async def run():
        state, connection, transport = open_connection(echo_path)
        connection.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
                                 b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        assert transport.reading_paused  # the second waits for the first's response
        await finish(state)
        raw = bytes(transport.written)
        assert raw.index(b"/one") < raw.index(b"/two")
        assert raw.count(b"HTTP/1.1 200 OK") == 2
        assert not transport.reading_paused
        assert not transport.closed
        assert connection.served == 2

    asyncio.run(run())


def test_bad_request_is_refused_with_400_and_closed():
    async def run():
        state, connection, transport = open_connection(echo_path)
        connection.data_received(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n")
        status, headers, body = split_response(transport.written)
        assert status == b"HTTP/1.1 400 Bad Request"
        assert (b"Connection", b"close") in headers
        assert transport.closed
        assert not state.tasks

    asyncio.run(run())


def test_no_keep_alive_closes_after_the_response():
    async def run():
        state, connection, transport = open_connection(echo_path, keep_alive=0)
        connection.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        await finish(state)
        assert split_response(transport.written)[2] == b"/x"
        assert transport.closed

    asyncio.run(run())


def test_request_then_half_close_still_gets_its_response():
    # `printf 'GET / ...' | nc host port` sends the request, then EOF. eof_received keeps our
    # side open because "a response may still be owed": the response must be written.
    async def run():
        state, connection, transport = open_connection(echo_path)
        connection.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        connection.eof_received()
        await finish(state)
        assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
        assert split_response(transport.written)[2] == b"/x"
        assert transport.closed  # and then the connection is closed

    asyncio.run(run())


def test_unread_body_after_a_keep_alive_response_does_not_stall_the_connection():
    # The app answers without reading a large body. Reading was paused by flow control; the
    # connection waits for the rest of the body to start the next cycle, so reading must resume
    # (or the connection must close) - otherwise it hangs with idle_since None, out of reach of
    # the keep-alive reaper.
    async def run():
        state, connection, transport = open_connection(refuse_unread)
        connection.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n"
                                 + b"x" * (BODY_HIGH_WATER + 1))
        await finish(state)
        assert transport.written.startswith(b"HTTP/1.1 413 ")
        assert transport.closed or not transport.reading_paused

    asyncio.run(run())
