"""The master: binding, process titles, worker restarts, boot failures, descriptors."""

import http.client
import os
import re
import signal
import socket
import time

import psutil
import pytest

from .conftest import wait_for

pytestmark = pytest.mark.timeout(60)


def test_demo_app_without_an_app_argument(start_server):
    server = start_server("--workers", "2")
    status, headers, body = server.request("GET", "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b"duck-prefork" in body
    pid = int(re.search(rb'id="pid">(\d+)<', body).group(1))
    assert pid in server.worker_pids()
    assert re.search(rb'id="workers">2<', body)


def test_process_titles(start_server):
    server = start_server("tests.apps.basic:app", "--workers", "2", "--name", "shop")
    assert psutil.Process(server.pid).cmdline()[0] == "duck-prefork: master [shop]"
    titles = sorted(psutil.Process(pid).cmdline()[0] for pid in server.worker_pids())
    assert titles == ["duck-prefork: worker 1 [shop]", "duck-prefork: worker 2 [shop]"]


def _master_fds(pid):
    return sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))


def test_every_master_descriptor_is_close_on_exec(start_server):
    server = start_server("tests.apps.basic:app", "--workers", "2")
    for fd in _master_fds(server.pid):
        if fd <= 2:
            continue
        with open(f"/proc/{server.pid}/fdinfo/{fd}") as info:
            flags = int(re.search(r"flags:\s+(\d+)", info.read()).group(1), 8)
        assert flags & os.O_CLOEXEC, f"fd {fd} of the master would leak into exec'd programs"


def test_killed_workers_are_replaced_without_zombies_or_fd_leaks(start_server):
    server = start_server("tests.apps.basic:app", "--workers", "2")
    fds_before = _master_fds(server.pid)
    for round_number in range(3):
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        server.wait_log(rf"worker \d \(pid {victim}\) killed by SIGKILL")
        server.wait_log(r"worker \d \(pid \d+\) ready", count=3 + round_number)
        pids = server.worker_pids()
        assert len(pids) == 2 and victim not in pids
    children = [psutil.Process(pid) for pid in server.worker_pids()]
    assert all(child.status() != psutil.STATUS_ZOMBIE for child in children)
    assert _master_fds(server.pid) == fds_before
    status, _, body = server.request("GET", "/")
    assert (status, body) == (200, b"Hello, world!")


def test_worker_that_exits_is_replaced_keeping_its_number(start_server):
    server = start_server("tests.apps.basic:app", "--workers", "1")
    old = server.worker_pids()
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        server.request("GET", "/exit", timeout=5)
    server.wait_log(r"worker 1 \(pid \d+\) exited with code 17")
    wait_for(lambda: server.worker_pids() and server.worker_pids() != old, what="new worker")
    server.wait_log(r"worker 1 \(pid \d+\) ready", count=2)
    status, _, body = server.request("GET", "/pid")
    assert status == 200 and int(body) in server.worker_pids()


def test_import_error_exits_3_with_the_traceback(start_server):
    started = time.monotonic()
    server = start_server("tests.apps.import_error:app", "--workers", "4", ready=False)
    assert server.wait_exit(30) == 3
    assert time.monotonic() - started < 15
    log = server.log()
    assert "Traceback" in log and "this_module_does_not_exist" in log
    assert "failed to boot" in log
    assert log.count("Traceback") == 1  # one worker's traceback, not one per worker
    assert log.count("booting worker") == 4  # no crash loop


@pytest.mark.parametrize("app, expected", [
    ("tests.apps.no_such_module:app", "cannot import module 'tests.apps.no_such_module'"),
    ("tests.apps.basic:missing", "has no attribute 'missing'"),
    ("tests.apps.broken:not_async", "does not look like an ASGI 3 app"),
])
def test_unloadable_app_exits_3_with_a_clear_message(start_server, app, expected):
    server = start_server(app, "--workers", "2", ready=False)
    assert server.wait_exit(30) == 3
    assert expected in server.log()


def test_lifespan_startup_failure_exits_3_with_the_apps_message(start_server):
    server = start_server("tests.apps.broken:lifespan_fails", "--workers", "2", ready=False)
    assert server.wait_exit(30) == 3
    assert "lifespan startup failed: database unreachable: db:5432" in server.log()


