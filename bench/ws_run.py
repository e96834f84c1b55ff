"""WebSocket echo throughput: duck-prefork against uvicorn (--ws wsproto) in the same run.

    python bench/ws_run.py            # REPS=3 SECONDS=5, 1 and 100 connections

Each server (1 worker, pinned to CPU 1) serves bench/ws_app.py; bench/ws_echo.py (pinned to
CPU 0) keeps 1 or 100 connections busy with 64-byte messages, one in flight per connection.
Rounds are interleaved; the table gives the median messages per second and the ratio.
Knobs (environment): REPS, SECONDS, DUCK (duck-prefork script), UVICORN (uvicorn script,
default bench/.venv/bin/uvicorn as built by bench/run).
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REPS = int(os.environ.get("REPS", "3"))
SECONDS = os.environ.get("SECONDS_PER_RUN", os.environ.get("SECONDS", "5"))
DUCK = os.environ.get("DUCK", str(ROOT / ".venv/bin/duck-prefork"))
UVICORN = os.environ.get("UVICORN", str(HERE / ".venv/bin/uvicorn"))
CONNECTIONS = (1, 100)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(name: str, port: int) -> list[str]:
    if name == "duck-prefork":
        return [DUCK, "ws_app:app", "--workers", "1", "--bind", f"127.0.0.1:{port}",
                "--log-level", "warning"]
    return [UVICORN, "ws_app:app", "--ws", "wsproto", "--http", "httptools", "--loop",
            "uvloop", "--port", str(port), "--log-level", "warning"]


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start listening")


def measure(name: str, connections: int) -> float:
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "1", *server_command(name, port)], cwd=HERE,
                            start_new_session=True)
    try:
        wait_listening(port, proc)
        out = subprocess.run(["taskset", "-c", "0", sys.executable, str(HERE / "ws_echo.py"),
                              str(port), str(connections), SECONDS], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
        return float(out.strip())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the session we started: server and its workers
        proc.wait(30)


def main() -> None:
    servers = ("duck-prefork", "uvicorn-wsproto")
    results = {(s, c): [] for s in servers for c in CONNECTIONS}
    for rep in range(REPS):
        order = servers if rep % 2 == 0 else servers[::-1]
        for connections in CONNECTIONS:
            for name in order:
                value = measure(name, connections)
                results[(name, connections)].append(value)
                print(f"round {rep + 1}: {name} {connections} conn: {value:,.0f} msg/s",
                      file=sys.stderr)
    print("| server | 1 connection msg/s | 100 connections msg/s |")
    print("| --- | ---: | ---: |")
    medians = {key: statistics.median(values) for key, values in results.items()}
    for name in servers:
        print(f"| {name} | {medians[(name, 1)]:,.0f} | {medians[(name, 100)]:,.0f} |")
    ratio = [medians[("duck-prefork", c)] / medians[("uvicorn-wsproto", c)]
             for c in CONNECTIONS]
    print(f"| ratio | {ratio[0]:.2f}x | {ratio[1]:.2f}x |")


if __name__ == "__main__":
    main()
