"""Request size limits (--limit-request-line/-fields/-field-size/-body) and --limit-concurrency,
against a real server: refused requests get their status and a close, nothing pipelined behind
them is answered, and the app is not called for what the server refuses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import app_calls, close_now, read_response, recv_all, wait_for

pytestmark = pytest.mark.timeout(120)

NEXT = b"GET /pipelined HTTP/1.1\r\nHost: t\r\n\r\n"


# --- helpers ----------------------------------------------------------------------------------

def exchange(server, raw: bytes) -> bytes:
    """Send `raw` on a new connection in one write; everything the server sends until it closes
    (recv_all fails the test by timeout if the server leaves the connection open)."""
    sock = server.connect()
    try:
        sock.sendall(raw)
        return recv_all(sock)
    finally:
        close_now(sock)


def statuses(data: bytes) -> list[int]:
    """The status codes of the responses in a byte stream (bodies here never hold 'HTTP/1.')."""
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]


def head_of(data: bytes) -> str:
    return data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()


def assert_refused(data: bytes, status: int) -> None:
    """One response, `status`, announced as the last on the connection; nothing after it."""
    assert statuses(data) == [status], data[:300]
    assert "connection: close" in head_of(data), data[:300]


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def chunked_post(path: str, pieces: list[bytes]) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + body)


def still_serving(server, calls: Path, worker: int) -> None:
    """The same worker answers a fresh request, and the app sees it."""
    status, _, body = server.request("GET", "/after")
    assert (status, body) == (200, b"ok")
    assert app_calls(calls)[-1] == "GET /after"
    assert server.worker_pids() == [worker]


# --- --limit-request-line -------------------------------------------------------------------------

@pytest.mark.parametrize("options", [(), ("--limit-request-line", "8190")],
                         ids=["default", "explicit-8190"])
def test_request_line_too_long_is_414_and_closes(serve, calls, options):
    server = serve(*options)
    worker = server.worker_pids()[0]
    data = exchange(server, get("/" + "a" * 8999) + NEXT)
    assert_refused(data, 414)  # the pipelined request behind it is not answered
    assert app_calls(calls) == []  # neither request reached the app
    still_serving(server, calls, worker)


def test_request_line_limit_boundary(serve, calls):
    server = serve("--limit-request-line", "100")
    # "GET " + target + " HTTP/1.1": 13 bytes besides the target
    sock = server.connect()
    sock.sendall(get("/" + "b" * 86))  # exactly 100 bytes: allowed
    assert read_response(sock)[:1] == (200,)
    sock.sendall(get("/" + "c" * 87) + NEXT)  # 101 bytes, on the same keep-alive connection
    rest = recv_all(sock)
    close_now(sock)
    assert_refused(rest, 414)
    assert app_calls(calls) == ["GET /" + "b" * 86]


# --- --limit-request-fields and --limit-request-field-size ------------------------------------

def test_too_many_header_fields_is_431(serve, calls):
    server = serve("--limit-request-fields", "10")
    worker = server.worker_pids()[0]
    nine = b"".join(b"X-Field-%d: v\r\n" % i for i in range(9))
    # Host + 9 fields = 10: allowed
    status, _, body = read_response_on_new(server, get("/ten", nine))
    assert (status, body) == (200, b"ok")
    # Host + 10 fields = 11: refused
    data = exchange(server, get("/eleven", nine + b"X-Field-9: v\r\n") + NEXT)
    assert_refused(data, 431)
    assert app_calls(calls) == ["GET /ten"]
    still_serving(server, calls, worker)


def test_header_field_too_large_is_431(serve, calls):
    server = serve("--limit-request-field-size", "100")
    worker = server.worker_pids()[0]
    # the size of a field is len(name) + len(": ") + len(value)
    status, _, body = read_response_on_new(server, get("/fits", b"X-Big: " + b"v" * 93 + b"\r\n"))
    assert (status, body) == (200, b"ok")  # 5 + 2 + 93 = 100 bytes: allowed
    data = exchange(server, get("/big", b"X-Big: " + b"v" * 193 + b"\r\n") + NEXT)  # 200 bytes
    assert_refused(data, 431)
    assert app_calls(calls) == ["GET /fits"]
    still_serving(server, calls, worker)


def read_response_on_new(server, raw: bytes):
    sock = server.connect()
    try:
        sock.sendall(raw)
        return read_response(sock)
    finally:
        close_now(sock)


# --- --limit-request-body ---------------------------------------------------------------------

def test_content_length_over_body_limit_is_413_before_the_app_is_called(serve, calls):
    server = serve("--limit-request-body", "1000")
    worker = server.worker_pids()[0]
    sock = server.connect()
    # Only the head is sent: the 413 must come without the server waiting for the body.
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
    data = recv_all(sock)
    close_now(sock)
    assert_refused(data, 413)
    # The app records a call before reading any body; the next request is the first it sees.
    still_serving(server, calls, worker)
    assert app_calls(calls) == ["GET /after"]


def test_expect_continue_over_body_limit_gets_413_not_100(serve, calls):
    server = serve("--limit-request-body", "1000")
    sock = server.connect()
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    data = recv_all(sock)
    close_now(sock)
    assert_refused(data, 413)  # and no "100 Continue" before it
    assert app_calls(calls) == []


def test_content_length_over_body_limit_with_its_body_sent(serve, calls):
    server = serve("--limit-request-body", "1000")
    worker = server.worker_pids()[0]
    data = exchange(server, post("/echo", b"z" * 1001) + NEXT)
    assert_refused(data, 413)
    still_serving(server, calls, worker)
    assert app_calls(calls) == ["GET /after"]


def test_chunked_body_over_limit_is_413_and_the_worker_keeps_serving(serve, calls):
    server = serve("--limit-request-body", "1000")
    worker = server.worker_pids()[0]
    # The head is fine, so the app is started; /echo reads the whole body before answering,
    # so the response has not started when the body passes the limit: a 413 is due.
    data = exchange(server, chunked_post("/echo", [b"q" * 400] * 3) + NEXT)
    assert_refused(data, 413)
    assert b"q" * 400 not in data
    assert "GET /pipelined" not in app_calls(calls)
    still_serving(server, calls, worker)
    assert "GET /pipelined" not in app_calls(calls)


def test_body_of_exactly_the_limit_is_accepted(serve, calls):
    server = serve("--limit-request-body", "1000")
    body = bytes(range(250)) * 4
    sock = server.connect()
    sock.sendall(post("/echo", body))
    assert read_response(sock)[::2] == (200, body)
    # chunked, on the same connection: the count starts again for each request
    sock.sendall(chunked_post("/echo", [body[:300], body[300:999], body[999:]]))
    assert read_response(sock)[::2] == (200, body)
    sock.sendall(post("/echo", b""))
    assert read_response(sock)[::2] == (200, b"")
    close_now(sock)
    assert app_calls(calls) == ["POST /echo"] * 3


# --- --limit-concurrency ----------------------------------------------------------------------

def test_limit_concurrency_answers_503_beyond_it(serve, calls, tmp_path):
    server = serve("--limit-concurrency", "2")
    worker = server.worker_pids()[0]
    release = tmp_path / "release"
    held = []
    for _ in range(2):
        sock = server.connect(timeout=30)
        sock.sendall(get(f"/hold?release={release}"))
        held.append(sock)
    wait_for(lambda: len(app_calls(calls)) == 2, what="two requests in the app")

    sock = server.connect()
    sock.sendall(get("/third"))
    status, headers, body = read_response(sock)
    assert status == 503, (status, body)
    assert headers.get("connection") == "close"
    assert recv_all(sock) == b""  # and the connection is closed
    close_now(sock)
    assert app_calls(calls) == [f"GET /hold?release={release}"] * 2  # /third never ran

    release.touch()
    for sock in held:
        assert read_response(sock, timeout=30)[::2] == (200, b"held")
        close_now(sock)
    server.wait_log(r"--limit-concurrency 2 reached: answered 1 requests? with 503")
    # below the limit again: served
    still_serving(server, calls, worker)
