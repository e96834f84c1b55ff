"""--upstream against real upstreams: the legacy Django project under gunicorn (sync workers on
a unix socket and on loopback; gthread for keep-alive), a raw upstream that misbehaves on
purpose, and a WebSocket echo server behind a 101 tunnel. The migration example of the README
is the main server here: Django gets everything, except /api/v2, which the new ASGI app serves.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket

import pytest
from hyperframe.frame import DataFrame
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .conftest import Server, close_now, read_response, recv_all, wait_for
from .test_flow_control import MiB, rss, wait_stable
from .upstreams import gunicorn, raw_upstream, ws_echo_upstream

pytestmark = pytest.mark.timeout(180)

APP = "tests.apps.new_api:app"


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("upstream")


@pytest.fixture(scope="module")
def django_unix(tmp):
    upstream = gunicorn(tmp, f"unix:{tmp}/django.sock",
                        env={"DUCK_TEST_PROGRESS": str(tmp / "progress")})
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def django_tcp(tmp):
    upstream = gunicorn(tmp, "127.0.0.1:0")
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def django_keepalive(tmp):
    upstream = gunicorn(tmp, "127.0.0.1:0", worker_class="gthread", workers=1)
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def raw(tmp):
    upstream = raw_upstream(tmp)
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def ws_echo(tmp):
    upstream = ws_echo_upstream(tmp)
    yield upstream
    upstream.stop()


def refused_address() -> str:
    """An address nobody listens on (bound, never listened: connecting is refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def front(tmp, django_unix, django_tcp, django_keepalive, raw, ws_echo):
    """The migration example, plus routes to every other upstream of this module."""
    server = Server([
        APP, "--workers", "1", "--access-logfile", str(tmp / "access.log"),
        "--upstream", f"/={django_unix.address}",
        "--upstream", "/api/v2=app",
        "--upstream", f"/tcp/={django_tcp.address}/",
        "--upstream", f"/keepalive/={django_keepalive.address}/",
        "--upstream", f"/raw/={raw.address}/",
        "--upstream", f"/ws={ws_echo.address}",
        "--upstream", f"/nowhere={refused_address()}",
        "--upstream-timeout", "2",
        "--response-header", "X-Frame-Options:DENY",
    ], tmp)
    try:
        server.wait_ready()
        server.worker = server.worker_pids()[0]
        yield server
    finally:
        survivors = server.cleanup()
        assert not survivors, f"processes outlived their server: {survivors}"


def get(server, path: str, headers: dict | None = None, method: str = "GET",
        body: bytes | None = None):
    return server.request(method, path, body=body, headers=headers, timeout=30)


def echo(server, path: str, **kwargs) -> dict:
    status, _, body = get(server, path, **kwargs)
    assert status == 200, body
    return json.loads(body)


def still_serving(server) -> None:
    """The worker that met a failure serves everyone else: same pid, a page answered."""
    assert server.worker_pids() == [server.worker]
    status, _, body = get(server, "/")
    assert (status, body) == (200, b"legacy home\n")


# --- pages, headers, query strings, cookies -------------------------------------------------

def test_pages_pass_through_to_django_on_a_unix_socket(front):
    status, headers, body = get(front, "/")
    assert (status, body) == (200, b"legacy home\n")
    assert headers["content-type"] == "text/plain"
    status, _, body = get(front, "/page/about/")
    assert (status, body) == (200, b"legacy page about\n")
    status, headers, _ = get(front, "/page/about")  # Django's APPEND_SLASH redirect
    assert status == 301 and headers["location"] == "/page/about/"
    status, _, body = get(front, "/gone/")
    assert (status, body) == (410, b"gone\n")


def test_the_asgi_app_keeps_its_prefix(front):
    status, _, body = get(front, "/api/v2/users")
    assert status == 200 and json.loads(body) == {"served_by": "asgi", "path": "/api/v2/users"}
    status, _, body = get(front, "/api/v2")
    assert json.loads(body)["served_by"] == "asgi"
    # Whole segments only: /api/v2beta is not under /api/v2.
    status, _, body = get(front, "/api/v2beta/")
    assert status == 404 and b"served_by" not in body


def test_query_strings_and_request_headers(front):
    seen = echo(front, "/echo/?a=1&a=2&b=%20x&c=caf%C3%A9",
                headers={"X-Custom": "kept", "Accept-Language": "fr"})
    assert seen["method"] == "GET" and seen["path"] == "/echo/"
    assert seen["full_path"] == "/echo/?a=1&a=2&b=%20x&c=caf%C3%A9"
    assert seen["query"] == {"a": ["1", "2"], "b": [" x"], "c": ["café"]}
    headers = seen["headers"]
    assert headers["X-Custom"] == "kept" and headers["Accept-Language"] == "fr"
    assert headers["Host"] == f"127.0.0.1:{front.port}"  # the client's, unchanged
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == f"127.0.0.1:{front.port}"
    assert headers["Forwarded"] == f'for=127.0.0.1;proto=http;host="127.0.0.1:{front.port}"'


def test_post_form_body(front):
    seen = echo(front, "/echo/", method="POST", body=b"x=1&y=2",
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert seen["method"] == "POST" and seen["body_length"] == 7
    assert seen["body_sha256"] == hashlib.sha256(b"x=1&y=2").hexdigest()


def test_http2_request_bodies_pass_through(front):
    """HTTP/2 requests (h2c from a trusted peer) reach an HTTP/1.1 upstream: a body with a
    content-length as it is; one of unknown length chunked (which Django, reading by
    Content-Length only, sees as empty, as it does an HTTP/1.1 client's chunked body)."""
    from .h2wire import H2Wire

    wire = H2Wire(front.port)
    wire.send_frames(wire.headers(1, "/echo/", "POST", end=False,
                                  extra=[(b"content-length", b"7")]),
                     DataFrame(1, data=b"x=1&y=2", flags=["END_STREAM"]))
    wire.request(3, "/echo/", "POST", b"a=1&b=2" * 1000)
    status, _, data, _ = wire.response(1, timeout=30)
    seen = json.loads(data)
    assert status == 200 and seen["method"] == "POST" and seen["headers"]["Host"] == "localhost"
    assert seen["body_sha256"] == hashlib.sha256(b"x=1&y=2").hexdigest()
    status, _, data, _ = wire.response(3, timeout=30)
    seen = json.loads(data)
    assert status == 200 and seen["headers"]["Transfer-Encoding"] == "chunked"
    wire.close()


def test_cookies_both_ways(front):
    status, _, body = get(front, "/cookies/", headers={"Cookie": "a=1; b=two"})
    assert json.loads(body) == {"received": {"a": "1", "b": "two"}}
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    try:
        conn.request("GET", "/cookies/")
        response = conn.getresponse()
        response.read()
        cookies = response.msg.get_all("Set-Cookie")
    finally:
        conn.close()
    assert len(cookies) == 2
    assert any(c.startswith("session=abc123") and "HttpOnly" in c for c in cookies)
    assert any(c.startswith("theme=dark") for c in cookies)


def test_a_url_with_a_path_replaces_the_prefix(front):
    seen = echo(front, "/tcp/echo/?x=1")  # --upstream /tcp/=http://127.0.0.1:PORT/
    assert seen["path"] == "/echo/" and seen["full_path"] == "/echo/?x=1"


def test_response_header_rules_apply_to_upstream_responses(front):
    status, headers, _ = get(front, "/")
    assert headers["x-frame-options"] == "DENY"
    assert headers["server"] == "duck-prefork"  # gunicorn's own Server is not passed on
    assert len(headers["date"]) > 20
    status, headers, _ = get(front, "/gone/")
    assert status == 410 and headers["x-frame-options"] == "DENY"
    status, headers, _ = get(front, "/nowhere/")  # the server's own 502, as for an app's 500
    assert status == 502 and headers["x-frame-options"] == "DENY"


def test_hop_by_hop_response_fields_are_removed(front):
    status, headers, body = get(front, "/raw/hop")
    assert (status, body) == (200, b"hello")
    assert headers["x-kept"] == "yes"
    for name in ("x-secret", "keep-alive", "proxy-connection", "trailer", "upgrade"):
        assert name not in headers, name
    assert headers["server"] == "duck-prefork"


def test_hop_by_hop_request_fields_are_removed(front):
    sock = front.connect()
    try:
        sock.sendall(b"GET /raw/head HTTP/1.1\r\nHost: example.test\r\n"
                     b"Connection: keep-alive, X-Private\r\nX-Private: secret\r\n"
                     b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n"
                     b"X-Forwarded-Proto: https\r\nX-Visible: 1\r\n\r\n")
        status, _, head = read_response(sock)
    finally:
        close_now(sock)
    assert status == 200
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /head HTTP/1.1"
    names = [line.split(":")[0].lower() for line in lines[1:] if line]
    for name in ("x-private", "keep-alive", "te", "proxy-connection"):
        assert name not in names, head
    assert "x-visible: 1" in head.decode().lower()
    assert "host: example.test" in head.decode().lower()
    # 127.0.0.1 is a trusted proxy by default: its X-Forwarded-Proto is believed.
    assert "x-forwarded-proto: https" in head.decode().lower()


def test_forwarded_headers_from_an_untrusted_peer_are_replaced(start_server, raw, tmp_path):
    server = start_server(APP, "--workers", "1", "--no-proxy-headers",
                          "--upstream", f"/={raw.address}")
    sock = server.connect()
    try:
        sock.sendall(b"GET /head HTTP/1.1\r\nHost: h.test\r\nX-Forwarded-For: 203.0.113.9\r\n"
                     b"X-Forwarded-Proto: https\r\nForwarded: for=203.0.113.9\r\n\r\n")
        _, _, head = read_response(sock)
    finally:
        close_now(sock)
    text = head.decode().lower()
    assert "x-forwarded-for: 127.0.0.1\r\n" in text and "203.0.113.9" not in text
    assert "x-forwarded-proto: http\r\n" in text
    assert 'forwarded: for=127.0.0.1;proto=http;host="h.test"' in text or \
        "forwarded: for=127.0.0.1;proto=http;host=h.test" in text


def test_forwarded_headers_from_a_trusted_peer_are_appended_to(front):
    sock = front.connect()
    try:
        sock.sendall(b"GET /raw/head HTTP/1.1\r\nHost: h.test\r\nX-Forwarded-For: 203.0.113.9\r\n"
                     b"\r\n")
        _, _, head = read_response(sock)
    finally:
        close_now(sock)
    assert "x-forwarded-for: 203.0.113.9, 127.0.0.1\r\n" in head.decode().lower()


def test_access_log_names_the_upstream_and_its_time(front, tmp, django_unix):
    get(front, "/page/logged/")
    get(front, "/api/v2/logged")
    log = tmp / "access.log"
    line = wait_for(lambda: re.search(r'.*"GET /page/logged/ HTTP/1.1" 200 .*', log.read_text()),
                    what="the access log line")[0]
    assert re.search(rf" upstream={re.escape(django_unix.address)} upstream_time=\d+\.\d+$",
                     line), line
    app_line = wait_for(lambda: re.search(r'.*"GET /api/v2/logged HTTP/1.1" 200 .*',
                                          log.read_text()), what="the app's line")[0]
    assert "upstream=" not in app_line


# --- bodies both ways -----------------------------------------------------------------------

def test_10_mib_download_to_a_slow_reader_keeps_the_worker_small(front, tmp):
    size = 10 * MiB
    progress = tmp / "progress"
    status, _, body = get(front, f"/download/?size={MiB}")  # warm-up
    assert (status, len(body)) == (200, MiB)
    baseline = rss(front.worker)
    progress.unlink(missing_ok=True)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", front.port))
    try:
        sock.sendall(f"GET /download/?size={size} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        peak = baseline

        def sample():
            nonlocal peak
            peak = max(peak, rss(front.worker))
            try:
                return int(progress.read_text())
            except (FileNotFoundError, ValueError):
                return None

        # The reader has stopped: the upstream is slowed down to it, and what the worker
        # holds meanwhile stays small.
        wait_stable(sample, settle=1.0, what="the upstream's progress")
        assert peak - baseline < 4 * MiB, f"worker grew by {(peak - baseline) / MiB:.1f} MiB"
        data = first
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            if len(data) >= len(first) and b"\r\n\r\n" in data \
                    and len(data) - data.index(b"\r\n\r\n") - 4 >= size:
                break
    finally:
        close_now(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert f"content-length: {size}".encode() in head.lower()
    expected = hashlib.sha256()
    block = bytes(range(256)) * 256
    for start in range(0, size, len(block)):
        expected.update(block[:min(len(block), size - start)])
    assert hashlib.sha256(body).hexdigest() == expected.hexdigest()


def test_unread_download_stops_the_upstream(front, tmp):
    """64 MiB to a client that reads nothing: more than the kernel's buffers on the way hold,
    so the upstream must have been stopped (it has not sent everything), and the worker has
    not taken the difference."""
    size = 64 * MiB
    progress = tmp / "progress"
    progress.unlink(missing_ok=True)
    baseline = rss(front.worker)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", front.port))
    peak = baseline
    try:
        sock.sendall(f"GET /download/?size={size} HTTP/1.1\r\nHost: t\r\n\r\n".encode())

        def sample():
            nonlocal peak
            peak = max(peak, rss(front.worker))
            try:
                return int(progress.read_text())
            except (FileNotFoundError, ValueError):
                return None

        sent = wait_stable(sample, settle=1.0, what="the upstream's progress")
    finally:
        close_now(sock)
    assert sent < size
    assert peak - baseline < 8 * MiB, f"worker grew by {(peak - baseline) / MiB:.1f} MiB"
    still_serving(front)


def test_10_mib_upload_arrives_whole(front):
    body = os.urandom(10 * MiB)
    status, _, answer = get(front, "/upload/", method="POST", body=body,
                            headers={"Content-Type": "application/octet-stream"})
    assert status == 200
    assert json.loads(answer) == {"sha256": hashlib.sha256(body).hexdigest(),
                                  "length": len(body)}


def test_an_upstream_answering_before_reading_the_body_is_passed_on(start_server, raw):
    """An upstream that answers early and reads no more of a big upload: its answer goes to
    the client (with no --upstream-timeout, waiting for the upload to drain would be for
    ever)."""
    server = start_server(APP, "--workers", "1", "--upstream", f"/={raw.address}",
                          "--upstream-timeout", "0")
    status, _, body = server.request("POST", "/early", body=os.urandom(16 * MiB), timeout=30)
    assert (status, body) == (413, b"too large\n")
    assert server.request("GET", "/ok")[0] == 200


# --- the pool -------------------------------------------------------------------------------

def test_keep_alive_pool_uses_few_connections(front):
    """gunicorn's gthread worker keeps connections alive: 100 requests, a couple of them."""
    ports = set()
    for _ in range(50):
        ports.add(echo(front, "/keepalive/echo/")["remote_port"])
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    try:
        for _ in range(50):
            conn.request("GET", "/keepalive/echo/")
            ports.add(json.loads(conn.getresponse().read())["remote_port"])
    finally:
        conn.close()
    assert len(ports) <= 3, ports


def raw_stats(server) -> dict:
    status, _, body = get(server, "/raw/stats")
    assert status == 200
    return json.loads(body)


def test_raw_upstream_pool_and_concurrency(front):
    before = raw_stats(front)["connections"]
    for _ in range(100):
        assert get(front, "/raw/ok")[0] == 200
    assert raw_stats(front)["connections"] - before <= 2


def test_idempotent_request_is_retried_once_on_a_fresh_connection(start_server, tmp_path):
    upstream = raw_upstream(tmp_path, "raw-retry")
    try:
        server = start_server(APP, "--workers", "1", "--upstream", f"/={upstream.address}")
        assert server.request("GET", "/ok")[0] == 200  # opens a connection; it stays idle
        # /flaky closes a reused connection without answering: sent again on a new one.
        status, _, body = server.request("GET", "/flaky")
        assert (status, body) == (200, b"ok\n")
        assert json.loads(server.request("GET", "/stats")[2])["connections"] == 2
        # POST is not idempotent: not sent again, 502.
        status, _, _ = server.request("POST", "/flaky", body=b"x")
        assert status == 502
        assert json.loads(server.request("GET", "/stats")[2])["connections"] == 3
    finally:
        upstream.stop()


def test_max_connections_queues_requests(start_server, tmp_path, django_tcp):
    """--upstream-max-connections 1 with four slow requests at once: one at a time, all 200."""
    from concurrent.futures import ThreadPoolExecutor

    server = start_server(APP, "--workers", "1", "--upstream", f"/={django_tcp.address}",
                          "--upstream-max-connections", "1")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: server.request("GET", "/slow-head/?s=0.3",
                                                         timeout=30)[0], range(4)))
    assert results == [200] * 4


# --- failures -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/nowhere/", "/raw/reset", "/raw/close", "/raw/broken",
                                  "/raw/garbage", "/raw/bare-lf", "/raw/folded",
                                  "/raw/both-framing"])
