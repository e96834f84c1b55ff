"""The ASGI pipeline against a fake connection: scope, response framing, send() rules, failsafe."""

from __future__ import annotations

import asyncio

import pytest

from duck_prefork.access_log import AccessLog
from duck_prefork.asgi.pipeline import (
    ASGI,
    ClientDisconnected,
    Request,
    decode_path,
    split_target,
)
from duck_prefork.http1.stream import Http1Stream

from .fakes import FakeConnection, header_names, split_response

pytestmark = pytest.mark.timeout(30)

CLIENT = ("10.0.0.1", 1234)


def make(method: str = "GET", target: bytes = b"/", version: str = "1.1",
         headers=((b"host", b"example.com"),), **pipeline_options):
    """A pipeline, a fake connection and a complete request without a body."""
    connection = FakeConnection(CLIENT)
    headers = list(headers)
    if not any(name == b"host" for name, _ in headers):
        headers.append((b"host", b"test"))  # HTTP/1.1 requires exactly one
    data = Http1Stream(connection, method.encode(), target, version.encode(), headers)
    data.feed_end()
    return ASGI(**pipeline_options), connection, data


def serve(app, **options) -> tuple[FakeConnection, Request]:
    """Run `app` for one request; returns the connection (what was written) and the request."""
    pipeline, connection, data = make(**options)
    request = asyncio.run(pipeline(app, data))
    return connection, request


def responder(status: int = 200, headers=(), bodies=(b"hello",)):
    """An app sending http.response.start, then each of `bodies`, the last with more_body False."""
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        for i, body in enumerate(bodies):
            await send({"type": "http.response.body", "body": body,
                        "more_body": i < len(bodies) - 1})
    return app


def scope_of(target: bytes = b"/", **options) -> dict:
    pipeline, connection, data = make(target=target, **options)
    return pipeline.get_request(data).scope


# --- the scope ------------------------------------------------------------------------------


def test_scope_fields():
    headers = [(b"host", b"example.com"), (b"x-thing", b"1")]
    scope = scope_of(b"/a/b?x=1&y=2", method="POST", headers=headers)
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "POST"
    assert scope["scheme"] == "http"
    assert scope["server"] == ("127.0.0.1", 8000)
    assert scope["client"] == CLIENT
    assert scope["root_path"] == ""
    assert scope["path"] == "/a/b"
    assert scope["raw_path"] == b"/a/b"
    assert scope["query_string"] == b"x=1&y=2"
    assert scope["headers"] == headers
    assert scope["state"] == {}


def test_scope_http_version_10():
    assert scope_of(version="1.0", headers=())["http_version"] == "1.0"


def test_path_is_percent_decoded_raw_path_is_not():
    scope = scope_of(b"/caf%C3%A9/a%20b%2Fc?q=%20x")
    assert scope["path"] == "/café/a b/c"
    assert scope["raw_path"] == b"/caf%C3%A9/a%20b%2Fc"
    assert scope["query_string"] == b"q=%20x"


def test_invalid_utf8_in_path_is_replaced():
    assert scope_of(b"/%FF")["path"] == "/\ufffd"


def test_root_path_prefixes_path_and_raw_path():
    scope = scope_of(b"/users/a%20b?x=1", root_path="/api")
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/users/a b"
    assert scope["raw_path"] == b"/api/users/a%20b"
    assert scope["query_string"] == b"x=1"


@pytest.mark.parametrize("target, path, query", [
    (b"http://example.com:8080/x/y?q=1", "/x/y", b"q=1"),
    (b"https://example.com/", "/", b""),
    (b"http://example.com", "/", b""),
])
def test_absolute_form_target(target, path, query):
    scope = scope_of(target)
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == \
        (path, path.encode(), query)


def test_absolute_form_without_path_keeps_its_query():
    # RFC 9112 3.2.2: absolute-form is an absolute-URI, so "http://host?q=1" is valid; the query
    # must not be lost because the path is empty.
    scope = scope_of(b"http://example.com?q=1")
    assert scope["path"] == "/"
    assert scope["query_string"] == b"q=1"


