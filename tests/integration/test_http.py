"""HTTP/1.1 and ASGI behaviour as a client sees it, over real sockets, with each parser."""

import json
import socket
import time

import pytest

from .conftest import PARSERS, read_response, recv_all, running_server, wait_for

pytestmark = pytest.mark.timeout(60)

APP = "tests.apps.basic:app"


@pytest.fixture(scope="module", params=PARSERS)
def server(request, tmp_path_factory):
    """One server per parser, shared by the module's tests."""
    with running_server([APP, "--workers", "1", "--keep-alive", "2", "--http", request.param],
                        tmp_path_factory.mktemp("http")) as server:
        yield server


def get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: test\r\n{extra}\r\n".encode()


def test_scope(server):
    status, headers, body = server.request(
        "GET", "/scope?a=1&b=%20", headers={"X-Custom": "Value"})
    scope = json.loads(body)
    assert status == 200
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == "/scope"
    assert scope["query_string"] == "a=1&b=%20"
    assert scope["root_path"] == ""
    assert ["x-custom", "Value"] in scope["headers"]
    assert ["host", f"127.0.0.1:{server.port}"] in scope["headers"]
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["state"]["booted_by"] == scope["pid"]  # the lifespan state of this worker


def test_path_is_percent_decoded_and_raw_path_is_not(server):
    sock = server.connect()
    sock.sendall(b"GET /sc%6fpe?x=%41 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    status, _, body = read_response(sock)
    scope = json.loads(body)
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == \
        ("/scope", "/sc%6fpe", "x=%41")


def test_absolute_form_target(server):
    sock = server.connect()
    sock.sendall(b"GET http://example.com/scope?q=1 HTTP/1.1\r\nHost: example.com\r\n"
                 b"Connection: close\r\n\r\n")
    scope = json.loads(read_response(sock)[2])
    assert (scope["path"], scope["query_string"]) == ("/scope", "q=1")


def test_root_path_prefixes_path(start_server):
    server = start_server(APP, "--workers", "1", "--root-path", "/api")
    # As behind a proxy that strips the /api prefix: the app sees the full path again.
    scope = json.loads(server.request("GET", "/scope")[2])
    assert scope["root_path"] == "/api"
    assert (scope["path"], scope["raw_path"]) == ("/api/scope", "/api/scope")


def test_keep_alive_serves_several_requests_on_one_connection(server):
    sock = server.connect()
    for _ in range(3):
        sock.sendall(get("/pid"))
        status, headers, body = read_response(sock)
        assert status == 200
        assert "connection" not in headers
    sock.close()


def test_idle_keep_alive_connection_is_closed_after_the_timeout(server):
    sock = server.connect()
    sock.sendall(get("/"))
    assert read_response(sock)[0] == 200
    started = time.monotonic()
    assert recv_all(sock, timeout=10) == b""  # the server closes: EOF
    assert time.monotonic() - started >= 1.0  # --keep-alive 2, swept once a second


def test_pipelined_requests_are_answered_in_order(server):
    sock = server.connect()
    sock.sendall(get("/slow?delay=0.3") + get("/stream?n=2") + get("/", "Connection: close\r\n"))
    data = recv_all(sock)
    first = data.index(b"slow")
    second = data.index(b"chunk 1")
    third = data.index(b"Hello, world!")
    assert first < second < third
    assert data.count(b"HTTP/1.1 200 OK") == 3


def test_chunked_request_body(server):
    sock = server.connect()
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"hello world")


def test_large_body_in_many_pieces(server):
    payload = bytes(range(256)) * 4096  # 1 MiB
    status, _, body = server.request("POST", "/echo", body=payload)
    assert status == 200 and body == payload


def test_expect_100_continue(server):
    sock = server.connect()
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    sock.settimeout(10)
    interim = sock.recv(4096)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(b"hello")
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"hello")


def test_no_100_continue_when_app_does_not_read_the_body(server):
    sock = server.connect()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"Hello, world!")


