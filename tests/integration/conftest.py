"""Fixtures that start the real duck-prefork process tree and clean it up by PID."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from duck_prefork import build

ROOT = Path(__file__).resolve().parents[2]

# The --http parsers. Tests whose outcome depends on the parser run against each, and the
# conformance suites (corpus, bad requests) also assert that both give the same outcome.
PARSERS = ("httptools", "h11")


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Server:
    """One duck-prefork master started for a test, with its log in a file."""

    def __init__(self, args: list[str], tmp_path: Path, env: dict | None = None,
                 bind: str | None = "127.0.0.1:0", pass_fds: tuple[int, ...] = ()):
        self.log_path = tmp_path / f"server-{time.monotonic_ns()}.log"
        self.out_path = self.log_path.with_suffix(".out")
        argv = [sys.executable, "-m", "duck_prefork", *args]
        if bind:
            argv += ["--bind", bind]
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith("DUCK_PREFORK_") or k == build.PURE_ENV}  # the build stays
        full_env.update(env or {})
        full_env["PYTHONPATH"] = str(ROOT)
        self._log = open(self.log_path, "wb")
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=self._out,
                                     stderr=self._log, start_new_session=True,
                                     pass_fds=pass_fds)
        self.pid = self.proc.pid
        self.known_pids: set[int] = {self.pid}
        self._port: int | None = None

    # --- observing ---

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 15.0) -> list[str]:
        regex = re.compile(pattern)

        def found():
            matches = regex.findall(self.log())
            if len(matches) >= count:
                return matches
            if self.proc.poll() is not None and len(regex.findall(self.log())) < count:
                raise AssertionError(f"server exited ({self.proc.returncode}) before logging "
                                     f"{pattern!r}:\n{self.log()}")
            return None

        return wait_for(found, timeout, f"log line {pattern!r}")

    def wait_ready(self, timeout: float = 20.0) -> Server:
        self.wait_log(r"ready: \d+ workers? serving", timeout=timeout)
        self.worker_pids()
        return self

    @property
    def port(self) -> int:
        if self._port is None:
            line = self.wait_log(r"listening on .*?http://127\.0\.0\.1:(\d+)")[0]
            self._port = int(line)
        return self._port

    def worker_pids(self) -> list[int]:
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        pids = [child.pid for child in children]
        self.known_pids.update(pids)
        return pids

    # --- talking to it ---

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def request(self, method: str = "GET", path: str = "/", body: bytes | None = None,
                headers: dict | None = None, timeout: float = 10.0):
        """One request on a new connection: returns (status, headers dict, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()

    # --- stopping ---

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.send_signal(signum)
        return self.wait_exit(timeout)

    def cleanup(self) -> list[int]:
        """Stop what the test left running; returns the PIDs that had to be killed, which
        is a failure: a master that ignores TERM, or a worker that outlived its master."""
        self.worker_pids()
        survivors = []
        if self.proc.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                survivors.append(self.pid)
                self.proc.kill()
                self.proc.wait(10)
        for pid in self.known_pids - {self.pid}:
            try:
                process = psutil.Process(pid)
                if process.status() != psutil.STATUS_ZOMBIE and "duck-prefork" in " ".join(
                        process.cmdline()):
                    survivors.append(pid)
                    process.kill()
            except psutil.NoSuchProcess:
                pass
        self._log.close()
        self._out.close()
        return survivors


@contextlib.contextmanager
def running_server(args: list[str], tmp_path: Path):
    """A ready server for a whole module, cleaned up by PID at the end."""
    server = Server(list(args), tmp_path)
    try:
        server.wait_ready()
        yield server
    finally:
        survivors = server.cleanup()
        assert not survivors, f"processes outlived their server: {survivors}"


@contextlib.contextmanager
def running_servers(args: list[str], tmp_path: Path):
    """One ready server per parser (`--http`), started together, for a module that sends each
    case to all of them: yields {parser: Server}."""
    servers = {}
    try:
        for parser in PARSERS:
            servers[parser] = Server([*args, "--http", parser], tmp_path)
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        survivors = [pid for server in servers.values() for pid in server.cleanup()]
        assert not survivors, f"processes outlived their server: {survivors}"


def on_each(servers: dict, action: Callable):
    """action(server) for every server at once (each waits on its own sockets): {parser: result}."""
    with ThreadPoolExecutor(len(servers)) as pool:
        futures = {parser: pool.submit(action, server) for parser, server in servers.items()}
        return {parser: future.result() for parser, future in futures.items()}


@pytest.fixture(params=PARSERS)
def http_parser(request) -> str:
    """The --http of the server a test starts: a test that takes it runs once per parser."""
    return request.param


@pytest.fixture
def calls(tmp_path) -> Path:
    """The file tests.apps.pressure appends one line to per request it is called for."""
    return tmp_path / "calls"


@pytest.fixture
def serve(start_server, calls, http_parser):
    """serve(*options) -> a one-worker server of tests.apps.pressure recording its calls; the
    tests that use it run once per parser."""

    def start(*args: str):
        return start_server("tests.apps.pressure:app", "--workers", "1", "--http", http_parser,
                            *args, env={"DUCK_TEST_CALLS": str(calls)})

    return start


def app_calls(calls: Path) -> list[str]:
    return calls.read_text().splitlines() if calls.exists() else []


def close_now(sock: socket.socket) -> None:
    """End a connection at once (read_response's reader would keep the descriptor open)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def start_server(tmp_path):
    """start_server(*args, env=..., bind=..., ready=True) -> a running Server."""
    servers: list[Server] = []

    def start(*args: str, env: dict | None = None, bind: str | None = "127.0.0.1:0",
              ready: bool = True, pass_fds: tuple[int, ...] = ()) -> Server:
        server = Server(list(args), tmp_path, env=env, bind=bind, pass_fds=tuple(pass_fds))
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    leftovers = []
    for server in servers:
        leftovers += server.cleanup()
    assert not leftovers, f"processes outlived their test: {leftovers}"


class _SocketReader:
    """One buffered reader per socket, shared by successive responses: a reader per response
    would lose the bytes of a pipelined next response that it had already buffered."""

    _by_socket: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, sock: socket.socket):
        self._file = sock.makefile("rb")

    @classmethod
    def of(cls, sock: socket.socket) -> _SocketReader:
        if sock not in cls._by_socket:
            cls._by_socket[sock] = cls(sock)
        return cls._by_socket[sock]

    def makefile(self, mode: str) -> _SocketReader:  # what HTTPResponse calls
        return self

    def __getattr__(self, name: str):
        return getattr(self._file, name)

    def close(self) -> None:
        pass  # HTTPResponse closes its file after each body; the socket's reader lives on


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Read one HTTP/1.1 response from a raw socket (Content-Length or chunked or to EOF).

    The socket's reader keeps its descriptor open after sock.close() (as any makefile()
    does); shut the socket down to end the connection at once."""
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(_SocketReader.of(sock))
    response.begin()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def recv_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """The TLS tests' CA and certificates (tls_certs.Certs), made once per session."""
    from .tls_certs import Certs

    return Certs(tmp_path_factory.mktemp("tls"))
