"""Running out of file descriptors: accept pauses (no spin, logged once), nothing is dropped."""

import socket

import psutil
import pytest

from .conftest import read_response, wait_for

pytestmark = pytest.mark.timeout(60)


def test_emfile_pauses_accepting_without_spinning_or_dropping(start_server):
    server = start_server("tests.apps.basic:app", "--workers", "1")
    worker = psutil.Process(server.worker_pids()[0])
    limit = worker.num_fds() + 8
    worker.rlimit(psutil.RLIMIT_NOFILE, (limit, limit))

    clients = []
    for _ in range(30):
        sock = server.connect(timeout=20)
        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
        clients.append(sock)
    server.wait_log("cannot accept connections")
    worker.cpu_percent()
    wait_for(lambda: worker.cpu_percent(interval=0.5) < 50, timeout=10,
             what="the starved worker to stop burning CPU")

    # Each answered client frees its descriptor on close; the rest must then be accepted
    # from the backlog and answered too: no connection is dropped.
    answered = 0
    for sock in clients:
        status, _, body = read_response(sock, timeout=20)
        assert status == 200 and int(body) == worker.pid
        sock.shutdown(socket.SHUT_RDWR)  # the reader's file would keep the fd open past close()
        sock.close()
        answered += 1
    assert answered == 30
    log = server.log()
    assert log.count("cannot accept connections") == 1
    assert "accepting connections again" in log