def test_head_has_headers_but_no_body(server):
    sock = server.connect()
    sock.sendall(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n" + get("/"))
    sock.settimeout(10)
    data = b""
    while data.count(b"Hello, world!") < 1:
        data += sock.recv(4096)
    head_response, get_response = data.split(b"HTTP/1.1 200 OK", 2)[1:]
    assert b"Content-Length: 13" in head_response
    assert head_response.endswith(b"\r\n\r\n")  # nothing after the head
    assert get_response.endswith(b"Hello, world!")


def test_http_1_0_closes_after_the_response(server):
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = recv_all(sock)
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"Connection: close" in data
    assert data.endswith(b"Hello, world!")


def test_http_1_0_streaming_response_is_close_delimited(server):
    sock = server.connect()
    sock.sendall(b"GET /stream?n=3 HTTP/1.0\r\n\r\n")
    data = recv_all(sock)
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"


def test_date_and_server_headers(server):
    _, headers, _ = server.request("GET", "/")
    assert headers["server"] == "duck-prefork"
    assert headers["date"].endswith(" GMT")


def test_streaming_response_is_chunked(server):
    sock = server.connect()
    sock.sendall(get("/stream?n=3"))
    status, headers, body = read_response(sock)
    assert headers["transfer-encoding"] == "chunked"
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"


def test_single_body_message_without_length_gets_content_length(server):
    _, headers, body = server.request("POST", "/echo", body=b"abc")
    assert headers["content-length"] == "3" and "transfer-encoding" not in headers


def test_connection_close_from_client_is_honoured(server):
    sock = server.connect()
    sock.sendall(get("/", "Connection: close\r\n"))
    data = recv_all(sock)
    assert b"Connection: close" in data and data.endswith(b"Hello, world!")


def test_app_exception_before_start_is_500_and_worker_keeps_serving(server):
    pid = server.request("GET", "/pid")[2]
    status, headers, body = server.request("GET", "/raise-before")
    assert status == 500
    assert headers["connection"] == "close"
    server.wait_log(r"exception in ASGI app")
    assert "ValueError: boom before start" in server.log()
    assert server.request("GET", "/pid")[2] == pid


def test_app_returning_without_response_is_500(server):
    assert server.request("GET", "/no-response")[0] == 500
    server.wait_log("returned without sending a response")


def test_app_exception_after_start_truncates_the_response(server):
    pid = server.request("GET", "/pid")[2]
    sock = server.connect()
    sock.sendall(get("/raise-after"))
    data = recv_all(sock)
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"Content-Length: 100" in head
    assert body == b"partial"  # the client sees a short body and a close, never padding
    server.wait_log("after the response started")
    assert server.request("GET", "/pid")[2] == pid


@pytest.mark.parametrize("path, message", [
    ("/double-start", "'http.response.start' sent twice"),
    ("/body-before-start", "'http.response.body' sent before 'http.response.start'"),
    ("/header-injection", "must not contain CR, LF"),
])
def test_broken_message_sequences_are_500_with_a_clear_error(server, path, message):
    status, headers, _ = server.request("GET", path)
    assert status == 500
    assert "x-injected" not in headers
    server.wait_log(message)


def test_http_disconnect_reaches_the_app(server, tmp_path):
    marker = tmp_path / "disconnected"
    sock = server.connect()
    sock.sendall(get(f"/disconnect?file={marker}"))
    sock.close()  # whether the request reached the app before or after, it must see the close
    wait_for(marker.exists, what="the app to see http.disconnect")
    assert marker.read_text() == "disconnected"


def test_body_not_read_by_the_app_is_skipped_on_keep_alive(server):
    sock = server.connect()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789"
                 + get("/pid"))
    assert read_response(sock)[2] == b"Hello, world!"
    status, _, body = read_response(sock)
    assert status == 200 and body.isdigit()


def test_malformed_request_gets_400_and_close(server):
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n" + get("/"))
    data = recv_all(sock)
    assert data.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"Connection: close" in data
    assert data.count(b"HTTP/1.1") == 1  # nothing after the bad request was parsed


def test_access_log(start_server, tmp_path):
    access = tmp_path / "access.log"
    server = start_server(APP, "--workers", "1", "--access-logfile", str(access))
    server.request("GET", "/?q=1")
    server.request("POST", "/echo", body=b"12345")
    lines = wait_for(lambda: access.exists() and len(access.read_text().splitlines()) >= 2
                     and access.read_text().splitlines(), what="access log lines")
    # The combined log format, then the duration in whole milliseconds.
    assert lines[0].startswith("127.0.0.1 - - [")
    assert '"GET /?q=1 HTTP/1.1" 200 13 "-" "-" ' in lines[0]
    assert '"POST /echo HTTP/1.1" 200 5 "-" "-" ' in lines[1]
    assert int(lines[1].split()[-1]) >= 0


def test_access_log_to_stdout(start_server):
    server = start_server(APP, "--workers", "1", "--access-logfile", "-")
    server.request("GET", "/pid")
    wait_for(lambda: '"GET /pid HTTP/1.1" 200' in server.stdout(), what="access line on stdout")


def test_keep_alive_0_closes_after_each_response(start_server, http_parser):
    server = start_server(APP, "--workers", "1", "--keep-alive", "0", "--http", http_parser)
    sock = server.connect()
    sock.sendall(get("/") + get("/"))
    data = recv_all(sock)
    assert data.count(b"HTTP/1.1 200 OK") == 1
    assert b"Connection: close" in data


def test_half_closed_client_still_gets_its_response(server):
    sock = server.connect()
    sock.sendall(get("/slow?delay=0.2"))
    sock.shutdown(socket.SHUT_WR)  # as `printf ... | nc -N` does
    data = recv_all(sock)
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"slow")
    assert b"Connection: close" in data


def test_chunked_body_with_requests_pipelined_behind_it(server):
    sock = server.connect()
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5;name=value\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"
                 + get("/") + b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    assert read_response(sock)[::2] == (200, b"hello")
    assert read_response(sock)[::2] == (200, b"Hello, world!")
    assert read_response(sock)[::2] == (200, b"hi")


def test_upgrade_the_server_does_not_take_is_plain_http_and_the_connection_goes_on(server):
    sock = server.connect()
    sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                 b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n" + get("/pid"))
    first, second = read_response(sock), read_response(sock)
    assert (first[0], second[0]) == (200, 200) and first[2] == second[2]
    sock.sendall(get("/"))  # after the responses: parsed as the next request too
    assert read_response(sock)[::2] == (200, b"Hello, world!")
