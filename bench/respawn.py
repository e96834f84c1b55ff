"""bench/respawn: how long a SIGKILLed worker takes to be replaced and serving again.

Starts `duck-prefork whoami:app --workers 1` (plus DUCK_ARGS), then KILLS times: SIGKILL the
worker, and at once send requests, each on a new connection, until one is answered by a
different pid. The first request waits in the listening socket's queue (the master keeps the
socket open) until the replacement accepts it, so the time from the kill to that answer is
what a client sees: the master noticing the death, forking, the new worker importing the app,
running lifespan startup and accepting. Kills are SPACING seconds apart, counted from the
replacement's first answer: a worker that dies younger than 5 s counts as a crash and its
replacement is delayed (the crash back-off), which is not what this measures.

Knobs (environment): KILLS=20 SPACING=5.5 (s) DUCK_ARGS="" DUCK_BIN (default: this checkout's)
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import statistics
import sys
import time

from benchlib import DuckServer

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def ask_pid(port: int, timeout: float = 5.0) -> int | None:
    """The pid in whoami's answer to one request on a new connection, or None if it failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(REQUEST)
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
    except OSError:
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(body) if head.startswith(b"HTTP/1.1 200") and body.isdigit() else None


def kill_and_wait(port: int, victim: int, deadline: float = 30.0) -> tuple[float, int]:
    """SIGKILL VICTIM; seconds until another pid answered, and that pid."""
    start = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    while True:
        pid = ask_pid(port)
        elapsed = time.perf_counter() - start
        if pid is not None and pid != victim:
            return elapsed, pid
        if elapsed > deadline:
            raise RuntimeError(f"no new worker answered within {deadline} s of the kill")
        time.sleep(0.001)  # refused or reset (the dying worker had it): try again


def main() -> int:
    kills = int(os.environ.get("KILLS", "20"))
    spacing = float(os.environ.get("SPACING", "5.5"))
    args = shlex.split(os.environ.get("DUCK_ARGS", ""))
    times = []
    with DuckServer("whoami:app", 1, args) as server:
        worker = ask_pid(server.port)
        if worker is None:
            raise RuntimeError(f"the server does not answer (log: {server.log_path})")
        print(f"bench/respawn: duck-prefork pid {server.pid}, {kills} kills {spacing} s apart",
              file=sys.stderr)
        for number in range(1, kills + 1):
            time.sleep(spacing)
            elapsed, worker_after = kill_and_wait(server.port, worker)
            times.append(elapsed * 1000)
            print(f"bench/respawn: kill {number}/{kills}: pid {worker} -> {worker_after} "
                  f"serving after {elapsed * 1000:.1f} ms", file=sys.stderr)
            worker = worker_after
        crashes = server.log().count("restarting in")
    times.sort()
    print(f"## SIGKILLed worker: replaced and serving again, {kills} kills")
    print()
    print(f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"`duck-prefork whoami:app --workers 1{' ' + ' '.join(args) if args else ''}`; "
          f"kills {spacing} s apart; from the kill to the first answer from the new worker")
    print(f"- median {statistics.median(times):.1f} ms, min {times[0]:.1f}, "
          f"p90 {times[int(len(times) * 0.9) - 1]:.1f}, max {times[-1]:.1f} "
          f"(target: median < 100 ms)")
    print(f"- every kill, ms: {', '.join(f'{t:.1f}' for t in times)}")
    if crashes:
        print(f"- {crashes} replacements were delayed by the crash back-off: raise SPACING")
    return 0


if __name__ == "__main__":
    sys.exit(main())