def test_refused_reset_or_broken_upstream_is_502(front, path):
    status, headers, body = get(front, path)
    assert status == 502 and body == b"Bad Gateway\n"
    assert headers["connection"] == "close"
    still_serving(front)


def test_no_response_head_within_the_timeout_is_504(front):
    status, _, body = get(front, "/raw/never")  # --upstream-timeout 2
    assert (status, body) == (504, b"Gateway Timeout\n")
    still_serving(front)
    status, _, _ = get(front, "/slow-head/?s=4")  # Django's view takes longer than that
    assert status == 504
    still_serving(front)


def test_upstream_dying_mid_body_closes_the_client_connection(front, django_unix):
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    try:
        conn.request("GET", "/die-mid-body/")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("content-length") == str(4 * 65536)
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    finally:
        conn.close()
    # gunicorn replaces its dead worker; the front served everyone else throughout.
    still_serving(front)


# --- 101 tunnels ----------------------------------------------------------------------------

def test_websocket_upgrade_is_tunnelled(front):
    with connect(f"ws://127.0.0.1:{front.port}/ws/chat", open_timeout=10) as ws:
        for message in ("hello", "x" * 100_000, "again"):
            ws.send(message)
            assert ws.recv(timeout=10) == message
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=10) == b"\x00\x01binary"
        ws.send("close")  # the upstream closes: its close frame comes through the tunnel
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1000
    still_serving(front)
    log = front.log_path.parent / "access.log"
    wait_for(lambda: re.search(r'"GET /ws/chat HTTP/1.1" 101 - "[^"]*" "[^"]*" \d+ upstream=http://',
                               log.read_text()), what="the 101's access log line")


