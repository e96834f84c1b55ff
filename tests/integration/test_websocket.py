"""WebSockets end to end: a real server, the `websockets` client package, and a raw-socket client
(wsproto as the client side) where a test needs a client that misbehaves or stops reading. The
tests of the shared server run once per parser (--http): the upgrade leaves it differently."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import zlib
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from .conftest import PARSERS, close_now, read_response, recv_all, running_server, wait_for
from .test_flow_control import MAX_GROWTH, MiB, rss, wait_stable

pytestmark = pytest.mark.timeout(90)

APP = "tests.apps.ws:app"
MAX_SIZE = 2 * MiB


@pytest.fixture(scope="module", params=PARSERS)
def parser(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def events_file(tmp_path_factory, parser) -> Path:
    return tmp_path_factory.mktemp(f"ws-events-{parser}") / "events"


@pytest.fixture(scope="module")
def server(tmp_path_factory, events_file, parser):
    os.environ["DUCK_TEST_EVENTS"] = str(events_file)  # inherited by the server it starts
    try:
        with running_server([APP, "--workers", "1", "--ws-max-size", str(MAX_SIZE),
                             "--http", parser],
                            tmp_path_factory.mktemp("ws-server")) as running:
            yield running
    finally:
        del os.environ["DUCK_TEST_EVENTS"]


def url(server, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def events(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_event(path: Path, prefix: str, timeout: float = 15.0) -> str:
    def found():
        return next((line for line in events(path) if line.startswith(prefix)), None)

    return wait_for(found, timeout, f"app event {prefix!r}")


# --- a raw client -------------------------------------------------------------------------

def handshake(sock: socket.socket, path: str, extra: bytes = b"") -> tuple[int, bytes]:
    """Send an upgrade request; returns (status, bytes read after the response head)."""
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
                 % (path.encode(), key, extra))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed during the handshake: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), rest


def read_close_code(sock: socket.socket, already: bytes = b"") -> int | None:
    """Read frames until the server's close frame; returns its code (None: closed without)."""
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(already)
    while True:
        for event in client.events():
            if isinstance(event, CloseConnection):
                return event.code
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return None
        if not data:
            return None
        client.receive_data(data)


# --- the protocol -------------------------------------------------------------------------

def test_echo_text_and_binary_with_subprotocol_and_extra_headers(server):
    with connect(url(server, "/echo"), subprotocols=["superchat", "chat"]) as ws:
        assert ws.subprotocol == "superchat"
        assert ws.response.headers["x-accepted-by"] == "ws-test-app"
        assert ws.response.headers["server"] == "duck-prefork" and ws.response.headers["date"]
        ws.send("hello")
        assert ws.recv() == "hello"
        ws.send(b"\x00\x01\xff")
        assert ws.recv() == b"\x00\x01\xff"
        ws.send("")
        assert ws.recv() == ""


def test_no_subprotocol_when_none_is_agreed(server):
    with connect(url(server, "/echo"), subprotocols=["unknown"]) as ws:
        assert ws.subprotocol is None
        ws.send("x")
        assert ws.recv() == "x"


def test_large_and_fragmented_messages_are_reassembled(server):
    with connect(url(server, "/echo"), max_size=None) as ws:
        big = os.urandom(MAX_SIZE)  # exactly the limit: allowed
        ws.send(big)
        assert ws.recv() == big
        ws.send(["é" * 1000, "part two", "", "end"])  # one text message in four frames
        assert ws.recv() == "é" * 1000 + "part two" + "end"
        ws.send([b"a" * 70000, b"b" * 70000])
        assert ws.recv() == b"a" * 70000 + b"b" * 70000


def test_message_over_max_size_closes_with_1009(server, events_file):
    with connect(url(server, "/echo"), max_size=None, compression=None) as ws:
        ws.send(b"x" * (MAX_SIZE + 1))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert closed.value.rcvd.code == 1009
    assert wait_event(events_file, "disconnect 1009")


def test_ping_is_answered(server):
    with connect(url(server, "/echo")) as ws:
        assert ws.ping(b"are you there").wait(10)


