"""WebSockets over HTTP/2 (RFC 8441 extended CONNECT) end to end: a real server, over TLS with
ALPN h2 and over h2c from a trusted peer, driven by a small client (h2websocket.py: h2's client
side, wsproto's frame layer) and, where a test needs frames no well-behaved client sends, by
raw frames (h2wire.py). The app is the HTTP/1.1 WebSocket tests' (tests/apps/ws.py): the same
adapter serves both."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, RstStreamFrame
from websockets.sync.client import connect as connect_http1
from wsproto.connection import Connection, ConnectionType

from .conftest import running_server, wait_for
from .h2websocket import (
    ENABLE_CONNECT_PROTOCOL,
    BytesMessage,
    CloseConnection,
    H2WebSocketClient,
    TextMessage,
)
from .h2wire import H2Wire
from .test_tls import tls_args, tls_port

PROTOCOL_ERROR = 1
pytestmark = pytest.mark.timeout(120)

APP = "tests.apps.ws:app"
MiB = 1 << 20


@pytest.fixture(scope="module")
def events_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("h2-ws-events") / "events"


@pytest.fixture(scope="module")
def server(tmp_path_factory, events_file, certs):
    """One worker listening with TLS (ALPN h2) and in cleartext (h2c: 127.0.0.1 is a trusted
    peer by default)."""
    os.environ["DUCK_TEST_EVENTS"] = str(events_file)  # inherited by the server it starts
    try:
        with running_server([APP, "--workers", "1", *tls_args(certs), "--bind",
                             "https://127.0.0.1:0", "--bind", "127.0.0.1:0"],
                            tmp_path_factory.mktemp("h2-ws-server")) as running:
            yield running
    finally:
        del os.environ["DUCK_TEST_EVENTS"]


@pytest.fixture(params=["tls", "h2c"])
def connect(request, server, certs):
    """connect() -> a client on a new connection, over TLS or h2c (each test runs on both)."""
    clients: list[H2WebSocketClient] = []

    def make(**options) -> H2WebSocketClient:
        if request.param == "tls":
            client = H2WebSocketClient(tls_port(server), context=certs.client_context(),
                                       **options)
        else:
            client = H2WebSocketClient(server.port, **options)
        clients.append(client)
        return client

    make.tls = request.param == "tls"  # type: ignore[attr-defined]
    yield make
    for client in clients:
        client.close()


def events(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_event(path: Path, prefix: str, timeout: float = 15.0) -> str:
    return wait_for(lambda: next((line for line in events(path) if line.startswith(prefix)),
                                 None), timeout, f"app event {prefix!r}")


def count_events(path: Path, prefix: str) -> int:
    return sum(1 for line in events(path) if line.startswith(prefix))


# --- the handshake ------------------------------------------------------------------------

def test_settings_advertise_the_extended_connect(connect):
    client = connect()
    value = client.wait(lambda: client.remote_settings.get(ENABLE_CONNECT_PROTOCOL),
                        what="SETTINGS_ENABLE_CONNECT_PROTOCOL")
    assert value == 1


def test_echo_text_and_bytes_with_a_subprotocol(connect):
    client = connect()
    ws = client.connect("/echo", subprotocols=("superchat", "chat"))
    head = client.streams[ws].headers
    assert head[b"sec-websocket-protocol"] == b"superchat"
    assert head[b"x-accepted-by"] == b"ws-test-app" and head[b"server"] == b"duck-prefork"
    assert b"sec-websocket-accept" not in head and b"date" in head
    assert not client.streams[ws].ended  # the stream stays open for the frames
    for event in (TextMessage(data="hello"), BytesMessage(data=b"\x00\x01\xff"),
                  TextMessage(data="")):
        client.send(ws, event)
        assert client.receive(ws) == event


def test_no_subprotocol_when_none_is_agreed(connect):
    client = connect()
    ws = client.connect("/echo", subprotocols=("unknown",))
    assert b"sec-websocket-protocol" not in client.streams[ws].headers
    client.send(ws, TextMessage(data="x"))
    assert client.receive(ws) == TextMessage(data="x")


@pytest.mark.parametrize("deflate", [False, True])
def test_one_mebibyte_both_ways_through_the_windows(connect, deflate):
    """1 MiB each way through 64 KiB stream windows: each side waits for the other's
    WINDOW_UPDATEs (the server sends them as its app reads)."""
    client = connect()
    ws = client.connect("/echo", deflate=deflate)
    assert (b"permessage-deflate" in client.streams[ws].headers.get(
        b"sec-websocket-extensions", b"")) is deflate
    big = os.urandom(MiB)
    client.send(ws, BytesMessage(data=big))
    assert client.receive(ws, timeout=30) == BytesMessage(data=big)
    text = "compressible " * (MiB // 13)
    client.send(ws, TextMessage(data=text))
    assert client.receive(ws, timeout=30) == TextMessage(data=text)


def test_scope_and_proxy_headers(connect, server):
    client = connect()
    ws = client.connect("/scope?a=1&b=%20", subprotocols=("chat",),
                        extra=[(b"x-forwarded-for", b"203.0.113.9"),
                               (b"x-forwarded-proto", b"https")])
    event = client.receive(ws)
    scope = json.loads(event.data)
    assert scope["type"] == "websocket" and "method" not in scope
    assert scope["http_version"] == "2"
    assert scope["scheme"] == "wss"  # TLS, or a trusted proxy's X-Forwarded-Proto over h2c
    assert scope["path"] == "/scope" and scope["query_string"] == "a=1&b=%20"
    assert scope["subprotocols"] == ["chat"]
    assert scope["client"][0] == "203.0.113.9"  # 127.0.0.1 is trusted by default
    assert ["sec-websocket-protocol", "chat"] in scope["headers"]
    assert ["host", "localhost"] in scope["headers"]
    assert "websocket.http.response" in scope["extensions"]
    assert "http.response.trailers" not in scope["extensions"]
    assert ("tls" in scope["extensions"]) is connect.tls


def test_close_before_accept_is_a_403(connect):
    client = connect()
    stream = client.response(client.open("/reject"))
    assert stream.status == 403 and stream.ws is None
    client.wait(lambda: stream.ended, what="the end of the 403")
    assert stream.body.startswith(b"Forbidden")


def test_denial_response_is_the_apps_own(connect):
    client = connect()
    stream = client.response(client.open("/deny"))
    assert stream.status == 401 and stream.headers[b"x-denied"] == b"yes"
    assert b"connection" not in stream.headers and b"date" in stream.headers
    client.wait(lambda: stream.ended, what="the end of the denial")
    assert bytes(stream.body) == b"denied: no token"


@pytest.mark.parametrize("extra, end, status", [
    ([(b"sec-websocket-version", b"8")], False, 426),
    ([(b"content-length", b"0")], False, 400),
    ([], True, 400),  # END_STREAM with the head: no frame could follow
])
def test_bad_handshakes_are_refused_before_the_app(connect, events_file, extra, end, status):
    client = connect()
    before = count_events(events_file, "accepted")
    stream = client.response(client.open("/echo", extra=extra, end=end))
    assert stream.status == status
    assert (stream.headers.get(b"sec-websocket-version") == b"13") is (status == 426)
    client.wait(lambda: stream.ended, what="the end of the refusal")
    ws = client.connect("/echo")  # the connection goes on
    client.send(ws, TextMessage(data="next"))
    assert client.receive(ws) == TextMessage(data="next")
    assert count_events(events_file, "accepted") == before + 1


# --- the end ------------------------------------------------------------------------------

def test_the_app_closes_with_a_code(connect):
    client = connect()
    ws = client.connect("/close-after-accept")
    close = client.receive(ws)
    assert isinstance(close, CloseConnection) and (close.code, close.reason) == (4001,
                                                                                 "done here")
    client.send(ws, close.response(), end=True)
    stream = client.streams[ws]
    client.wait(lambda: stream.ended or stream.reset is not None, what="the stream's end")
    assert stream.reset in (None, 0)


def test_the_client_closes(connect, events_file):
    client = connect()
    ws = client.connect("/echo")
    client.send(ws, CloseConnection(code=4321, reason="client says bye"))
    assert client.close_code(ws) == 4321  # the server's answer
    stream = client.streams[ws]
    client.wait(lambda: stream.ended, what="END_STREAM after the close")
    wait_event(events_file, "disconnect 4321")


@pytest.mark.parametrize("how", ["reset", "connection lost"])
def test_a_client_reset_or_a_lost_connection_is_a_disconnect_for_the_app(connect, events_file,
                                                                         how):
    client = connect()
    before = count_events(events_file, "disconnect 1006")
    ws = client.connect("/echo")
    client.send(ws, TextMessage(data="x"))
    assert client.receive(ws) == TextMessage(data="x")
    if how == "reset":
        client.reset(ws)
    else:
        client.close()
    wait_for(lambda: count_events(events_file, "disconnect 1006") > before,
             what="the app's websocket.disconnect 1006")
    if how == "reset":
        assert client.get("/after")[0] == 200  # the connection is fine


def test_http_requests_on_the_same_connection_as_websockets(connect):
    client = connect()
    first = client.connect("/echo")
    second = client.connect("/echo", subprotocols=("chat",))
    for i in range(5):
        client.send(first, TextMessage(data=f"one {i}"))
        assert client.get(f"/plain/{i}") == (200, b"plain HTTP")
        client.send(second, BytesMessage(data=b"two %d" % i))
        assert client.receive(second) == BytesMessage(data=b"two %d" % i)
        assert client.receive(first) == TextMessage(data=f"one {i}")


# --- flow control -------------------------------------------------------------------------

def test_an_app_that_does_not_receive_shuts_the_window_and_loses_nothing(connect, events_file,
                                                                        tmp_path):
    """Its messages queue up to QUEUE_BYTES; then the server stops acknowledging DATA, and
    the client cannot send more than the stream's window on top."""
    client = connect()
    release = tmp_path / "release"
    ws = client.connect(f"/no-receive?release={release}")
    frame = client.streams[ws].ws.send(BytesMessage(data=b"m" * 65536))  # type: ignore
    conn = client.h2
    sent = 0

    def push() -> int:
        """Send what the server's window takes now (no waiting); the bytes sent so far."""
        nonlocal sent
        client.read(0.05)
        while sent < 64 * MiB:
            window = min(conn.local_flow_control_window(ws), conn.max_outbound_frame_size)
            if window <= 0:
                break
            piece = frame[sent % len(frame):][:window]
            conn.send_data(ws, piece)
            sent += len(piece)
        client.flush()
        return sent

    def stalled() -> int | None:
        before = push()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # a second with the window shut: stalled
            if push() != before:
                return None
        return before

    taken = wait_for(stalled, 30, "the server to stop opening its window")
    assert taken < 4 * MiB, f"the server took {taken} bytes the app did not ask for"
    release.touch()  # the app reads now: the window reopens
    messages, rest = -(-taken // len(frame)), taken % len(frame)
    if rest:
        client.send_raw(ws, frame[rest:])  # the rest of the message in flight
    client.send(ws, CloseConnection(code=1000))
    assert client.close_code(ws, timeout=30) == 1000
    wait_event(events_file, f"received {messages} then disconnect 1000")


# --- servers with their own options -------------------------------------------------------

@pytest.mark.parametrize("options", [("--ws", "none"), ("--ws-http2", "false")])
def test_turned_off_nothing_is_advertised_and_an_extended_connect_is_refused(start_server,
                                                                            options):
    """Not advertised, a :protocol makes the request malformed (RFC 8441 4): the stream is
    reset with PROTOCOL_ERROR, the app never sees it, and the connection goes on."""
    server = start_server(APP, "--workers", "1", *options)
    if options[0] == "--ws-http2":  # WebSockets over HTTP/1.1 are still served
        with connect_http1(f"ws://127.0.0.1:{server.port}/echo") as ws:
            ws.send("over HTTP/1.1")
            assert ws.recv() == "over HTTP/1.1"
    with H2WebSocketClient(server.port) as client:
        client.wait(lambda: client.remote_settings, what="the server's SETTINGS")
        assert not client.remote_settings.get(ENABLE_CONNECT_PROTOCOL)
        stream = client.response(client.open("/echo"))
        assert stream.reset == PROTOCOL_ERROR and stream.ws is None
        assert client.get("/")[0] == 200  # the connection goes on


def test_access_log_has_a_line_per_websocket_stream(start_server, tmp_path):
    access = tmp_path / "access.log"
    server = start_server(APP, "--workers", "1", "--access-logfile", str(access))
    with H2WebSocketClient(server.port) as client:
        ws = client.connect("/echo")
        client.send(ws, TextMessage(data="x"))
        assert client.receive(ws) == TextMessage(data="x")
        assert client.response(client.open("/reject")).status == 403
        assert client.response(client.open("/deny")).status == 401
    lines = wait_for(lambda: access.exists() and len(access.read_text().splitlines()) >= 3
                     and access.read_text().splitlines(), what="three access log lines")
    assert [line.split('"')[1] for line in lines] == [
        "CONNECT /echo HTTP/2", "CONNECT /reject HTTP/2", "CONNECT /deny HTTP/2"]
    assert [line.split('"')[2].split()[0] for line in lines] == ["200", "403", "401"]


HANDSHAKE = [(b":protocol", b"websocket"), (b"sec-websocket-version", b"13")]


def raw_websocket(wire: H2Wire, stream_id: int, path: str = "/echo") -> Connection:
    """An extended CONNECT in raw frames (h2wire), answered 200: the client's frame layer."""
    wire.send_frames(wire.headers(stream_id, path, "CONNECT", end=False, extra=HANDSHAKE))
    head = wire.wait(lambda frames: [f for f in frames if isinstance(f, HeadersFrame)
                                     and f.stream_id == stream_id],
                     what=f"the answer on stream {stream_id}")[0]
    assert wire.decoded[id(head)][b":status"] == b"200"
    return Connection(ConnectionType.CLIENT)


def test_sigterm_closes_with_1001_then_goaway(start_server, tmp_path, certs):
    events_path = tmp_path / "events"
    server = start_server(APP, "--workers", "1", "--graceful-timeout", "60", *tls_args(certs),
                          "--bind", "https://127.0.0.1:0",
                          env={"DUCK_TEST_EVENTS": str(events_path)})
    wires = [H2Wire(server.port), H2Wire(tls_port(server), context=certs.client_context())]
    sessions = []
    for wire in wires:
        ws = raw_websocket(wire, 1)
        wire.send_frames(DataFrame(1, data=ws.send(TextMessage(data="before stop"))))
        wire.wait(lambda frames: [f for f in frames if isinstance(f, DataFrame) and f.data],
                  what="the echo")
        sessions.append(ws)
    server.send_signal(signal.SIGTERM)
    for wire, ws in zip(wires, sessions, strict=True):
        goaway = wire.goaway(20)
        assert goaway is not None and goaway.last_stream_id == 1 and goaway.error_code == 0
        # the close frame came first, then the GOAWAY (the stream in flight finishes)
        before = wire.frames[:wire.frames.index(goaway)]
        ws.receive_data(b"".join(f.data for f in before if isinstance(f, DataFrame)))
        closes = [e for e in ws.events() if isinstance(e, CloseConnection)]
        assert [c.code for c in closes] == [1001]
        wire.send_frames(DataFrame(1, data=ws.send(closes[0].response()),
                                   flags=["END_STREAM"]))
        wire.response(1)  # the server's END_STREAM, after the close handshake
        assert wire.closed_within(10, keep=True)  # then the final GOAWAY, and the close
        assert [f.last_stream_id for f in wire.frames if isinstance(f, GoAwayFrame)] == [1, 1]
        wire.close()
    # well before the 60 s graceful timeout: the WebSockets did not hold the stop
    assert server.wait_exit(timeout=20) == 0
    codes = [line.split()[1] for line in events(events_path) if line.startswith("disconnect")]
    assert codes == ["1001", "1001"]


def test_a_websocket_counts_against_the_concurrent_streams(start_server):
    server = start_server(APP, "--workers", "1", "--http2-max-concurrent-streams", "2")

    def two_websockets() -> H2Wire:
        wire = H2Wire(server.port)
        for stream_id in (1, 3):
            raw_websocket(wire, stream_id)
        return wire

    wire = two_websockets()
    wire.request(5, "/")  # a third stream while two WebSockets are open: refused
    refused = wire.wait(lambda frames: [f for f in frames if isinstance(f, GoAwayFrame) or (
        isinstance(f, RstStreamFrame) and f.stream_id == 5)], what="the refusal")[0]
    assert refused.error_code in (1, 7)  # PROTOCOL_ERROR (h2's count), REFUSED_STREAM (ours)
    wire.close()
    wire = two_websockets()
    wire.send_frames(RstStreamFrame(1, error_code=8))  # one WebSocket ends
    wire.ping()
    wire.request(5, "/")
    assert wire.response(5)[0] == 200
    wire.close()


def test_a_client_that_keeps_its_window_shut_is_cut_after_the_send_timeout(start_server,
                                                                          tmp_path):
    events_path = tmp_path / "events"
    server = start_server(APP, "--workers", "1", "--send-timeout", "1",
                          "--ws-ping-interval", "0", env={"DUCK_TEST_EVENTS": str(events_path)})
    with H2WebSocketClient(server.port, timeout=60) as client:
        ws = client.connect("/send-stream?count=1000000&size=65536")
        client.streams[ws].reading = False  # read, but never reopen the window
        client.wait(lambda: client.goaways or client.closed, 30, "the connection's end")
        assert not client.goaways or client.goaways[0].error_code == 11  # ENHANCE_YOUR_CALM
    line = wait_event(events_path, "send raised after", timeout=30)
    assert int(line.split()[-1]) < 1000000