def test_asterisk_form_target():
    assert split_target(b"*") == (b"*", b"")


def test_decode_path_fast_path_returns_same_text():
    assert decode_path(b"/plain/path") == "/plain/path"


def test_state_is_a_copy_of_the_lifespan_state():
    lifespan_state = {"db": "connection"}
    scope = scope_of(state=lifespan_state)
    assert scope["state"] == {"db": "connection"}
    scope["state"]["db"] = "replaced"
    scope["state"]["added"] = True
    assert lifespan_state == {"db": "connection"}


def test_each_request_gets_its_own_state_copy():
    lifespan_state = {"n": 0}
    pipeline, connection, data = make(state=lifespan_state)
    first = pipeline.get_request(data).scope["state"]
    first["n"] = 1
    second = pipeline.get_request(data).scope["state"]
    assert second == {"n": 0}


def test_app_receives_scope_and_body():
    seen = {}

    async def app(scope, receive, send):
        seen["path"] = scope["path"]
        seen["message"] = await receive()
        await responder()(scope, receive, send)

    connection, _ = serve(app, target=b"/x")
    assert seen == {"path": "/x",
                    "message": {"type": "http.request", "body": b"", "more_body": False}}


# --- framing ---------------------------------------------------------------------------------


def test_single_body_gets_content_length():
    connection, _ = serve(responder(headers=[(b"content-type", b"text/plain")]))
    assert bytes(connection.written) == (
        b"HTTP/1.1 200 OK\r\nServer: duck-prefork\r\nDate: X\r\n"
        b"content-type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
    assert connection.completed == [True]


def test_empty_single_body_gets_content_length_zero():
    connection, _ = serve(responder(bodies=(b"",)))
    status, headers, body = split_response(connection.written)
    assert (b"Content-Length", b"0") in headers
    assert body == b""
    assert connection.completed == [True]


def test_app_content_length_is_used_for_streaming():
    connection, _ = serve(responder(headers=[(b"Content-Length", b"5")],
                                    bodies=(b"hel", b"lo")))
    status, headers, body = split_response(connection.written)
    assert header_names(headers).count(b"content-length") == 1
    assert (b"Content-Length", b"5") in headers
    assert b"transfer-encoding" not in header_names(headers)
    assert body == b"hello"
    assert connection.completed == [True]


def test_streaming_is_chunked():
    connection, _ = serve(responder(bodies=(b"hello", b" world", b"")))
    status, headers, body = split_response(connection.written)
    assert status == b"HTTP/1.1 200 OK"
    assert (b"Transfer-Encoding", b"chunked") in headers
    assert b"content-length" not in header_names(headers)
    assert body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    assert connection.completed == [True]


def test_streaming_last_message_with_data():
    connection, _ = serve(responder(bodies=(b"hello", b"!")))
    assert split_response(connection.written)[2] == b"5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"


def test_empty_intermediate_body_writes_no_chunk():
    # A zero-length chunk would end the body early.
    connection, _ = serve(responder(bodies=(b"a", b"", b"b", b"")))
    assert split_response(connection.written)[2] == b"1\r\na\r\n1\r\nb\r\n0\r\n\r\n"


def test_app_framing_headers_are_replaced_by_ours():
    connection, _ = serve(responder(headers=[(b"transfer-encoding", b"chunked"),
                                             (b"connection", b"keep-alive")],
                                    bodies=(b"ab", b"")))
    status, headers, body = split_response(connection.written)
    assert header_names(headers).count(b"transfer-encoding") == 1
    assert b"connection" not in header_names(headers)
    assert body == b"2\r\nab\r\n0\r\n\r\n"
    assert connection.completed == [True]


def test_write_backpressure_waits_for_drain():
    pipeline, connection, data = make()
    connection.write_paused = True
    asyncio.run(pipeline(responder(bodies=(b"a", b"b")), data))
    assert connection.drains == 1


def test_head_writes_no_body():
    connection, _ = serve(responder(bodies=(b"hello",)), method="HEAD")
    raw = bytes(connection.written)
    assert raw.endswith(b"\r\n\r\n")
    status, headers, body = split_response(raw)
    assert body == b""
    assert b"transfer-encoding" not in header_names(headers)
    assert connection.completed == [True]


def test_head_keeps_the_app_content_length():
    connection, _ = serve(responder(headers=[(b"content-length", b"5")], bodies=(b"hello",)),
                          method="HEAD")
    status, headers, body = split_response(connection.written)
    assert (b"Content-Length", b"5") in headers
    assert body == b""
    assert connection.completed == [True]


def test_head_streaming_is_not_chunked():
    connection, _ = serve(responder(bodies=(b"a", b"b", b"")), method="HEAD")
    status, headers, body = split_response(connection.written)
    assert b"transfer-encoding" not in header_names(headers)
    assert body == b""
    assert connection.completed == [True]


@pytest.mark.parametrize("status, line", [(204, b"HTTP/1.1 204 No Content"),
                                          (304, b"HTTP/1.1 304 Not Modified")])
@pytest.mark.parametrize("bodies", [(b"ignored",), (b"a", b"b")])
def test_no_body_statuses_have_no_body_and_no_framing(status, line, bodies):
    connection, _ = serve(responder(status, headers=[(b"content-length", b"7"),
                                                     (b"etag", b'"x"')], bodies=bodies))
    raw = bytes(connection.written)
    got_status, headers, body = split_response(raw)
    assert got_status == line
    assert body == b""
    assert b"content-length" not in header_names(headers)
    assert b"transfer-encoding" not in header_names(headers)
    assert (b"etag", b'"x"') in headers
    assert connection.completed == [True]


def test_http10_streaming_is_not_chunked_and_closes():
    connection, _ = serve(responder(bodies=(b"hello", b" world", b"")), version="1.0",
                          headers=())
    status, headers, body = split_response(connection.written)
    assert b"transfer-encoding" not in header_names(headers)
    assert b"content-length" not in header_names(headers)
    assert (b"Connection", b"close") in headers
    assert body == b"hello world"
    assert connection.completed == [False]


def test_http10_single_body_has_length_and_closes():
    connection, _ = serve(responder(), version="1.0", headers=())
    status, headers, body = split_response(connection.written)
    assert (b"Content-Length", b"5") in headers
    assert (b"Connection", b"close") in headers
    assert connection.completed == [False]


def test_app_connection_close_is_honoured():
    connection, _ = serve(responder(headers=[(b"Connection", b"close")]))
    status, headers, body = split_response(connection.written)
    assert [h for h in headers if h[0].lower() == b"connection"] == [(b"Connection", b"close")]
    assert connection.completed == [False]


def test_client_connection_close_is_answered_with_close():
    connection, _ = serve(responder(), headers=[(b"host", b"a"), (b"connection", b"close")])
    assert (b"Connection", b"close") in split_response(connection.written)[1]
    assert connection.completed == [False]


def test_keep_alive_response_has_no_connection_header():
    connection, _ = serve(responder())
    assert b"connection" not in header_names(split_response(connection.written)[1])
    assert connection.completed == [True]


def test_draining_adds_connection_close():
    """From the start of a stop (the lame duck of --drain-delay included: ServerState.lame_duck,
    which the drain sets too), every response carries Connection: close."""
    pipeline, connection, data = make()
    connection.state.lame_duck = True
    asyncio.run(pipeline(responder(), data))
    assert (b"Connection", b"close") in split_response(connection.written)[1]
    assert connection.completed == [False]


def test_app_date_and_server_replace_ours():
    connection, _ = serve(responder(headers=[(b"date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
                                             (b"Server", b"mine")]))
    status, headers, body = split_response(connection.written)
    assert (b"date", b"Mon, 01 Jan 2024 00:00:00 GMT") in headers
    assert (b"Server", b"mine") in headers
    assert header_names(headers).count(b"date") == 1
    assert header_names(headers).count(b"server") == 1


def test_unknown_status_has_a_status_line():
    connection, _ = serve(responder(599))
    assert bytes(connection.written).startswith(b"HTTP/1.1 599 \r\n")


@pytest.mark.parametrize("name, value", [
    (b"x-bad", b"a\r\nx-injected: yes"),
    (b"x-bad", b"a\nx-injected: yes"),
    (b"x-bad", b"a\rb"),
    (b"x-bad", b"a\0b"),
    (b"x-bad\r\nx-injected", b"yes"),
])
def test_cr_lf_nul_in_headers_raise(name, value):
    pipeline, connection, data = make()
    request = pipeline.get_request(data)

    async def run():
        await request.send({"type": "http.response.start", "status": 200,
                            "headers": [(name, value)]})
        await request.send({"type": "http.response.body", "body": b"no"})

    with pytest.raises(RuntimeError, match="CR, LF or NUL"):
        asyncio.run(run())
    assert connection.written == b""


def test_header_injection_becomes_a_500_without_the_injected_header():
    connection, _ = serve(responder(headers=[(b"x-bad", b"a\r\nx-injected: yes")]))
    raw = bytes(connection.written)
    assert raw.startswith(b"HTTP/1.1 500 ")
    assert b"x-injected" not in raw


def test_invalid_app_content_length_raises():
    pipeline, connection, data = make()
    request = pipeline.get_request(data)

    async def run():
        await request.send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", b"-1")]})
        await request.send({"type": "http.response.body", "body": b""})

    with pytest.raises(RuntimeError, match="Content-Length"):
        asyncio.run(run())


@pytest.mark.parametrize("bodies", [(b"hello",), (b"ab", b"cd")])
def test_body_longer_than_content_length_raises(bodies):
    pipeline, connection, data = make()
    request = pipeline.get_request(data)

    async def run():
        await request.send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", b"3")]})
        for body in bodies:
            await request.send({"type": "http.response.body", "body": body, "more_body": True})

    with pytest.raises(RuntimeError, match="longer than its Content-Length"):
        asyncio.run(run())
    assert b"cd" not in connection.written and b"hello" not in connection.written
    assert connection.completed == []


def test_body_shorter_than_content_length_does_not_keep_alive():
    connection, _ = serve(responder(headers=[(b"content-length", b"10")], bodies=(b"hello",)))
    status, headers, body = split_response(connection.written)
    assert body == b"hello"
    assert connection.completed == [False]


# --- Request.send message rules -------------------------------------------------------------


def send_sequence(*messages, connection_closed: bool = False):
    pipeline, connection, data = make()
    connection.closed = data.closed = connection_closed  # as HttpConnection.close() does
    request = pipeline.get_request(data)

    async def run():
        for message in messages:
            await request.send(message)

    asyncio.run(run())
    return connection


START = {"type": "http.response.start", "status": 200, "headers": []}
BODY = {"type": "http.response.body", "body": b"x"}


def test_body_before_start_raises():
    with pytest.raises(RuntimeError, match="before 'http.response.start'"):
        send_sequence(BODY)


def test_start_twice_raises():
    with pytest.raises(RuntimeError, match="twice"):
        send_sequence(START, START)


def test_body_after_complete_raises():
    with pytest.raises(RuntimeError, match="after the response was complete"):
        send_sequence(START, BODY, BODY)


@pytest.mark.parametrize("kind", ["http.response.push", "websocket.send", "lifespan.startup"])
def test_unknown_message_type_raises(kind):
    with pytest.raises(RuntimeError, match="unexpected message type"):
        send_sequence({"type": kind})


@pytest.mark.parametrize("status", [99, 100, 199, 600, "200", 200.0, True, None])
def test_invalid_status_raises(status):
    with pytest.raises(RuntimeError, match="invalid response status"):
        send_sequence({"type": "http.response.start", "status": status})


def test_valid_sequence_writes_once_complete():
    connection = send_sequence(START, {"type": "http.response.body", "body": b"a",
                                       "more_body": True},
                               {"type": "http.response.body"})
    assert split_response(connection.written)[2] == b"1\r\na\r\n0\r\n\r\n"
    assert connection.completed == [True]


def test_send_after_client_left_raises_client_disconnected():
    with pytest.raises(ClientDisconnected):
        send_sequence(START, connection_closed=True)
    assert issubclass(ClientDisconnected, OSError)


# --- produce_final_response_failsafe --------------------------------------------------------


def test_app_raising_before_start_gets_a_500():
    async def app(scope, receive, send):
        raise ValueError("boom")

    connection, request = serve(app)
    status, headers, body = split_response(connection.written)
    assert status == b"HTTP/1.1 500 Internal Server Error"
    assert (b"Connection", b"close") in headers
    assert (b"Content-Length", str(len(body)).encode()) in headers
    assert body == b"Internal Server Error\n"
    assert connection.completed == [False]
    assert not connection.aborted


def test_app_raising_between_start_and_body_gets_a_500():
    async def app(scope, receive, send):
        await send(START)
        raise ValueError("boom")

    connection, request = serve(app)
    assert bytes(connection.written).startswith(b"HTTP/1.1 500 ")
    assert connection.completed == [False]


def test_app_returning_without_a_response_gets_a_500():
    async def app(scope, receive, send):
        return None

    connection, _ = serve(app)
    status, headers, body = split_response(connection.written)
    assert status == b"HTTP/1.1 500 Internal Server Error"
    assert (b"Connection", b"close") in headers
    assert connection.completed == [False]


def test_500_for_a_head_request_has_no_body():
    async def app(scope, receive, send):
        raise ValueError("boom")

    connection, _ = serve(app, method="HEAD")
    raw = bytes(connection.written)
    assert raw.startswith(b"HTTP/1.1 500 ")
    assert raw.endswith(b"\r\n\r\n")


def test_app_raising_mid_body_aborts():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom")

    connection, _ = serve(app)
    assert connection.aborted
    assert b" 500 " not in connection.written
    assert connection.completed == []


def test_app_returning_mid_body_aborts():
    async def app(scope, receive, send):
        await send(START)
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})

    connection, _ = serve(app)
    assert connection.aborted
    assert connection.completed == []


