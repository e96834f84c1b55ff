"""Operating a running server: HUP reload (under load, new code, a broken deploy), TTIN/TTOU,
--max-requests recycling, --timeout and --boot-timeout, USR1 log reopening."""

from __future__ import annotations

import http.client
import os
import re
import select
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.timeout(120)

BASIC = "tests.apps.basic:app"
MODULE = "deployed_app"  # written by the tests into tmp_path, served with --chdir tmp_path

APP_SOURCE = '''\
import os

VERSION = {version!r}
{extra}

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({{"type": "lifespan.startup.complete"}})
            else:
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    body = VERSION.encode()
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode()),
                            (b"x-pid", str(os.getpid()).encode())]}})
    await send({{"type": "http.response.body", "body": body}})
'''

# The conftest sets PYTHONPATH to the repository itself, so the module in tmp_path is found
# through --chdir (the master puts its working directory on sys.path). No .pyc files: a rewrite
# within the same second as the previous import must not be shadowed by a stale cache.
APP_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}


def write_app(directory: Path, version: str, extra: str = "") -> None:
    """(Re)write the deployed module atomically, as a deploy tool would."""
    staging = directory / f".{MODULE}.py.tmp"
    staging.write_text(APP_SOURCE.format(version=version, extra=extra))
    os.replace(staging, directory / f"{MODULE}.py")