def test_tunnel_idle_timeout_closes_both_ends(start_server, ws_echo):
    server = start_server(APP, "--workers", "1", "--upstream", f"/={ws_echo.address}",
                          "--upstream-tunnel-timeout", "1")
    with connect(f"ws://127.0.0.1:{server.port}/", open_timeout=10, ping_interval=None) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "hi"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=15)  # nothing either way: the tunnel is closed for us


def test_tunnels_are_closed_on_drain(start_server, ws_echo):
    server = start_server(APP, "--workers", "1", "--upstream", f"/={ws_echo.address}",
                          "--graceful-timeout", "30")
    with connect(f"ws://127.0.0.1:{server.port}/", open_timeout=10, ping_interval=None) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "hi"
        server.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=20)
    assert server.wait_exit(25) == 0
    assert "graceful timeout" not in server.log()  # the drain did not wait for the tunnel


def test_invalid_upstream_option_is_one_line(start_server):
    server = start_server("--upstream", "/x=https://example.com", ready=False)
    assert server.wait_exit(30) == 1
    assert re.search(r"--upstream: https:// upstreams are not supported", server.log())




def test_head_expect_continue_and_http_1_0(front):
    status, headers, body = get(front, "/page/head/", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == str(len(b"legacy page head\n"))
    sock = front.connect()
    try:
        sock.sendall(b"POST /echo/ HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        status, _, body = read_response(sock)
        assert status == 200 and json.loads(body)["body_sha256"] == \
            hashlib.sha256(b"hello").hexdigest()
        assert "Expect" not in json.loads(body)["headers"]
    finally:
        close_now(sock)
    sock = front.connect()
    try:
        sock.sendall(b"GET /page/old/ HTTP/1.0\r\n\r\n")
        data = recv_all(sock)
    finally:
        close_now(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"legacy page old\n")


def test_keep_alive_client_connection_survives_upstream_close(front):
    """gunicorn's sync worker closes after each response: the client's connection stays."""
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    try:
        for name in ("a", "b", "c"):
            conn.request("GET", f"/page/{name}/")
            response = conn.getresponse()
            assert response.read() == f"legacy page {name}\n".encode()
            assert response.getheader("connection") is None
    finally:
        conn.close()