def test_app_raising_after_the_response_is_complete_changes_nothing():
    async def app(scope, receive, send):
        await responder()(scope, receive, send)
        raise ValueError("background failure")

    connection, _ = serve(app)
    assert split_response(connection.written)[2] == b"hello"
    assert connection.completed == [True]
    assert not connection.aborted


def test_app_raising_after_client_disconnected_writes_nothing():
    async def app(scope, receive, send):
        assert (await receive())["type"] == "http.request"
        await send(START)  # the connection is closed: ClientDisconnected

    pipeline, connection, data = make()
    connection.closed = data.closed = True  # as HttpConnection.close() does
    asyncio.run(pipeline(app, data))
    assert connection.written == b""
    assert connection.completed == []


def test_app_raising_once_the_client_is_gone_writes_nothing():
    async def app(scope, receive, send):
        raise ValueError("boom")

    pipeline, connection, data = make()
    data.feed_disconnect()
    asyncio.run(pipeline(app, data))
    assert connection.written == b""
    assert connection.closed and not connection.aborted


# --- middlewares and the access log -----------------------------------------------------------


def test_middlewares_run_last_registered_first_and_may_edit_headers():
    order = []

    def first(response, request):
        order.append("first")
        response.headers = [*response.headers, (b"x-first", b"1")]

    def second(response, request):
        order.append("second")

    connection, _ = serve(responder(), middlewares=[first, second])
    assert order == ["second", "first"]
    assert (b"x-first", b"1") in split_response(connection.written)[1]


def test_access_log_gets_one_line_per_response():
    lines = []

    class Log(AccessLog):  # (its __init__ is not called: no file, no thread)
        def __init__(self) -> None:
            pass

        def write(self, *args):
            lines.append(args)

    connection, _ = serve(responder(), access_log=Log(), target=b"/p?q=1")
    assert len(lines) == 1
    client, method, target, version, status, size, duration, headers = lines[0]
    assert (client, method, target, version, status, size) == \
        (CLIENT, "GET", b"/p?q=1", "1.1", 200, 5)
    assert isinstance(headers, list)  # the request's, by reference: formatted by the thread