def get(port: int, path: str = "/", timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """One GET on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def versions(port: int, n: int = 10) -> set[bytes]:
    result = set()
    for _ in range(n):
        status, _, body = get(port)
        assert status == 200, (status, body)
        result.add(body)
    return result


def _closed_by_peer(sock: socket.socket) -> bool:
    """True if the server has closed this idle keep-alive connection: it is readable (EOF,
    a reset, or bytes nobody asked for) before the next request was sent."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class Load:
    """Background clients sending GET requests until stopped.

    `fresh` clients open a new connection per request: each one must get a 200 (the
    zero-failure assertion is made on these). `keepalive` clients reuse their connection as
    real clients do: one found closed before sending is reopened, and a request whose reused
    connection closes without any response is retried on a new connection (counted in
    `ka_retried`, as HTTP clients retry an idempotent request after a keep-alive race)."""

    def __init__(self, port: int, path: str = "/pid", fresh: int = 3, keepalive: int = 2,
                 expect=lambda body: body.isdigit()):
        self.port, self.path, self.expect = port, path, expect
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.sent = self.ok = 0
        self.failures: list[str] = []
        self.ka_sent = self.ka_ok = self.ka_reopened = self.ka_retried = 0
        self.ka_failures: list[str] = []
        self.bodies: Counter = Counter()
        self.threads = [threading.Thread(target=self._fresh_client, daemon=True)
                        for _ in range(fresh)]
        self.threads += [threading.Thread(target=self._keepalive_client, daemon=True)
                         for _ in range(keepalive)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in self.threads), "a load client hangs"

    def total(self) -> int:
        with self.lock:
            return self.sent + self.ka_sent

    def _record(self, body: bytes) -> None:
        self.bodies[body] += 1

    def _fresh_client(self) -> None:
        while not self.stopping.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            sent = False
            try:
                conn.request("GET", self.path)
                sent = True
                response = conn.getresponse()
                body = response.read()
                with self.lock:
                    self.sent += 1
                    if response.status == 200 and self.expect(body):
                        self.ok += 1
                        self._record(body)
                    else:
                        self.failures.append(f"{response.status} {body[:100]!r}")
            except Exception as exc:
                with self.lock:
                    self.sent += sent
                    self.failures.append(f"{'after' if sent else 'before'} sending: {exc!r}")
            finally:
                conn.close()

    def _keepalive_client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            while not self.stopping.is_set():
                reused = conn.sock is not None
                if reused and _closed_by_peer(conn.sock):
                    conn.close()
                    reused = False
                    with self.lock:
                        self.ka_reopened += 1
                try:
                    conn.request("GET", self.path)
                    with self.lock:
                        self.ka_sent += 1
                    response = conn.getresponse()
                    body = response.read()
                except (http.client.RemoteDisconnected, ConnectionResetError,
                        BrokenPipeError) as exc:
                    conn.close()
                    with self.lock:
                        if reused:
                            self.ka_retried += 1  # the next turn retries on a new connection
                        else:
                            self.ka_failures.append(f"new connection: {exc!r}")
                    continue
                except Exception as exc:
                    conn.close()
                    with self.lock:
                        self.ka_failures.append(repr(exc))
                    continue
                with self.lock:
                    if response.status == 200 and self.expect(body):
                        self.ka_ok += 1
                        self._record(body)
                    else:
                        self.ka_failures.append(f"{response.status} {body[:100]!r}")
        finally:
            conn.close()

    def report(self, what: str) -> str:
        with self.lock:
            return (f"{what}: new-connection requests sent {self.sent}, ok {self.ok}, "
                    f"failed {len(self.failures)}; keep-alive requests sent {self.ka_sent}, "
                    f"ok {self.ka_ok}, failed {len(self.ka_failures)}, retried after a "
                    f"keep-alive close race {self.ka_retried}, connections found closed and "
                    f"reopened {self.ka_reopened}")


def replacements(server, count: int, timeout: float = 30.0) -> list[tuple[int, int]]:
    """(new pid, old pid) of the first `count` workers booted to replace another."""
    lines = server.wait_log(r"booting worker \d+ \(pid (\d+)\) to replace pid (\d+)",
                            count=count, timeout=timeout)
    return [(int(new), int(old)) for new, old in lines[:count]]


def wait_replaced(server, pairs: list[tuple[int, int]], timeout: float = 30.0) -> None:
    """Each new worker reported ready and each old one drained and exited with code 0."""
    for new, old in pairs:
        server.wait_log(rf"worker \d+ \(pid {new}\) ready", timeout=timeout)
        server.wait_log(rf"worker \d+ \(pid {old}\) exited with code 0", timeout=timeout)


# --- HUP ------------------------------------------------------------------------------------


def test_hup_under_load_fails_no_request(start_server):
    server = start_server(BASIC, "--workers", "2")
    old = set(server.worker_pids())
    assert len(old) == 2
    with Load(server.port) as load:
        wait_for(lambda: load.total() >= 100, timeout=30, what="load before HUP")
        before_hup = load.total()
        server.send_signal(signal.SIGHUP)
        server.wait_log(r"HUP: reloading 2 workers")
        pairs = replacements(server, 2)
        assert {old_pid for _, old_pid in pairs} == old
        wait_replaced(server, pairs)
        after_switch = load.total()
        wait_for(lambda: load.total() >= after_switch + 200, timeout=30, what="load after HUP")
    new = set(server.worker_pids())
    print("\n" + load.report(f"HUP under load ({load.total() - before_hup} after the HUP)"))
    assert new == {new_pid for new_pid, _ in pairs}
    assert not new & old
    assert load.failures == [], load.failures[:10]
    assert load.ka_failures == [], load.ka_failures[:10]
    served_by = {int(body) for body in load.bodies}
    assert served_by & old and served_by & new  # the load ran across the switch
    assert load.sent > 100 and load.ka_sent > 100


def test_hup_picks_up_new_code(start_server, tmp_path):
    write_app(tmp_path, "version-1")
    server = start_server(f"{MODULE}:app", "--workers", "2", "--chdir", str(tmp_path),
                          env=APP_ENV)
    assert versions(server.port) == {b"version-1"}
    old = set(server.worker_pids())
    write_app(tmp_path, "version-2")
    server.send_signal(signal.SIGHUP)
    wait_replaced(server, replacements(server, 2))
    wait_for(lambda: versions(server.port, 20) == {b"version-2"}, timeout=15,
             what="every response from the new code")
    assert not set(server.worker_pids()) & old


def test_hup_with_a_broken_deploy_keeps_the_old_workers(start_server, tmp_path):
    write_app(tmp_path, "version-1")
    server = start_server(f"{MODULE}:app", "--workers", "2", "--chdir", str(tmp_path),
                          env=APP_ENV)
    old = set(server.worker_pids())
    write_app(tmp_path, "version-broken", extra='raise RuntimeError("broken deploy")')
    server.send_signal(signal.SIGHUP)
    pairs = replacements(server, 2)
    for new, old_pid in pairs:
        server.wait_log(rf"new worker \d+ \(pid {new}\) exited with code 3 before it was ready; "
                        rf"pid {old_pid} keeps serving")
    assert "RuntimeError: broken deploy" in server.log()
    wait_for(lambda: set(server.worker_pids()) == old, what="only the old workers left")
    assert versions(server.port, 20) == {b"version-1"}
    assert not re.search(r"exited with code 0", server.log())  # no old worker was stopped

    write_app(tmp_path, "version-3")
    server.send_signal(signal.SIGHUP)
    server.wait_log(r"HUP: reloading 2 workers", count=2)
    pairs = replacements(server, 4)[2:]
    assert {old_pid for _, old_pid in pairs} == old
    wait_replaced(server, pairs)
    wait_for(lambda: versions(server.port, 20) == {b"version-3"}, timeout=15,
             what="every response from the fixed code")
    assert set(server.worker_pids()) == {new for new, _ in pairs}


# --- TTIN / TTOU ----------------------------------------------------------------------------


def test_ttin_adds_a_worker_and_ttou_removes_one_but_never_the_last(start_server):
    server = start_server(BASIC, "--workers", "2")
    first = set(server.worker_pids())

    server.send_signal(signal.SIGTTIN)
    server.wait_log(r"TTIN: one worker more \(3\)")
    third = int(server.wait_log(r"booting worker 3 \(pid (\d+)\)")[0])
    server.wait_log(rf"worker 3 \(pid {third}\) ready")
    wait_for(lambda: set(server.worker_pids()) == first | {third}, what="3 workers")

    server.send_signal(signal.SIGTTOU)
    server.wait_log(r"TTOU: one worker fewer \(2\); stopping worker 3 gracefully")
    server.wait_log(rf"worker 3 \(pid {third}\) exited with code 0")
    wait_for(lambda: set(server.worker_pids()) == first, what="back to the 2 first workers")
    assert versions_ok(server)

    server.send_signal(signal.SIGTTOU)
    server.wait_log(r"TTOU: one worker fewer \(1\); stopping worker 2 gracefully")
    second = int(server.wait_log(r"worker 2 \(pid (\d+)\) exited with code 0")[0])
    assert second in first
    wait_for(lambda: len(server.worker_pids()) == 1, what="1 worker")
    last = server.worker_pids()

    server.send_signal(signal.SIGTTOU)
    server.wait_log(r"TTOU: already down to one worker")
    assert server.worker_pids() == last
    assert versions_ok(server)
    assert server.worker_pids() == last
    assert not re.search(r"restarting|killed by|ERROR", server.log())


def versions_ok(server, n: int = 10) -> bool:
    for _ in range(n):
        status, _, body = server.request("GET", "/")
        assert (status, body) == (200, b"Hello, world!")
    return True


# --- --max-requests -------------------------------------------------------------------------


def test_max_requests_recycles_workers_without_failing_requests(start_server):
    server = start_server(BASIC, "--workers", "2", "--max-requests", "20",
                          "--max-requests-jitter", "5")
    with Load(server.port, fresh=3, keepalive=0) as load:
        server.wait_log(r"served its --max-requests: replacing it", count=3, timeout=60)
        pairs = replacements(server, 3, timeout=30)
        wait_replaced(server, pairs)
    print("\n" + load.report("--max-requests 20 --max-requests-jitter 5 under load"))
    recycled = {int(pid) for pid in re.findall(
        r"worker \d+ \(pid (\d+)\) served its --max-requests", server.log())}
    assert {old for _, old in pairs} <= recycled
    assert load.failures == [], load.failures[:10]
    assert load.sent >= 60
    # Each worker served at least --max-requests before asking to be replaced.
    served = [int(n) for n in re.findall(r"stopped after serving (\d+) requests?", server.log())]
    assert served and min(served) >= 20, served


# --- --timeout and --boot-timeout -----------------------------------------------------------


def test_timeout_dumps_the_stack_of_a_hung_worker_and_replaces_it(start_server):
    server = start_server("tests.apps.hang:app", "--workers", "2", "--timeout", "2")
    outcome: dict = {}

    def block():
        try:
            outcome["response"] = get(server.port, "/block", timeout=25)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=block, daemon=True)
    thread.start()
    hung = int(server.wait_log(r"worker \d+ \(pid (\d+)\) has been silent for [\d.]+ s "
                               r"\(--timeout 2\): dumping its stack", timeout=15)[0])
    server.wait_log(r'File "[^"]*hang\.py", line \d+ in app')
    server.wait_log(rf"worker \d+ \(pid {hung}\) killed by SIGKILL")
    thread.join(20)
    assert not thread.is_alive()
    assert "response" not in outcome, outcome
    assert isinstance(outcome["error"], (ConnectionError, http.client.RemoteDisconnected))
    server.wait_log(r"worker \d+ \(pid \d+\) ready", count=3)
    wait_for(lambda: len(server.worker_pids()) == 2, what="2 workers again")
    assert hung not in server.worker_pids()
    assert versions_ok(server, 20)
    log = server.log()
    assert log.index("has been silent") < log.index("hang.py") < log.index("killed by SIGKILL")


