"""Upstream servers for the --upstream tests: the legacy Django project under real gunicorn
(sync workers, or gthread for keep-alive), the raw scriptable upstream, the WebSocket echo
server. Each is a process started by a fixture and stopped by its PID (its children too)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from .conftest import ROOT, wait_for


class Upstream:
    """One upstream process, its output in a file; `address` is what --upstream takes."""

    def __init__(self, argv: list[str], log_path: Path, env: dict | None = None):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DUCK_PREFORK_")}
        full_env.update(env or {})
        full_env["PYTHONPATH"] = str(ROOT)
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.known_pids = {self.pid}
        self.address = ""
        self.port = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 30.0) -> list[str]:
        regex = re.compile(pattern)

        def found():
            matches = regex.findall(self.log())
            if len(matches) >= count:
                return matches
            if self.proc.poll() is not None:
                raise AssertionError(f"upstream exited ({self.proc.returncode}):\n{self.log()}")
            return None

        return wait_for(found, timeout, f"upstream log line {pattern!r}")

    def children(self) -> list[int]:
        try:
            pids = [child.pid for child in psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.known_pids.update(pids)
        return pids

    def stop(self) -> None:
        self.children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in self.known_pids - {self.pid}:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        self._log.close()


def gunicorn(tmp: Path, bind: str, worker_class: str = "sync", workers: int = 2,
             env: dict | None = None) -> Upstream:
    """The legacy Django project under gunicorn; `bind` is 127.0.0.1:0 or unix:PATH."""
    argv = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--worker-class",
            worker_class, "--bind", bind, "--keep-alive", "10", "--timeout", "60",
            "--graceful-timeout", "2", "tests.apps.legacy_django.wsgi:application"]
    if worker_class == "gthread":
        argv[3:3] = ["--threads", "4"]
    upstream = Upstream(argv, tmp / f"gunicorn-{worker_class}.log",
                        env={"DJANGO_SETTINGS_MODULE": "tests.apps.legacy_django.settings",
                             **(env or {})})
    listening = upstream.wait_log(r"Listening at: (\S+) ")[0]
    upstream.wait_log(r"Booting worker with pid", count=workers)
    if listening.startswith("unix:"):
        upstream.address = listening
    else:
        upstream.port = int(listening.rsplit(":", 1)[1])
        upstream.address = f"http://127.0.0.1:{upstream.port}"
    upstream.children()
    return upstream


def raw_upstream(tmp: Path, name: str = "raw") -> Upstream:
    upstream = Upstream([sys.executable, "-m", "tests.apps.raw_upstream", "--port", "0"],
                        tmp / f"{name}.log")
    upstream.port = int(upstream.wait_log(r"ready (\d+)")[0])
    upstream.address = f"http://127.0.0.1:{upstream.port}"
    return upstream


def ws_echo_upstream(tmp: Path) -> Upstream:
    upstream = Upstream([sys.executable, "-m", "tests.apps.ws_echo_upstream", "--port", "0"],
                        tmp / "ws-echo.log")
    upstream.port = int(upstream.wait_log(r"ready (\d+)")[0])
    upstream.address = f"http://127.0.0.1:{upstream.port}"
    return upstream