@pytest.mark.parametrize("compression, negotiated", [("deflate", True), (None, False)])
def test_per_message_deflate_only_when_the_client_offers_it(server, compression, negotiated):
    with connect(url(server, "/echo"), compression=compression) as ws:
        header = ws.response.headers.get("sec-websocket-extensions", "")
        assert ("permessage-deflate" in header) is negotiated
        text = "compressible " * 5000
        ws.send(text)
        assert ws.recv() == text


def test_scope(server):
    with connect(url(server, "/scope?a=1&b=%20"), subprotocols=["chat"]) as ws:
        scope = json.loads(ws.recv())
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/scope" and scope["raw_path"] == "/scope"
    assert scope["query_string"] == "a=1&b=%20"
    assert scope["subprotocols"] == ["chat"]
    assert scope["root_path"] == ""
    assert scope["http_version"] == "1.1"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert scope["client"][0] == "127.0.0.1" and scope["server"] == ["127.0.0.1", server.port]
    assert isinstance(scope["state"], dict)
    assert ["sec-websocket-protocol", "chat"] in scope["headers"]
    assert "method" not in scope


def test_close_before_accept_is_a_403(server):
    with pytest.raises(InvalidStatus) as refused:
        connect(url(server, "/reject"))
    assert refused.value.response.status_code == 403


def test_denial_response_is_the_apps_own(server):
    with pytest.raises(InvalidStatus) as refused:
        connect(url(server, "/deny"))
    response = refused.value.response
    assert response.status_code == 401
    assert response.headers["x-denied"] == "yes"
    assert response.headers["date"] and response.headers["connection"] == "close"
    assert bytes(response.body) == b"denied: no token"


def test_app_error_before_accept_is_a_500_logged_once(server):
    with pytest.raises(InvalidStatus) as refused:
        connect(url(server, "/raise-before-accept"))
    assert refused.value.response.status_code == 500
    server.wait_log("websocket app exploded before accept")
    assert server.log().count("exception in ASGI app (WebSocket /raise-before-accept)") == 1


def test_app_returning_without_accept_is_a_500(server):
    with pytest.raises(InvalidStatus) as refused:
        connect(url(server, "/return-without-accept"))
    assert refused.value.response.status_code == 500
    server.wait_log("returned without accepting or closing the WebSocket")


def test_app_error_after_accept_closes_with_1011(server):
    with connect(url(server, "/raise-after-accept")) as ws:
        ws.send("go")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert closed.value.rcvd.code == 1011
    server.wait_log("websocket app exploded after accept")
    assert server.log().count("exception in ASGI app (WebSocket /raise-after-accept)") == 1


def test_close_codes_both_ways(server, events_file):
    with connect(url(server, "/close-after-accept")) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "done here")

    with connect(url(server, "/echo")) as ws:
        ws.send("close-4000")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "asked to")

    with connect(url(server, "/echo")) as ws:
        ws.close(4321, "client says bye")
    assert wait_event(events_file, "disconnect 4321")


KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"


@pytest.mark.parametrize("request_line, rest, status", [
    (b"GET /echo HTTP/1.1", b"Sec-WebSocket-Version: 13\r\n\r\n", 400),  # no key
    (b"GET /echo HTTP/1.1", KEY + b"Sec-WebSocket-Version: 8\r\n\r\n", 426),
    (b"GET /echo HTTP/1.1", KEY + b"\r\n", 426),  # no version
    (b"GET /echo HTTP/1.1", b"Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n",
     400),  # a key of 5 bytes, not 16
    (b"GET /echo HTTP/1.0", KEY + b"Sec-WebSocket-Version: 13\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1", KEY + b"Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n",
     400),
    (b"GET /echo HTTP/1.1", KEY + b"Sec-WebSocket-Version: 13\r\nContent-Length: 4\r\n\r\n"
     b"body", 400),
])
def test_bad_handshakes_are_refused_before_the_app(server, events_file, request_line, rest,
                                                   status):
    accepted_before = [line for line in events(events_file) if line.startswith("accepted")]
    with server.connect() as sock:
        sock.sendall(b"%s\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n%s"
                     % (request_line, rest))
        data = recv_all(sock)  # answered, then closed
    assert data.startswith(b"HTTP/1.1 %d " % status), data
    head = data.partition(b"\r\n\r\n")[0].lower()
    assert b"\r\nconnection: close" in head
    assert (b"\r\nsec-websocket-version: 13" in head) is (status == 426)
    with connect(url(server, "/echo")) as ws:  # the worker serves on; the app never saw them
        ws.send("next")
        assert ws.recv() == "next"
    accepted = [line for line in events(events_file) if line.startswith("accepted")]
    assert len(accepted) == len(accepted_before) + 1