def test_boot_timeout_stops_a_server_whose_app_import_hangs(start_server, tmp_path):
    write_app(tmp_path, "slow", extra="import time\ntime.sleep(30)")
    started = time.monotonic()
    server = start_server(f"{MODULE}:app", "--workers", "2", "--boot-timeout", "1",
                          "--chdir", str(tmp_path), env=APP_ENV, ready=False)
    assert server.wait_exit(timeout=15) == 3
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed
    log = server.log()
    assert re.search(r"was not ready 1 s after its fork \(--boot-timeout\)", log), log
    assert "ready: " not in log


# --- USR1 -----------------------------------------------------------------------------------


def _open_paths(pid: int) -> set[str]:
    paths = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    return paths


def test_usr1_reopens_the_log_files(start_server, tmp_path):
    error_log, access_log = tmp_path / "error.log", tmp_path / "access.log"
    server = start_server(BASIC, "--workers", "2", "--error-logfile", str(error_log),
                          "--access-logfile", str(access_log), ready=False)

    def error_text(path=error_log):
        return path.read_text(errors="replace") if path.exists() else ""

    wait_for(lambda: "ready: 2 workers serving" in error_text(), what="ready in the error log")
    port = int(re.search(r"listening on .*?http://127\.0\.0\.1:(\d+)", error_text()).group(1))
    status, _, _ = get(port, "/before-rotation")
    assert status == 200
    wait_for(lambda: "/before-rotation" in access_log.read_text(), what="first access line")

    rotated_error, rotated_access = tmp_path / "error.log.1", tmp_path / "access.log.1"
    error_log.rename(rotated_error)
    access_log.rename(rotated_access)
    server.send_signal(signal.SIGUSR1)
    wait_for(lambda: "USR1: log files reopened" in error_text(), what="USR1 in the new error log")
    processes = [server.pid, *server.worker_pids()]
    assert len(processes) == 3

    def reopened():
        for pid in processes:
            paths = _open_paths(pid)
            if str(error_log) not in paths or str(rotated_error) in paths:
                return False
            if pid != server.pid and (str(access_log) not in paths
                                      or str(rotated_access) in paths):
                return False
        return True

    wait_for(reopened, what="every process writing to the new files only")
    status, _, _ = get(port, "/after-rotation")
    assert status == 200
    wait_for(lambda: access_log.exists() and "/after-rotation" in access_log.read_text(),
             what="second access line in the new access log")
    assert "/before-rotation" in rotated_access.read_text()
    assert "/after-rotation" not in rotated_access.read_text()
    assert "/before-rotation" not in access_log.read_text()
    assert "USR1" not in rotated_error.read_text()
    assert "ready: 2 workers serving" in rotated_error.read_text()
    # The next lines keep going to the new error log: a worker's stop is logged there.
    assert server.stop() == 0
    assert "stopped (exit code 0)" in error_text()
    assert "stopped after serving" in error_text()
    assert "stopped" not in rotated_error.read_text()
