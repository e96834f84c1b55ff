"""Stopping: graceful drain on TERM/INT, immediate on QUIT or a second INT, nothing left."""

import os
import signal
import socket
import threading

import psutil
import pytest

from .conftest import read_response, recv_all, wait_for

pytestmark = pytest.mark.timeout(90)

APP = "tests.apps.basic:app"


def send_get(server, path: str, extra: str = "") -> socket.socket:
    sock = server.connect(timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
    return sock


def in_background(function, *args):
    result = {}

    def run():
        try:
            result["value"] = function(*args)
        except Exception as exc:  # reported by the test's assertions
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def wait_in_flight(server, count=1):
    """Wait until the worker has accepted `count` requests (seen through /proc: its sockets)."""
    worker = psutil.Process(server.worker_pids()[0])
    wait_for(lambda: len([c for c in worker.net_connections("tcp")
                          if c.status == psutil.CONN_ESTABLISHED]) >= count,
             what="connections accepted")


def test_term_lets_in_flight_requests_finish_and_exits_0(start_server, tmp_path):
    server = start_server("tests.apps.shutdown_marker:app", "--workers", "1",
                          env={"DUCK_TEST_MARKER_DIR": str(tmp_path)})
    worker_pid = server.worker_pids()[0]
    slow = send_get(server, "/slow?delay=1.5")
    stream = send_get(server, "/stream?n=8&delay=0.2")
    wait_in_flight(server, 2)
    server.send_signal(signal.SIGTERM)
    server.wait_log("draining")
    status, headers, body = read_response(slow)
    assert (status, body) == (200, b"slow")
    assert headers["connection"] == "close"  # its head was not sent yet when draining began
    status, headers, body = read_response(stream)
    assert body == b"".join(b"chunk %d\n" % i for i in range(8))
    assert server.wait_exit() == 0
    assert (tmp_path / str(worker_pid)).read_text() == "shutdown"  # lifespan shutdown ran
    assert not psutil.pid_exists(worker_pid) or \
        psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE


def test_idle_keep_alive_connections_close_at_once_on_stop(start_server):
    server = start_server(APP, "--workers", "1", "--keep-alive", "60")
    idle = server.connect()
    idle.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert read_response(idle)[0] == 200
    busy = send_get(server, "/slow?delay=3")
    wait_in_flight(server, 2)
    server.send_signal(signal.SIGTERM)
    assert recv_all(idle, timeout=10) == b""  # closed while the slow request is still running
    assert read_response(busy)[2] == b"slow"
    assert server.wait_exit() == 0


def test_new_connections_are_refused_once_stopped(start_server):
    server = start_server(APP, "--workers", "2")
    port = server.port
    assert server.stop() == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_graceful_timeout_cancels_what_is_left(start_server):
    server = start_server(APP, "--workers", "1", "--graceful-timeout", "1")
    sock = send_get(server, "/slow?delay=60")
    wait_in_flight(server)
    server.send_signal(signal.SIGTERM)
    assert recv_all(sock, timeout=30) == b""  # no response: cut off at the timeout
    assert server.wait_exit(30) == 0
    assert "graceful timeout" in server.log()


def test_second_int_stops_at_once(start_server):
    server = start_server(APP, "--workers", "2")
    sock = send_get(server, "/slow?delay=60")
    wait_for(lambda: any(psutil.Process(pid).net_connections("tcp")
                         for pid in server.worker_pids()), what="accepted")
    workers = server.worker_pids()
    server.send_signal(signal.SIGINT)
    server.wait_log("INT: graceful stop")
    server.send_signal(signal.SIGINT)
    assert server.wait_exit(10) == 0
    assert recv_all(sock) == b""
    for pid in workers:
        assert not psutil.pid_exists(pid)


def test_quit_stops_at_once(start_server):
    server = start_server(APP, "--workers", "2")
    sock = send_get(server, "/slow?delay=60")
    workers = server.worker_pids()
    server.send_signal(signal.SIGQUIT)
    assert server.wait_exit(10) == 0
    assert recv_all(sock) == b""
    for pid in workers:
        assert not psutil.pid_exists(pid)


def test_workers_do_not_outlive_a_killed_master(start_server):
    server = start_server(APP, "--workers", "2")
    workers = [psutil.Process(pid) for pid in server.worker_pids()]
    os.kill(server.pid, signal.SIGKILL)
    server.wait_exit(10)
    gone, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, "workers outlived their master"