def test_handshake_tokens_are_matched_as_tokens(server):
    with server.connect() as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: WebSocket\r\n"
                     b"Connection: keep-alive, upgrade\r\n%sSec-WebSocket-Version: 13\r\n\r\n"
                     % KEY)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 101 "), data


def test_malformed_frames_close_the_connection_and_the_worker_lives(server):
    pid = server.worker_pids()[0]
    with server.connect() as sock:
        status, rest = handshake(sock, "/echo")
        assert status == 101
        sock.sendall(b"\x81\x05hello")  # an unmasked client frame: a protocol error (1002)
        assert read_close_code(sock, rest) == 1002
    with connect(url(server, "/echo")) as ws:
        ws.send("still here")
        assert ws.recv() == "still here"
    assert server.worker_pids() == [pid]


def test_frames_sent_with_the_handshake_are_not_lost(server):
    client = Connection(ConnectionType.CLIENT)
    frame = client.send(TextMessage(data="early bird"))
    with server.connect() as sock:
        key = base64.b64encode(os.urandom(16))
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n%s" % (key, frame))
        data = b""
        while True:
            data += sock.recv(65536)
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                client.receive_data(rest)
                texts = [e.data for e in client.events() if isinstance(e, TextMessage)]
                if texts:
                    break
    assert head.startswith(b"HTTP/1.1 101 ") and texts == ["early bird"]


# --- flow control -------------------------------------------------------------------------

def test_a_client_that_does_not_read_stalls_the_apps_send(server, events_file):
    pid = server.worker_pids()[0]
    baseline = rss(pid)
    count, size = 2048, 65536  # 128 MiB offered
    with server.connect(timeout=60) as sock:
        status, _ = handshake(sock, f"/send-stream?count={count}&size={size}")
        assert status == 101

        def sent() -> int | None:
            lines = [line for line in events(events_file) if line.startswith("sent ")]
            return int(lines[-1].split()[-1]) if lines else None

        stalled_at = wait_stable(sent, what="the messages the app has sent")
        assert stalled_at < count, "the app sent everything to a client that reads nothing"
        assert rss(pid) - baseline < MAX_GROWTH
        close_now(sock)
    assert wait_event(events_file, "send raised after")


def test_an_app_that_does_not_receive_stops_reading_and_loses_nothing(server, events_file,
                                                                      tmp_path):
    pid = server.worker_pids()[0]
    baseline = rss(pid)
    release = tmp_path / "release"
    client = Connection(ConnectionType.CLIENT)
    frame = client.send(BytesMessage(data=b"m" * 65536))
    offered = 1024  # 64 MiB
    with server.connect(timeout=60) as sock:
        status, _ = handshake(sock, f"/no-receive?release={release}")
        assert status == 101
        sock.setblocking(False)
        written, messages = 0, 0
        pending = b""

        def push() -> int:
            nonlocal written, messages, pending
            while messages < offered:
                if not pending:
                    pending = frame
                try:
                    n = sock.send(pending)
                except BlockingIOError:
                    return written
                written += n
                pending = pending[n:]
                if not pending:
                    messages += 1
            return written

        accepted = wait_stable(push, what="the bytes the server takes in")
        assert messages < offered, "the server read 64 MiB the app did not ask for"
        assert rss(pid) - baseline < MAX_GROWTH
        sock.setblocking(True)
        sock.settimeout(60)
        release.touch()  # the app reads now: the rest goes through
        if pending:
            sock.sendall(pending)  # finish the frame in flight
            messages += 1
        sock.sendall(client.send(CloseConnection(code=1000)))
        assert read_close_code(sock) == 1000
    assert wait_event(events_file, f"received {messages} then disconnect 1000"), accepted


# --- servers with their own options -------------------------------------------------------

