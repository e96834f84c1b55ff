"""Behind a balancer, against the real process tree: the lame-duck drain (TERM with
--drain-delay, `duck-prefork drain --pid`, a second TERM, INT, STOPPING=1), the probes
(--health-path, --ready-path, --min-ready, --log-health), the agent check (--agent-bind), and
keep-alive (--max-requests-per-connection, idle close only between requests).

Every wait is a wait_for with a deadline on something observable; nothing asserts how fast.
The delays given are long (60 s) where the test ends them itself, so a busy machine cannot make
a test pass by the clock."""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys

import pytest

from .conftest import ROOT, app_calls, close_now, read_response, recv_all, wait_for
from .test_systemd_notify import NotifySocket

pytestmark = pytest.mark.timeout(120)

APP = "tests.apps.pressure:app"
PROBES = ("--health-path", "/healthz", "--ready-path", "/ready")


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def fetch(server, path: str) -> tuple[int, dict, bytes]:
    """One request on a new connection."""
    sock = server.connect()
    try:
        sock.sendall(get(path))
        return read_response(sock)
    finally:
        close_now(sock)


def drain_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "duck_prefork", "drain", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def lame_duck_server(start_server, calls, tmp_path):
    pid_file = tmp_path / "server.pid"
    server = start_server(APP, "--workers", "2", *PROBES, "--drain-delay", "60",
                          "--pid", str(pid_file), env={"DUCK_TEST_CALLS": str(calls)})
    return server, pid_file


# --- the lame duck ----------------------------------------------------------------------------

def test_drain_command_turns_readiness_503_keeps_accepting_then_a_second_one_stops(
        lame_duck_server, calls):
    server, pid_file = lame_duck_server
    assert fetch(server, "/ready")[0] == 200
    idle = server.connect()  # a keep-alive connection, idle when the drain starts
    idle.sendall(get("/before"))
    assert read_response(idle)[0] == 200

    result = drain_cli("--pid", str(pid_file))
    assert result.returncode == 0, result.stderr
    assert f"pid {server.pid}" in result.stdout
    server.wait_log("lame duck for 60 s")
    wait_for(lambda: fetch(server, "/ready")[0] == 503, what="readiness 503")
    # Still accepting, and every response says Connection: close, on a new connection and
    # on one that was kept alive from before.
    status, headers, body = fetch(server, "/new")
    assert (status, headers.get("connection")) == (200, "close")
    idle.sendall(get("/after"))
    status, headers, _ = read_response(idle)
    assert (status, headers.get("connection")) == (200, "close")
    assert recv_all(idle) == b""  # then closed by the server
    close_now(idle)
    assert fetch(server, "/healthz")[0] == 200  # alive while it drains
    assert "draining:" not in server.log()  # the listeners are still open

    result = drain_cli("--pid", str(pid_file))  # the second TERM: no more delay
    assert result.returncode == 0, result.stderr
    assert server.wait_exit(timeout=40) == 0
    assert "TERM: graceful stop" in server.log()
    assert [line for line in app_calls(calls) if "ready" in line or "healthz" in line] == []


def test_the_graceful_stop_follows_the_delay(start_server):
    server = start_server(APP, "--workers", "1", "--ready-path", "/ready", "--drain-delay", "1")
    server.send_signal(signal.SIGTERM)
    server.wait_log("--drain-delay over: graceful stop", timeout=30)
    assert server.wait_exit() == 0


def test_in_flight_requests_finish_across_the_delay(start_server, calls, tmp_path):
    release = tmp_path / "release"
    server = start_server(APP, "--workers", "1", "--drain-delay", "60",
                          env={"DUCK_TEST_CALLS": str(calls)})
    held = server.connect(timeout=60)
    held.sendall(get(f"/hold?release={release}"))
    wait_for(lambda: app_calls(calls), what="the request in the app")
    server.send_signal(signal.SIGTERM)
    server.wait_log("lame duck")
    server.send_signal(signal.SIGTERM)
    server.wait_log("draining: ")
    release.touch()
    status, headers, body = read_response(held, timeout=30)
    assert (status, body, headers.get("connection")) == (200, b"held", "close")
    assert server.wait_exit() == 0


def test_int_keeps_its_contract_and_skips_the_delay(start_server):
    server = start_server(APP, "--workers", "1", "--drain-delay", "60")
    server.send_signal(signal.SIGINT)
    assert server.wait_exit(timeout=40) == 0
    assert "lame duck for" not in server.log()


