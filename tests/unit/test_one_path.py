"""What HTTP responses and WebSocket handshakes share, one path each: the access log line
(ASGI.write_access_log), the server's own error responses (stream.error_response), the Server
and Date values; and the --response-header middleware (ResponseHeaders), which only the ASGI
HTTP responses go through."""

from __future__ import annotations

import asyncio

import pytest
from wsproto.events import AcceptConnection

from duck_prefork.access_log import AccessLog
from duck_prefork.asgi.pipeline import ASGI, ResponseHeaders
from duck_prefork.asgi.websocket import WebSocketUpgrade
from duck_prefork.stream import SERVER, error_response

from . import test_asgi, test_websocket
from .fakes import split_response
from .test_asgi import CLIENT, make, responder, serve
from .test_websocket import accepting_app, make_session, settle

pytestmark = pytest.mark.timeout(30)


class Log(AccessLog):
    """An AccessLog that keeps its lines (no file, no thread)."""

    def __init__(self) -> None:  # (AccessLog's is not called: nothing of it is used)
        self.lines: list[tuple] = []

    def write(self, *args) -> None:
        self.lines.append(args)


@pytest.fixture
def logged(monkeypatch) -> list[tuple]:
    """Every call of the one access-log path, (method, target, client, status, size), whoever
    calls: ASGI.write_access_log is the only writer of the pipeline's access log, so the
    pipelines these tests build get one that records (and passes each line on to the access
    log a test gave). (The compiled build's classes cannot be patched: build.py.)"""
    calls: list[tuple] = []

    class Recorder(AccessLog):
        def __init__(self, also) -> None:
            self.also = also

        def write(self, client, method, target, version, status, size, duration,
                  headers=(), extra="") -> None:
            calls.append((method, target, client, status, size))
            if self.also is not None:
                self.also.write(client, method, target, version, status, size, duration,
                                headers, extra)

    def pipeline(**options) -> ASGI:
        return ASGI(**{**options, "access_log": Recorder(options.get("access_log"))})

    monkeypatch.setattr(test_asgi, "ASGI", pipeline)
    monkeypatch.setattr(test_websocket, "ASGI", pipeline)
    return calls


# --- the access log ---------------------------------------------------------------------------


def test_http_responses_are_logged_through_the_one_path(logged):
    log = Log()
    serve(responder(), access_log=log, target=b"/p?q=1")
    assert logged == [("GET", b"/p?q=1", CLIENT, 200, 5)]
    assert [line[:6] for line in log.lines] == [(CLIENT, "GET", b"/p?q=1", "1.1", 200, 5)]


def test_the_500_of_a_failing_app_is_logged_through_the_one_path(logged):
    async def app(scope, receive, send):
        raise ValueError("boom")

    serve(app, access_log=Log())
    assert [call[3] for call in logged] == [500]


def test_websocket_handshakes_are_logged_through_the_one_path(logged):
    async def scenario():
        make_session(accepting_app([]))
        await settle()

        async def closes(scope, receive, send):
            await send({"type": "websocket.close"})

        make_session(closes)
        await settle()
        make_session(accepting_app([]), without=b"sec-websocket-key")  # refused before the app

    asyncio.run(scenario())
    assert [(method, target, status) for method, target, _, status, _ in logged] == \
        [("GET", b"/chat", 101), ("GET", b"/chat", 403), ("GET", b"/chat", 400)]


# --- the server's own error responses ----------------------------------------------------------


def test_the_500_of_a_failing_app_is_the_mapped_error_response():
    async def app(scope, receive, send):
        raise ValueError("boom")

    connection, _ = serve(app)
    _, headers, body = split_response(connection.written)
    assert body == error_response(500)[1]
    assert (b"content-type", b"text/plain; charset=utf-8") in headers


@pytest.mark.parametrize("without, status, why", [
    (b"sec-websocket-key", 400, "Sec-WebSocket-Key is not one base64-encoded 16-byte value"),
    (b"sec-websocket-version", 426, "Sec-WebSocket-Version is not 13"),
])
def test_a_refused_handshake_is_the_mapped_error_response(without, status, why):
    async def scenario():
        transport = make_session(accepting_app([]), without=without)[1]
        line, headers, body = split_response(transport.take())
        assert line.startswith(b"HTTP/1.1 %d " % status)
        assert body == error_response(status, why)[1]

    asyncio.run(scenario())


