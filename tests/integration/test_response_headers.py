"""--response-header with a real server and a real client: what is added, where, in what order."""

import http.client

import pytest

from .conftest import read_response, recv_all, running_server

pytestmark = pytest.mark.timeout(60)

HSTS = "Strict-Transport-Security:max-age=31536000; includeSubDomains"
ARGS = ["tests.apps.basic:app", "--workers", "1", "--response-header", HSTS,
        "--response-header", "X-Content-Type-Options:nosniff",
        "--response-header", "Content-Type:text/plain; charset=utf-8"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(ARGS, tmp_path_factory.mktemp("response-headers")) as server:
        yield server


def head_lines(server, request: bytes) -> list[str]:
    with server.connect() as sock:
        sock.sendall(request)
        head = recv_all(sock).partition(b"\r\n\r\n")[0]
    return head.decode("latin-1").split("\r\n")


def test_added_to_a_response_without_them_in_the_order_given(server):
    lines = head_lines(server, b"GET /slow?delay=0 HTTP/1.1\r\nHost: t\r\n"
                               b"Connection: close\r\n\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    names = [line.split(":", 1)[0].lower() for line in lines[1:]]
    added = ["strict-transport-security", "x-content-type-options", "content-type"]
    assert [name for name in names if name in added] == added
    assert "Strict-Transport-Security: max-age=31536000; includeSubDomains" in lines


def test_a_header_the_app_sent_wins(server):
    status, headers, body = server.request("POST", "/echo", body=b"abc")
    assert (status, body) == (200, b"abc")
    assert headers["content-type"] == "application/octet-stream"  # the app's, not ours
    assert headers["x-content-type-options"] == "nosniff"


def test_on_every_response_of_a_keep_alive_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for path in ("/slow?delay=0", "/stream?n=2", "/pid"):
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            assert response.getheader("strict-transport-security") == \
                "max-age=31536000; includeSubDomains"
            assert len(response.msg.get_all("x-content-type-options")) == 1
    finally:
        conn.close()


def test_on_the_500_of_a_failing_app(server):
    status, headers, _ = server.request("GET", "/raise-before")
    assert status == 500
    assert headers["x-content-type-options"] == "nosniff"


def test_not_on_the_servers_own_refusals(server):
    # A request the server refuses before any app sees it gets the server's plain answer.
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # no Host
        status, headers, _ = read_response(sock)
    assert status == 400
    assert "x-content-type-options" not in headers


def test_a_bad_value_stops_the_server_with_one_line(start_server):
    server = start_server("tests.apps.basic:app", "--response-header", "X-A:a\u0007b",
                          ready=False)
    assert server.wait_exit() == 1
    lines = server.log().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("duck-prefork: error: --response-header:")
