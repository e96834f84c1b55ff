"""What a worker does under stress: a retired worker leaves the connections queued on the
shared socket to the others (TERM), a stopping one serves them (INT); the access log and the
heartbeat never block the event loop."""

from __future__ import annotations

import http.client
import os
import signal
import socket
from pathlib import Path

import pytest

from .conftest import close_now, wait_for
from .test_reuse_port import accept_queues

pytestmark = pytest.mark.timeout(180)

GATED = "tests.apps.gated:app"
QUEUED = 400  # connections queued behind the blocked workers
LIMIT = 100  # --limit-concurrency: fewer than what a retired worker sweeping the queue takes


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()


def blocked(gates: Path) -> set[int]:
    return {int(p.name[len("blocked-"):]) for p in gates.glob("blocked-*")}


def open_gate(gates: Path, pid: int) -> None:
    (gates / f"go-{pid}").touch()


def signal_pending(pid: int, signum: int) -> bool:
    """Whether SIGNUM waits to be handled by process PID (its loop is blocked)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("ShdPnd:"):
                    return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    except FileNotFoundError:
        pass
    return False


def queued(port: int) -> int:
    return sum(accept_queues(port).values())


def block_every_worker(server, gates: Path) -> list[socket.socket]:
    """One request per worker that blocks it; returns their connections."""
    blockers = []
    for count in range(1, len(server.worker_pids()) + 1):
        sock = server.connect(timeout=120)
        sock.sendall(request("/blocker"))
        blockers.append(sock)
        # A blocked worker accepts nothing: the next connection goes to another one.
        wait_for(lambda count=count: len(blocked(gates)) == count, what=f"{count} blocked")
    assert blocked(gates) == set(server.worker_pids())
    return blockers


def queue_requests(server, count: int) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=120)
        sock.sendall(request("/queued"))
        clients.append(sock)
    return clients


def answers(clients: list[socket.socket]) -> list:
    """Each client's status, or what went wrong instead of a response. (Not read_response:
    its reader keeps each socket's descriptor open for the rest of the session.)"""
    results = []
    for sock in clients:
        sock.settimeout(120)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            response.read()
            results.append(response.status)
        except (OSError, http.client.HTTPException) as exc:
            results.append(f"no response: {type(exc).__name__}: {exc}")
        finally:
            response.close()
            close_now(sock)
    return results


def test_hup_with_a_backlog_queued_answers_every_connection(start_server, tmp_path):
    """HUP retires each old worker (TERM) once its replacement is ready. While the old workers
    are busy, connections queue on the shared socket; a retired worker must leave them to the
    new workers, not take the whole backlog into its drain (where what is beyond
    --limit-concurrency gets a 503, and what has not sent its request in time is closed)."""
    gates = tmp_path / "gates"
    gates.mkdir()
    server = start_server(GATED, "--workers", "2", "--limit-concurrency", str(LIMIT),
                          "--timeout", "0", env={"DUCK_TEST_GATES": str(gates)})
    old = set(server.worker_pids())
    clients = block_every_worker(server, gates)
    clients += queue_requests(server, QUEUED)
    wait_for(lambda: queued(server.port) == QUEUED, what="the connections queued")

    server.send_signal(signal.SIGHUP)
    server.wait_log(r"worker \d \(pid \d+\) ready", count=4)
    wait_for(lambda: all(signal_pending(pid, signal.SIGTERM) for pid in old),
             what="TERM waiting in both old workers")
    new = set(server.worker_pids()) - old
    assert len(new) == 2
    # The new workers take some of the queue, then block on their first request.
    wait_for(lambda: blocked(gates) == old | new, what="the new workers blocked")
    left = queued(server.port)
    assert left > LIMIT, f"only {left} connections left queued: the test needs more"

    for pid in old:  # the old workers run again: they handle TERM, drain and exit
        open_gate(gates, pid)
    for pid in old:
        server.wait_log(rf"\(pid {pid}\) exited with code 0", timeout=60)
    for pid in new:
        open_gate(gates, pid)
    results = answers(clients)
    assert results == [200] * len(clients), {r: results.count(r) for r in set(results)}
    # (the worker's line for refusals: "--limit-concurrency N reached: answered M ... with 503")
    assert "limit-concurrency" not in server.log()


def test_a_stop_serves_what_is_queued_before_the_sockets_close(start_server, tmp_path):
    """A stop closes the listening sockets; the master sends its workers INT, and a worker
    first accepts what is queued (the kernel resets it at the socket's last close) and serves
    it in its drain."""
    gates = tmp_path / "gates"
    gates.mkdir()
    server = start_server(GATED, "--workers", "1", "--timeout", "0",
                          env={"DUCK_TEST_GATES": str(gates)})
    (pid,) = server.worker_pids()
    clients = block_every_worker(server, gates)
    clients += queue_requests(server, 50)
    wait_for(lambda: queued(server.port) == 50, what="the connections queued")
    server.send_signal(signal.SIGTERM)
    wait_for(lambda: signal_pending(pid, signal.SIGINT), what="INT waiting in the worker")
    open_gate(gates, pid)
    results = answers(clients)
    assert results == [200] * len(clients), {r: results.count(r) for r in set(results)}
    assert server.wait_exit() == 0


def test_a_stalled_access_log_pipe_does_not_stall_the_worker(start_server, tmp_path):
    """The access log goes to a pipe that nobody reads (a stalled stdout pipe): the worker
    goes on answering, far past what the pipe holds; the lines are written once it is read."""
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, never read until the end
    try:
        server = start_server("tests.apps.basic:app", "--workers", "1", "--access-logfile",
                              str(fifo))
        requests = 3000  # about 180 KB of lines: the pipe holds 64 KiB
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for i in range(requests):
            conn.request("GET", f"/pid?n={i}")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        conn.close()
        received = bytearray()

        def read_lines():
            try:
                while chunk := os.read(reader, 1 << 16):
                    received.extend(chunk)
            except BlockingIOError:
                pass
            return received.count(b"\n") >= requests

        wait_for(read_lines, what="every access line")
    finally:
        os.close(reader)
    assert received.count(b'"GET /pid?n=') == requests