def test_ws_none_answers_upgrade_requests_as_plain_http(start_server, http_parser):
    server = start_server(APP, "--workers", "1", "--ws", "none", "--http", http_parser)
    with server.connect() as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        status, _, body = read_response(sock)
        assert (status, body) == (200, b"plain HTTP, upgrade ignored")
        sock.sendall(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n")  # the connection goes on
        status, _, body = read_response(sock)
        assert (status, body) == (200, b"plain HTTP")


def test_deflate_can_be_turned_off(start_server):
    server = start_server(APP, "--workers", "1", "--ws-per-message-deflate", "false")
    with connect(url(server, "/echo"), compression="deflate") as ws:
        assert "sec-websocket-extensions" not in ws.response.headers
        ws.send("plain")
        assert ws.recv() == "plain"


def test_a_peer_that_does_not_answer_pings_is_closed(start_server, tmp_path):
    events_path = tmp_path / "events"
    server = start_server(APP, "--workers", "1", "--ws-ping-interval", "1",
                          "--ws-ping-timeout", "1", env={"DUCK_TEST_EVENTS": str(events_path)})
    with server.connect(timeout=30) as sock:
        status, _ = handshake(sock, "/echo")
        assert status == 101
        # Never read, never answer: the server's pings go unanswered.
        line = wait_event(events_path, "disconnect ")
    assert line.split()[1] == "1011"
    with connect(url(server, "/echo"), ping_interval=None) as ws:  # a live client stays
        ws.send("alive")
        assert ws.recv() == "alive"


def test_sigterm_closes_websockets_with_1001_and_the_app_hears_it(start_server, tmp_path):
    events_path = tmp_path / "events"
    server = start_server(APP, "--workers", "2", "--graceful-timeout", "60",
                          env={"DUCK_TEST_EVENTS": str(events_path)})
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(connect(url(server, "/echo"))) for _ in range(4)]
        for ws in sockets:
            ws.send("before stop")
            assert ws.recv() == "before stop"
        server.send_signal(signal.SIGTERM)
        for ws in sockets:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=20)
            assert closed.value.rcvd.code == 1001
    # well before the 60 s graceful timeout: the WebSockets did not hold the stop
    assert server.wait_exit(timeout=20) == 0
    codes = [line.split()[1] for line in events(events_path) if line.startswith("disconnect")]
    assert codes == ["1001"] * 4


def test_a_client_ignoring_the_close_cannot_hold_a_stop_past_the_graceful_timeout(
        start_server):
    server = start_server(APP, "--workers", "1", "--graceful-timeout", "2")
    with server.connect(timeout=30) as sock:
        status, _ = handshake(sock, "/echo")
        assert status == 101
        server.send_signal(signal.SIGTERM)  # we read nothing, answer nothing
        assert server.wait_exit(timeout=20) == 0
    server.wait_log("graceful timeout|did not answer our close frame")


def test_hup_moves_websocket_clients_to_new_workers(start_server, tmp_path):
    events_path = tmp_path / "events"
    server = start_server(APP, "--workers", "1", env={"DUCK_TEST_EVENTS": str(events_path)})
    old = server.worker_pids()
    with connect(url(server, "/echo")) as ws:
        ws.send("x")
        assert ws.recv() == "x"
        server.send_signal(signal.SIGHUP)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=20)
    assert closed.value.rcvd.code == 1001
    wait_for(lambda: set(server.worker_pids()).isdisjoint(old), 20, "the old worker to go")
    with connect(url(server, "/echo")) as ws:
        ws.send("on the new worker")
        assert ws.recv() == "on the new worker"


def test_handshakes_are_in_the_access_log(start_server, tmp_path):
    access = tmp_path / "access.log"
    server = start_server(APP, "--workers", "1", "--access-logfile", str(access))
    with connect(url(server, "/echo")) as ws:
        ws.send("x")
        assert ws.recv() == "x"
    with pytest.raises(InvalidStatus):
        connect(url(server, "/reject"))
    with pytest.raises(InvalidStatus):
        connect(url(server, "/deny"))
    lines = wait_for(lambda: access.exists() and len(access.read_text().splitlines()) >= 3
                     and access.read_text().splitlines(), what="three access log lines")
    assert [line.split('"')[1] for line in lines] == [
        "GET /echo HTTP/1.1", "GET /reject HTTP/1.1", "GET /deny HTTP/1.1"]
    assert [line.split('"')[2].split()[0] for line in lines] == ["101", "403", "401"]