def test_lifespan_on_and_app_raising_exits_3_with_the_traceback(start_server):
    server = start_server("tests.apps.broken:lifespan_raises", "--lifespan", "on", ready=False)
    assert server.wait_exit(30) == 3
    log = server.log()
    assert "RuntimeError: lifespan exploded" in log and "Traceback" in log


def test_lifespan_auto_tolerates_an_app_without_lifespan(start_server):
    server = start_server("tests.apps.broken:lifespan_raises", "--lifespan", "auto")
    assert "the app does not support the ASGI lifespan protocol (it raised RuntimeError: " \
        "lifespan exploded)" in server.log()


def test_factory_and_dotted_attributes(start_server):
    server = start_server("tests.apps.broken:make_app", "--factory", "--workers", "1")
    assert server.request("GET", "/")[2] == b"factory"
    server2 = start_server("tests.apps.broken:Nested.Inner.app", "--workers", "1")
    assert server2.request("GET", "/")[2] == b"nested"


def test_ipv6_and_multiple_binds(start_server):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    probe = socket.socket(socket.AF_INET6)
    try:
        probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    finally:
        probe.close()
    server = start_server("tests.apps.basic:app", "--workers", "1", "--bind", "[::1]:0")
    line = server.wait_log(r"listening on (.*)")[0]
    port6 = int(re.search(r"http://\[::1\]:(\d+)", line).group(1))
    conn = socket.create_connection(("::1", port6), timeout=5)
    conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"Hello, world!")
    assert server.request("GET", "/")[0] == 200  # the IPv4 bind serves too


def test_unix_socket_stale_file_removed_and_own_file_cleaned_up(start_server, tmp_path):
    path = tmp_path / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on, as a crashed server leaves behind
    assert path.exists()
    server = start_server("tests.apps.basic:app", "--workers", "1", bind=f"unix:{path}")
    client = socket.socket(socket.AF_UNIX)
    client.settimeout(5)
    client.connect(str(path))
    client.sendall(b"GET /scope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    client.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert b'"client": null' in data
    assert server.stop() == 0
    assert not path.exists()


def test_fd_bind_serves_an_inherited_socket(start_server, tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    os.set_inheritable(sock.fileno(), True)
    import subprocess
    import sys

    from .conftest import ROOT
    log = open(tmp_path / "fd.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "duck_prefork", "tests.apps.basic:app",
                             "--workers", "1", "--bind", f"fd://{sock.fileno()}"],
                            cwd=ROOT, stderr=log, pass_fds=[sock.fileno()],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    sock.close()
    try:
        wait_for(lambda: b"ready:" in (tmp_path / "fd.log").read_bytes(), what="ready")
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        assert data.endswith(b"Hello, world!")
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children():
                child.kill()
            proc.kill()
            proc.wait()
        log.close()


def test_workers_dying_young_are_restarted_with_growing_delays(start_server):
    server = start_server("tests.apps.basic:app", "--workers", "1")
    delays = []
    for attempt in range(3):
        server.wait_log(r"worker 1 \(pid \d+\) ready", count=attempt + 1)
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            server.request("GET", "/exit", timeout=5)
        line = server.wait_log(r"exited with code 17 after [\d.]+ s; restarting in ([\d.]+) s",
                               count=attempt + 1)
        delays = [float(d) for d in line]
    assert delays == sorted(delays) and delays[-1] > delays[0]
    assert server.log().count("booting worker") == 3  # one fork per restart, no storm


def test_master_signals_sent_to_a_worker_are_ignored(start_server):
    # `systemctl kill -s HUP` without --kill-whom=main signals every process of the service.
    server = start_server("tests.apps.basic:app", "--workers", "1")
    worker = server.worker_pids()[0]
    for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGQUIT):
        os.kill(worker, signum)
    status, _, body = server.request("GET", "/")
    assert status == 200
    assert server.worker_pids() == [worker]
    assert psutil.Process(worker).status() != psutil.STATUS_STOPPED
    assert server.stop() == 0