def test_systemd_hears_stopping_at_the_start_of_the_lame_duck(start_server, tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    server = start_server(APP, "--workers", "1", "--drain-delay", "60",
                          env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    ready = notify.wait("READY", "1")
    server.send_signal(signal.SIGTERM)
    notify.wait("STOPPING", "1", after=ready + 1)
    assert "draining:" not in server.log()  # STOPPING=1 came before the listeners closed
    server.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=40) == 0


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such pid file"),
    ("999999999\n", "stale pid file"),
    ("hello\n", "not a pid file"),
])
def test_drain_command_errors_are_one_line_and_exit_1(tmp_path, content, message):
    pid_file = tmp_path / "server.pid"
    if content is not None:
        pid_file.write_text(content)
    result = drain_cli("--pid", str(pid_file))
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_drain_command_refuses_a_pid_that_is_not_a_master(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file = tmp_path / "server.pid"
        pid_file.write_text(f"{sleeper.pid}\n")
        result = drain_cli("--pid", str(pid_file))
        assert result.returncode == 1 and "not a duck-prefork master" in result.stderr
        assert sleeper.poll() is None  # not signalled
    finally:
        sleeper.kill()
        sleeper.wait()


# --- the probes -------------------------------------------------------------------------------

def test_probes_are_answered_before_the_app_and_left_out_of_the_access_log(start_server, calls,
                                                                         tmp_path):
    access = tmp_path / "access.log"
    server = start_server(APP, "--workers", "2", *PROBES, "--access-logfile", str(access),
                          env={"DUCK_TEST_CALLS": str(calls)})
    wait_for(lambda: fetch(server, "/ready")[0] == 200, what="ready")
    status, headers, body = fetch(server, "/healthz")
    assert (status, body) == (200, b"alive\n")
    assert headers["cache-control"] == "no-store"
    assert fetch(server, "/ready?full=1")[0] == 200  # not the probe: the app's
    assert fetch(server, "/other")[2] == b"ok"
    wait_for(lambda: "/other" in access.read_text(), what="the access log line")
    assert "/ready " not in access.read_text() and "/healthz" not in access.read_text()
    assert sorted(app_calls(calls)) == ["GET /other", "GET /ready?full=1"]


def test_log_health_writes_the_probes_to_the_access_log(start_server, tmp_path):
    access = tmp_path / "access.log"
    server = start_server(APP, "--workers", "1", *PROBES, "--log-health",
                          "--access-logfile", str(access))
    fetch(server, "/healthz")
    wait_for(lambda: "/healthz" in access.read_text(), what="the probe's access log line")


def test_ready_needs_min_ready_workers(start_server):
    server = start_server(APP, "--workers", "2", *PROBES, "--min-ready", "3")
    status, _, body = fetch(server, "/ready")
    assert (status, body) == (503, b"2 of --min-ready 3 workers serving\n")
    assert fetch(server, "/healthz")[0] == 200
    server.send_signal(signal.SIGTTIN)  # a third worker
    wait_for(lambda: fetch(server, "/ready")[0] == 200, what="ready with 3 workers")


# --- the agent check --------------------------------------------------------------------------

def agent_line(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return recv_all(sock)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_agent_check_says_ready_then_drain(start_server):
    port = free_port()
    server = start_server(APP, "--workers", "2", "--agent-bind", f"127.0.0.1:{port}",
                          "--drain-delay", "60")
    wait_for(lambda: agent_line(port) == b"ready 100%\n", what="ready 100%")
    # A client that connects and says nothing, and one that sends a line (agent-send): the
    # master answers both, and supervision goes on.
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as talker:
        talker.sendall(b"backend/server\n")
        assert recv_all(talker) == b"ready 100%\n"
    server.send_signal(signal.SIGTERM)
    wait_for(lambda: agent_line(port) == b"drain\n", what="drain")
    assert recv_all(silent) == b"ready 100%\n"
    silent.close()
    server.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=40) == 0


def test_agent_weight_follows_the_busy_workers(start_server, calls, tmp_path):
    """A request held in one of two workers: at its next heartbeat the master counts it busy,
    and the agent answers half the weight; released, the full weight again."""
    port = free_port()
    release = tmp_path / "release"
    server = start_server(APP, "--workers", "2", "--agent-bind", f"127.0.0.1:{port}",
                          env={"DUCK_TEST_CALLS": str(calls)})
    held = server.connect(timeout=60)
    held.sendall(get(f"/hold?release={release}"))
    wait_for(lambda: app_calls(calls), what="the request in the app")
    wait_for(lambda: agent_line(port) == b"ready 50%\n", what="ready 50%")
    release.touch()
    assert read_response(held)[2] == b"held"
    close_now(held)
    wait_for(lambda: agent_line(port) == b"ready 100%\n", what="ready 100% again")


def test_agent_bind_in_use_is_one_line_and_exit_1(start_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_server(APP, "--agent-bind", f"127.0.0.1:{port}", ready=False)
        assert server.wait_exit() == 1
        assert f"--agent-bind 127.0.0.1:{port}:" in server.log()


# --- keep-alive -----------------------------------------------------------------------------

def test_max_requests_per_connection_closes_after_the_nth(start_server):
    server = start_server(APP, "--workers", "1", "--max-requests-per-connection", "3")
    sock = server.connect()
    answers = []
    for _ in range(3):
        sock.sendall(get("/"))
        answers.append(read_response(sock)[1].get("connection"))
    assert answers == [None, None, "close"]
    assert recv_all(sock) == b""
    close_now(sock)


def test_idle_close_happens_between_requests_never_while_a_head_arrives(start_server):
    server = start_server(APP, "--workers", "1", "--keep-alive", "1", "--header-timeout", "60")
    sock = server.connect()
    sock.sendall(get("/first"))
    assert read_response(sock)[0] == 200
    sock.sendall(b"GET /second HTTP/1.1\r\nHost: t\r\n")  # half a head, after the response
    # A control connection that goes idle after `sock` did: once the keep-alive sweep has
    # closed it, that sweep saw `sock` idle for longer, and left it open.
    control = server.connect()
    control.sendall(get("/control"))
    assert read_response(control)[0] == 200
    assert recv_all(control, timeout=30) == b""
    close_now(control)
    readable, _, _ = select.select([sock], [], [], 0.5)
    assert not readable  # not closed while its head arrives
    sock.sendall(b"\r\n")
    assert read_response(sock)[0] == 200
    assert recv_all(sock, timeout=30) == b""  # idle again: closed after --keep-alive
    close_now(sock)