def test_a_websocket_closed_before_accept_is_the_mapped_403():
    async def scenario():
        async def closes(scope, receive, send):
            await send({"type": "websocket.close"})

        transport = make_session(closes)[1]
        await settle()
        line, headers, body = split_response(transport.take())
        assert line == b"HTTP/1.1 403 Forbidden"
        assert body == error_response(403)[1]
        assert (b"Connection", b"close") in headers and transport.closed

    asyncio.run(scenario())


# --- Server and Date ----------------------------------------------------------------------


def test_http_and_websocket_answers_carry_the_same_server_and_date():
    async def scenario():
        session, transport, peer, state = make_session(accepting_app([]))
        state.date = b"Sun, 06 Dec 2026 10:00:00 GMT"
        await settle()
        accept = peer.events(transport)[0]
        assert isinstance(accept, AcceptConnection)
        fields = dict(accept.extra_headers)
        assert fields[b"server"] == SERVER
        assert fields[b"date"] == b"Sun, 06 Dec 2026 10:00:00 GMT"

    asyncio.run(scenario())
    connection, _ = serve(responder())
    headers = split_response(connection.written)[1]
    assert (b"Server", SERVER) in headers and (b"Date", b"X") in headers


def test_upgrade_hook_is_offered_a_stream_with_the_handshake_facts():
    # The WebSocket side reads the head only through the stream's facts.
    async def scenario():
        session = make_session(accepting_app([]), upgrade=WebSocketUpgrade())[0]
        await settle()
        assert session.scope["client"] == ("127.0.0.1", 5000)
        assert session.scope["path"] == "/chat"

    asyncio.run(scenario())


# --- --response-header --------------------------------------------------------------------------


HSTS = (b"Strict-Transport-Security", b"max-age=31536000")
NOSNIFF = (b"X-Content-Type-Options", b"nosniff")


def test_response_headers_are_added_in_order_after_the_apps():
    connection, _ = serve(responder(headers=[(b"content-type", b"text/plain")]),
                          middlewares=[ResponseHeaders([HSTS, NOSNIFF])])
    _, headers, _ = split_response(connection.written)
    assert headers[2:] == [(b"content-type", b"text/plain"), HSTS, NOSNIFF,
                           (b"Content-Length", b"5")]


def test_a_header_the_app_sent_is_not_added_whatever_its_case():
    connection, _ = serve(responder(headers=[(b"x-content-type-options", b"mine")]),
                          middlewares=[ResponseHeaders([HSTS, NOSNIFF])])
    _, headers, _ = split_response(connection.written)
    assert (b"x-content-type-options", b"mine") in headers
    assert NOSNIFF not in headers and HSTS in headers


def test_the_apps_header_list_is_not_changed():
    app_headers = [(b"content-type", b"text/plain")]
    for _ in range(2):
        serve(responder(headers=app_headers), middlewares=[ResponseHeaders([HSTS])])
    assert app_headers == [(b"content-type", b"text/plain")]


def test_a_server_header_given_replaces_the_servers_own():
    connection, _ = serve(responder(), middlewares=[ResponseHeaders([(b"Server", b"web")])])
    _, headers, _ = split_response(connection.written)
    assert [value for name, value in headers if name.lower() == b"server"] == [b"web"]


def test_response_headers_go_on_the_500_of_a_failing_app():
    async def app(scope, receive, send):
        raise ValueError("boom")

    connection, _ = serve(app, middlewares=[ResponseHeaders([HSTS])])
    line, headers, _ = split_response(connection.written)
    assert line.startswith(b"HTTP/1.1 500 ") and HSTS in headers


def test_response_headers_are_not_on_websocket_handshake_answers():
    async def scenario():
        session, transport, peer, state = make_session(accepting_app([]))
        state.handler = ASGI(middlewares=[ResponseHeaders([HSTS])])
        await settle()
        accept = peer.events(transport)[0]
        assert HSTS[0].lower() not in {name.lower() for name, _ in accept.extra_headers}

    asyncio.run(scenario())


def test_without_response_headers_the_pipeline_has_no_middleware():
    pipeline, _, _ = make()
    assert pipeline.middlewares == []


def test_response_headers_read_an_iterable_of_app_headers_once():
    headers = iter([(b"content-type", b"text/plain")])

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x"})

    connection, _ = serve(app, middlewares=[ResponseHeaders([HSTS])])
    _, got, _ = split_response(connection.written)
    assert (b"content-type", b"text/plain") in got and HSTS in got