# --- bounds: a hostile or stuck peer ---------------------------------------------------------

def peak_memory(pid: int) -> int:
    """The worker's resident high-water mark (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def deflate_bomb(inflated: int, fragments: int) -> bytes:
    """One binary message of `inflated` zero bytes, permessage-deflated, as `fragments`
    masked frames (the mask key is 0, which leaves the payload as it is)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MiB)
    frames = []
    for i in range(fragments):
        payload = b"".join(compressor.compress(zeros)
                           for _ in range(inflated // MiB // fragments))
        payload += compressor.flush(zlib.Z_SYNC_FLUSH)
        last = i == fragments - 1
        if last:
            payload = payload[:-4]  # RFC 7692 7.2.1: the empty block's tail is not sent
        first_byte = (0x80 if last else 0) | (0x42 if i == 0 else 0x00)  # FIN, RSV1 + binary
        length = len(payload)  # masked (0x80), in the shortest form RFC 6455 5.2 allows
        if length < 126:
            head = bytes([first_byte, 0x80 | length])
        elif length < 65536:
            head = bytes([first_byte, 0x80 | 126]) + length.to_bytes(2, "big")
        else:
            head = bytes([first_byte, 0x80 | 127]) + length.to_bytes(8, "big")
        frames.append(head + bytes(4) + payload)
    return b"".join(frames)


@pytest.mark.parametrize("fragments", [1, 16])
def test_a_deflate_bomb_is_closed_with_1009_and_never_inflated(start_server, fragments):
    server = start_server(APP, "--workers", "1")  # the default --ws-max-size, 16 MiB
    pid = server.worker_pids()[0]
    with connect(url(server, "/echo"), compression="deflate") as ws:  # warm up the worker
        ws.send("compressible " * 1000)
        assert ws.recv() == "compressible " * 1000
    before = peak_memory(pid)
    bomb = deflate_bomb(200 * MiB, fragments)
    assert len(bomb) < 400_000  # 200 MiB inflated
    with server.connect(timeout=60) as sock:
        status, rest = handshake(sock, "/echo", b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
        assert status == 101
        with contextlib.suppress(OSError):  # the server may close before it has read it all
            sock.sendall(bomb)
        assert read_close_code(sock, rest) == 1009
    growth = peak_memory(pid) - before
    print(f"deflate bomb in {fragments} frames: worker peak memory grew {growth / MiB:.1f} MiB")
    assert growth < 100 * MiB
    with connect(url(server, "/echo"), compression="deflate") as ws:  # the worker serves on
        ws.send("after the bomb")
        assert ws.recv() == "after the bomb"


def test_a_handshake_the_app_leaves_undecided_is_answered_500(start_server, tmp_path):
    events_path = tmp_path / "events"
    server = start_server(APP, "--workers", "1", "--ws-accept-timeout", "1",
                          env={"DUCK_TEST_EVENTS": str(events_path)})
    with pytest.raises(InvalidStatus) as refused:
        connect(url(server, "/never-accept"), open_timeout=60)
    assert refused.value.response.status_code == 500
    wait_event(events_path, "never-accept cancelled")  # the app does not linger
    lines = [line for line in server.log().splitlines() if "--ws-accept-timeout" in line]
    assert len(lines) == 1 and "/never-accept" in lines[0], server.log()
    with connect(url(server, "/echo")) as ws:
        ws.send("next")
        assert ws.recv() == "next"


def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(start_server, tmp_path):
    events_path = tmp_path / "events"
    server = start_server(APP, "--workers", "1", "--send-timeout", "1",
                          "--ws-ping-interval", "0", env={"DUCK_TEST_EVENTS": str(events_path)})
    with server.connect(timeout=60) as sock:
        status, _ = handshake(sock, "/send-stream?count=1000000&size=65536")
        assert status == 101
        # We read nothing more: the app's send() stalls, and then raises once we are dropped.
        line = wait_event(events_path, "send raised after", timeout=60)
    assert int(line.split()[-1]) < 1000000
