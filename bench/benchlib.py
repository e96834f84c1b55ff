"""Shared by bench/balance.py and bench/respawn.py: a duck-prefork server started for a
measurement (and stopped by its PID only), and wrk runs.

Run with the bench venv's python (bench/lib.sh builds it): duck-prefork is next to it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
# The duck-prefork to measure: the bench venv's (this checkout), unless DUCK_BIN names another.
DUCK = Path(os.environ.get("DUCK_BIN") or Path(sys.executable).parent / "duck-prefork")


def duck_has_option(option: str) -> bool:
    """Whether this duck-prefork build knows a command line option (e.g. --reuse-port)."""
    help_text = subprocess.run([str(DUCK), "--help"], capture_output=True, text=True).stdout
    return re.search(rf"(^|\s){re.escape(option)}\b", help_text) is not None


class DuckServer:
    """duck-prefork serving APP from bench/ on a free loopback port, its error log in a file."""

    def __init__(self, app: str, workers: int, args: list[str] | None = None,
                 env: dict[str, str] | None = None, ready_timeout: float = 30.0,
                 command: list[str] | None = None):
        self.log_file = tempfile.NamedTemporaryFile(prefix="duck-bench-", suffix=".log",
                                                    delete=False)
        self.log_path = Path(self.log_file.name)
        # `command`: how to start duck-prefork, if not as DUCK (e.g. python -m duck_prefork).
        self.argv = [*(command or [str(DUCK)]), app, "--bind", "127.0.0.1:0", "--workers",
                     str(workers), "--log-level", "info", *(args or [])]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DUCK_PREFORK_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(self.argv, cwd=HERE, env=full_env, stdin=subprocess.DEVNULL,
                                     stdout=self.log_file, stderr=self.log_file,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self.ctime = psutil.Process(self.pid).create_time()
        self.port = 0
        try:
            port = self.wait_log(r"listening on .*?http://127\.0\.0\.1:(\d+)", ready_timeout)
            self.port = int(port)
            self.wait_log(r"ready: \d+ workers? serving", ready_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float) -> str:
        """The first group of the first match of PATTERN in the log; waits for it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log())
            if match:
                return match.group(1) if regex.groups else match.group(0)
            if self.proc.poll() is not None:
                raise RuntimeError(f"duck-prefork exited ({self.proc.returncode}):\n"
                                   f"{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"duck-prefork did not log {pattern!r} within {timeout} s "
                                   f"(log: {self.log_path})")
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        try:
            return [child.pid for child in psutil.Process(self.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 60.0) -> int:
        """TERM the master (a graceful stop: the workers drain and run lifespan shutdown);
        SIGKILL what is left of the tree it had, by PID, after `timeout`."""
        try:
            master = psutil.Process(self.pid)
            tree = [master, *master.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = -signal.SIGKILL
        for process in tree:
            try:
                if process.is_running():  # is_running() compares the start time: not a reused PID
                    process.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            self.proc.wait(10)
        self.log_file.close()
        return code

    def __enter__(self) -> DuckServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_wrk(url: str, connections: int, duration: str, headers: list[str] = (),
            threads: int = 1, cpu: int | None = None, extra: list[str] = ()) -> str:
    """wrk's report (text); raises RuntimeError if wrk fails."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}", "--latency"]
    for header in headers:
        argv += ["-H", header]
    argv += [*extra, url]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def wrk_requests_per_second(report: str) -> float:
    match = re.search(r"^Requests/sec:\s*([\d.]+)", report, re.M)
    if not match:
        raise RuntimeError(f"no Requests/sec in the wrk report:\n{report}")
    return float(match[1])


def wrk_errors(report: str) -> int:
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", report)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    bad_status = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    if bad_status:
        errors += int(bad_status[1])
    return errors
