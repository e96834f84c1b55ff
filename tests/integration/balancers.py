"""Real balancers in front of real servers, on loopback: HAProxy and nginx started from the
configurations in docs/deploy.md, a load that counts every failed request, and the scenario of
one host stopped under load. Used by tests/integration/test_balancers.py (duck-prefork) and by
bench/balancer_drain.py (the same scenario against uvicorn, for comparison).

The guide's configurations are used as written; only the example addresses are replaced by
loopback ones (the two hosts are 127.0.0.2 and 127.0.0.3, which Linux routes to lo), and what a
test must scale down (a timeout) is replaced by name, in the open, by the test.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "deploy.md"
HAPROXY = "/usr/sbin/haproxy"
NGINX = "/usr/sbin/nginx"
HOSTS = ("127.0.0.2", "127.0.0.3")  # the guide's 10.0.0.11 and 10.0.0.12
GUIDE_HOSTS = ("10.0.0.11:8000", "10.0.0.12:8000")
GUIDE_FRONTEND = "0.0.0.0:80"
GUIDE_APP = "myproject.asgi:application"
APP = "tests.apps.balanced:app"

# The guide's HAProxy sends PROXY v2 to the servers: what a server without PROXY protocol
# (uvicorn, in bench/balancer_drain.py) needs taken out, on each side (the guide says so).
HAPROXY_PROXY_V2 = " send-proxy-v2 check-send-proxy"
# The guide's example address of HAProxy, trusted to send the PROXY header; on loopback
# HAProxy connects from 127.0.0.1.
GUIDE_BALANCER = "10.0.0.2"


def guide_block(kind: str, name: str) -> str:
    """The fenced block that follows `<!-- KIND: NAME -->` in docs/deploy.md."""
    text = GUIDE.read_text()
    match = re.search(rf"<!-- {kind}: {name} -->\n```[a-z]*\n(.*?)```", text, re.S)
    if match is None:
        raise AssertionError(f"docs/deploy.md has no <!-- {kind}: {name} --> block")
    return match.group(1)


def free_port(hosts: tuple[str, ...] = ("127.0.0.1",)) -> int:
    """A TCP port free on every one of `hosts` (found by binding port 0 on the first)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = first.getsockname()[1]
            try:
                for host in hosts[1:]:
                    with socket.socket() as other:
                        other.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port on " + ", ".join(hosts))


def at_loopback(text: str, port: int, frontend: int) -> str:
    for guide, host in zip(GUIDE_HOSTS, HOSTS, strict=True):
        text = text.replace(guide, f"{host}:{port}")
    return text.replace(GUIDE_FRONTEND, f"127.0.0.1:{frontend}")


def guide_command(name: str, host: str, port: int, workers: int = 2) -> list[str]:
    """The guide's duck-prefork command line (without the program) for one loopback host."""
    args = shlex.split(guide_block("command", name))[1:]
    replace = {GUIDE_APP: APP, GUIDE_BALANCER: "127.0.0.1"}
    args = [replace.get(arg, arg) for arg in args]
    args[args.index("--bind") + 1] = f"{host}:{port}"
    args[args.index("--workers") + 1] = str(workers)
    return args


def wait_port(host: str, port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None:
                raise AssertionError(
                    f"{process.args[0]} exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.05)


class Balancer:
    """A balancer process started on a configuration file, stopped by its pid."""

    def __init__(self, argv: list[str], port: int, log_path: Path):
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_port("127.0.0.1", port, self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def start_haproxy(tmp_path: Path, port: int, frontend: int, agent_port: int = 0,
                  proxy_v2: bool = True) -> Balancer:
    """HAProxy on the guide's configuration; with `agent_port`, its agent-check variant (the
    guide's default-server line for it, on that port); without `proxy_v2`, plain HTTP to the
    servers (the guide's one change on this side)."""
    config = at_loopback(guide_block("config", "haproxy"), port, frontend)
    if agent_port:
        line = guide_block("config", "haproxy-agent").replace("9100", str(agent_port))
        config = re.sub(r"    default-server .*\n", line, config)
    assert HAPROXY_PROXY_V2 in config
    if not proxy_v2:
        config = config.replace(HAPROXY_PROXY_V2, "")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    return Balancer([HAPROXY, "-db", "-f", str(path)], frontend, tmp_path / "haproxy.log")


def start_nginx(tmp_path: Path, port: int, frontend: int,
                edit: Callable[[str], str] = lambda text: text) -> Balancer:
    """nginx with the guide's upstream and server blocks, inside the smallest main
    configuration that runs unprivileged in `tmp_path`."""
    site = tmp_path / "site.conf"
    site.write_text(edit(at_loopback(guide_block("config", "nginx"), port, frontend)))
    temp = {name: tmp_path / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for folder in temp.values():
        folder.mkdir(exist_ok=True)
    main = tmp_path / "nginx.conf"
    main.write_text(f"""daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx-error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp_path}/nginx-access.log;
    client_body_temp_path {temp['body']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
    include {site};
}}
""")
    return Balancer([NGINX, "-p", str(tmp_path), "-c", str(main), "-e",
                     str(tmp_path / "nginx-error.log")], frontend, tmp_path / "nginx.log")


class Load:
    """Clients, each on its own keep-alive connection to the balancer (a new one after a
    failure or a close), sending requests until stop(); every request that does not end in a
    200 is a failure, counted with why. `served` counts the answers by host."""

    def __init__(self, port: int, clients: int = 4, method: str = "GET", pause: float = 0.002):
        self.port = port
        self.method = method
        self.pause = pause  # between a client's requests: steady, not all the CPU there is
        self.sent = 0
        self.failures: list[str] = []
        self.served: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(30)

    def count(self, host: str) -> int:
        with self._lock:
            return self.served[host]

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stopping.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            try:
                conn.request(self.method, "/work", body=b"x" * 100 if self.method == "POST"
                             else None)
                response = conn.getresponse()
                body = response.read()
                error = None if response.status == 200 else f"status {response.status}"
                if response.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:  # every failure is counted and reported
                error, body = repr(exc), b""
                conn.close()
                conn = None
            with self._lock:
                self.sent += 1
                if error is None:
                    self.served[body.decode("ascii", "replace")] += 1
                else:
                    self.failures.append(error)
            self._stopping.wait(self.pause)
        if conn is not None:
            conn.close()


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def stop_one_under_load(frontend: int, stop: Callable[[], None],
                        wait_stopped: Callable[[], None], clients: int = 4) -> Load:
    """Steady load through the balancer; once both hosts serve, `stop()` the first one, wait
    for it to be gone, and keep the load on until the second host has served a good number
    more. Returns the load (stopped) for the counts."""
    load = Load(frontend, clients)
    try:
        wait_until(lambda: all(load.count(host) >= 20 for host in HOSTS), 30,
                   "both hosts serving through the balancer")
        stop()
        wait_stopped()
        after = load.count(HOSTS[1])
        wait_until(lambda: load.count(HOSTS[1]) >= after + 200, 60,
                   "the second host serving on")
    finally:
        load.stop()
    return load
