"""Connection timeouts against a real server: --header-timeout (408 for a client that never
completes its first head, a plain close on a keep-alive connection, slowloris), --keep-alive
(idle connections only) and --send-timeout (a client that stops reading its response).

Every wait is a wait_for with a deadline on something observable; nothing asserts how fast."""

from __future__ import annotations

import select
import socket
import time

import psutil
import pytest

from .conftest import app_calls, close_now, read_response, recv_all, wait_for

pytestmark = pytest.mark.timeout(120)



def get(path: str) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n"


class Watch:
    """Reads a socket without blocking until the server closes it (EOF or reset)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.data = b""
        self.closed = False
        self.reset = False
        sock.setblocking(False)

    def poll(self) -> bool:
        while not self.closed:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            except ConnectionResetError:
                self.closed = self.reset = True
                break
            if not chunk:
                self.closed = True
            self.data += chunk
        return self.closed


def all_closed(watches: list[Watch]) -> bool:
    open_ = [w for w in watches if not w.closed]
    if open_:
        readable, _, _ = select.select([w.sock for w in open_], [], [], 0)
        by_sock = {w.sock: w for w in open_}
        for sock in readable:
            by_sock[sock].poll()
    return all(w.closed for w in watches)


# --- --header-timeout -----------------------------------------------------------------------------

def test_silent_connection_gets_408_then_eof(serve):
    server = serve("--header-timeout", "1", "--keep-alive", "30")
    sock = server.connect()
    data = recv_all(sock, timeout=20)
    close_now(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert b"\r\nconnection: close\r\n" in data.lower()


def test_half_a_head_gets_408_then_eof(serve, calls):
    server = serve("--header-timeout", "1", "--keep-alive", "30")
    sock = server.connect()
    sock.sendall(b"GET /never HTTP/1.1\r\nHost: t\r\nX-Part")
    data = recv_all(sock, timeout=20)
    close_now(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert app_calls(calls) == []


def test_partial_next_head_on_keep_alive_connection_is_closed_without_408(serve, calls):
    # --keep-alive 30: within recv_all's deadline only the header timeout can close it
    server = serve("--header-timeout", "1", "--keep-alive", "30")
    sock = server.connect()
    sock.sendall(get("/first"))
    assert read_response(sock)[::2] == (200, b"ok")
    sock.sendall(b"GET /second HTTP/1.1\r\nHo")
    rest = recv_all(sock, timeout=20)
    close_now(sock)
    assert rest == b""  # a plain close: no 408 after a response on this connection
    assert app_calls(calls) == ["GET /first"]


def test_slowloris_connections_are_closed_and_others_served(serve):
    server = serve("--header-timeout", "1", "--keep-alive", "30")
    worker = server.worker_pids()[0]
    loris = []
    for _ in range(200):
        sock = server.connect()
        sock.sendall(b"G")
        loris.append(sock)
    dribble = b"ET /slowloris HTTP/1.1\r\n"
    statuses = []
    for round_, requests in enumerate((13, 13, 12, 12)):
        started = time.monotonic()
        for sock in loris:  # one more byte on every slowloris connection ...
            try:
                sock.send(dribble[round_:round_ + 1])
            except OSError:
                pass  # already closed by the server: what we want
        # ... and meanwhile normal requests, each on a fresh connection
        statuses += [server.request("GET", "/normal")[0] for _ in range(requests)]
        # pace the rounds ~0.3 s apart (the attack's rhythm; no assertion depends on it)
        time.sleep(max(0.0, 0.3 - (time.monotonic() - started)))
    assert statuses == [200] * 50

    watches = [Watch(sock) for sock in loris]
    wait_for(lambda: all_closed(watches), timeout=30,
             what="the server to close every slowloris connection")
    for watch in watches:
        # a 408 when it got through before our next byte; never anything else
        assert watch.data == b"" or watch.data.startswith(b"HTTP/1.1 408 "), watch.data[:100]
        close_now(watch.sock)
    assert server.request("GET", "/after")[0] == 200
    assert server.worker_pids() == [worker]


# --- --keep-alive ---------------------------------------------------------------------------------

def test_keep_alive_closes_idle_connections_not_busy_ones(serve, calls, tmp_path):
    server = serve("--keep-alive", "1", "--header-timeout", "30")
    release = tmp_path / "release"
    busy = server.connect(timeout=30)
    busy.sendall(get(f"/hold?release={release}"))
    wait_for(lambda: app_calls(calls), what="the held request to reach the app")

    idle = server.connect()
    idle.sendall(get("/quick"))
    assert read_response(idle)[::2] == (200, b"ok")
    # the keep-alive sweep closes the idle connection ...
    assert recv_all(idle, timeout=20) == b""
    close_now(idle)
    # ... and the sweeps that ran meanwhile left the connection with a request in flight
    # alone: it was open longer than the idle one, and it still gets its response.
    release.touch()
    assert read_response(busy, timeout=30)[::2] == (200, b"held")
    # once answered it is idle, and closed in turn
    assert recv_all(busy, timeout=20) == b""
    close_now(busy)


def test_keep_alive_closes_a_connection_left_with_an_unread_body(serve, calls):
    # The app answers without reading the body; the server then reads the rest of the body
    # to drop it, and that wait counts as idle (http11.response_complete): a client that
    # stops sending must be closed by the keep-alive sweep. --header-timeout 0: no head limit.
    server = serve("--keep-alive", "1", "--header-timeout", "0")
    sock = server.connect()
    sock.sendall(b"POST /no-read HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"
                 + b"x" * 10)
    assert read_response(sock)[::2] == (200, b"ok")
    assert recv_all(sock, timeout=20) == b""  # times out if the connection is never closed
    close_now(sock)
    assert app_calls(calls) == ["POST /no-read"]


def test_keep_alive_does_not_cut_a_slow_request(serve):
    server = serve("--keep-alive", "1", "--header-timeout", "30")
    sock = server.connect(timeout=30)
    sock.sendall(get("/slow?delay=3"))  # three keep-alive sweeps while the app sleeps
    assert read_response(sock, timeout=30)[::2] == (200, b"slow")
    close_now(sock)


# --- --send-timeout -------------------------------------------------------------------------------

def established(pid: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.status == psutil.CONN_ESTABLISHED)


def test_send_timeout_closes_a_connection_that_stops_reading(serve, calls):
    server = serve("--send-timeout", "2", "--log-level", "debug")
    worker = server.worker_pids()[0]
    size = 64 * 1024 * 1024
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # before connect
    stalled.settimeout(30)
    stalled.connect(("127.0.0.1", server.port))
    stalled.sendall(get(f"/stream?size={size}&chunk=65536"))
    wait_for(lambda: app_calls(calls), what="the stream to start")
    wait_for(lambda: established(worker) == 1, what="the worker to hold the connection")

    # while the response is stuck, the worker serves others
    assert server.request("GET", "/meanwhile")[::2] == (200, b"ok")

    server.wait_log(r"send timeout: client .* read nothing for \d+ s", timeout=30)
    wait_for(lambda: established(worker) == 0, timeout=20,
             what="the worker to drop the stalled connection")
    # the client finds its connection ended, short of the whole response
    received = recv_all(stalled, timeout=30)
    close_now(stalled)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert len(received) < size
    assert server.worker_pids() == [worker]
    assert server.request("GET", "/after")[::2] == (200, b"ok")

