"""bench/metrics.py: what --metrics-bind costs, and what a scrape of many workers costs.

1. req/s with metrics on and off in the same run: one worker serving bench/hello.py, its
   master and worker pinned to CPU 1, `wrk -t1 -c64` pinned to CPU 0; ROUNDS rounds, each
   running "off" then "on" (the order alternating), DURATION each after a WARMUP; prints each
   run, the medians and on/off.
2. The master's work for one scrape of 64 workers: the snapshot (64 cells read, a listener's
   TCP_INFO; the memory readings are the master loop's, not a scrape's) plus the Prometheus
   text, timed in this process over an area like the master's (REPEAT times; median, p99).
3. A real scrape with --workers SCRAPE_WORKERS (64): the time from connect to the last byte of
   GET /metrics over the unix socket, SCRAPES times (median, p99), with the server idle.

Runs from this checkout (python -m duck_prefork, so the build of this tree, compiled if
`setup.py build_ext --inplace` was run) with the python that runs it:
    PYTHONPATH=. .venv/bin/python bench/metrics.py
Knobs (environment): ROUNDS=3 DURATION=10s WARMUP=2s REPEAT=500 SCRAPES=50 SCRAPE_WORKERS=64
PARTS="rate render scrape". Needs wrk for part 1. Stops what it starts by PID.
"""

from __future__ import annotations

import http.client
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from benchlib import DuckServer, run_wrk, wrk_errors, wrk_requests_per_second

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from duck_prefork import build  # noqa: E402
from duck_prefork.metrics import exposition, layout  # noqa: E402
from duck_prefork.metrics.counters import RequestCounts  # noqa: E402
from duck_prefork.metrics.gather import Gatherer, WorkerFacts  # noqa: E402
from duck_prefork.metrics.layout import Area, CellWriter  # noqa: E402

COMMAND = [sys.executable, "-m", "duck_prefork"]
SOCKET_DIR = ""  # a temporary directory for the metrics socket, made by main()
ENV = {"PYTHONPATH": str(ROOT)}


def pin(server: DuckServer, cpu: int) -> None:
    for pid in [server.pid, *server.worker_pids()]:
        os.sched_setaffinity(pid, {cpu})


def cpu_busy_elsewhere(seconds: float) -> float:
    """The machine's CPU use in percent of all CPUs over `seconds` (to judge the figures)."""
    return psutil.cpu_percent(interval=seconds)


def rate_part(rounds: int, duration: str, warmup: str) -> None:
    results: dict[str, list[float]] = {"off": [], "on": []}
    socket_dir = SOCKET_DIR
    print(f"req/s, metrics off and on (hello.py, 1 worker on CPU 1, wrk -t1 -c64 -d{duration} "
          f"on CPU 0), {build.DESCRIPTION}")
    for round_ in range(rounds):
        order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
        for mode in order:
            args = ["--metrics-bind", f"unix:{socket_dir}/m.sock"] if mode == "on" else []
            with DuckServer("hello:app", 1, args, env=ENV, command=COMMAND) as server:
                pin(server, 1)
                run_wrk(server.url, 64, warmup, cpu=0)
                load = psutil.cpu_percent(interval=None)
                report = run_wrk(server.url, 64, duration, cpu=0)
                load = psutil.cpu_percent(interval=None)
                rate = wrk_requests_per_second(report)
                results[mode].append(rate)
                print(f"  round {round_ + 1} {mode:3}: {rate:10.0f} req/s, errors "
                      f"{wrk_errors(report)}, machine CPU {load:.0f}%")
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    print(f"  median off {off:.0f}, on {on:.0f}: on/off {on / off:.4f} "
          f"(cost {100 * (1 - on / off):.2f}%)")


def render_part(repeat: int, workers: int = 64) -> None:
    area = Area(bytearray(layout.SIZE))
    gatherer = Gatherer(area)
    facts = []
    counts = RequestCounts()
    for _ in range(1000):
        counts.count("GET", 200, 0.003, 0, 13)
    counts.count("POST", 500, 0.2, 10, 22)
    listener = socket.create_server(("127.0.0.1", 0))
    from duck_prefork.net.listeners import Listener, address_of

    listeners = [Listener(listener, address_of(listener))]
    pid = os.getpid()
    for slot in range(1, workers + 1):
        cell = gatherer.claim(slot)
        gatherer.started_worker(cell, pid + slot)
        CellWriter(area, cell).publish(counts, 1, 3, 0, 0.001)
        facts.append(WorkerFacts(slot, pid, "ready", 0.0, time.monotonic()))
    # The memory readings the master's loop keeps (refreshed there, a few a round, never in
    # a scrape): one real reading of this process for every worker.
    from duck_prefork.metrics.gather import read_memory

    reading = (time.monotonic(), *read_memory(pid))
    for fact in facts:
        fact.pid += fact.slot
        gatherer.memory.readings[fact.pid] = reading
    gatherer.cells = {fact.pid: cell for cell, fact in enumerate(facts)}
    times = []
    size = 0
    for i in range(repeat):
        started = time.perf_counter()
        snapshot = gatherer.snapshot(facts, list(range(1, workers + 1)), listeners,
                                     time.monotonic() + i * 0.02, pid)
        body = exposition.render(snapshot)
        times.append(time.perf_counter() - started)
        size = len(body)
    listener.close()
    times.sort()
    print(f"master's render of {workers} workers (snapshot + Prometheus text, {size} bytes), "
          f"{repeat} times: median {1000 * statistics.median(times):.2f} ms, p99 "
          f"{1000 * times[int(len(times) * 0.99)]:.2f} ms, max {1000 * times[-1]:.2f} ms")


def scrape_part(workers: int, scrapes: int) -> None:
    path = f"{SOCKET_DIR}/m.sock"
    with DuckServer("hello:app", workers, ["--metrics-bind", f"unix:{path}"], env=ENV,
                    command=COMMAND, ready_timeout=300) as server:
        times = []
        size = 0
        for _ in range(scrapes):
            started = time.perf_counter()
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            conn = http.client.HTTPConnection("localhost")
            conn.sock = sock
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            body = response.read()
            conn.close()
            times.append(time.perf_counter() - started)
            assert response.status == 200
            size = len(body)
            time.sleep(0.05)
        times.sort()
        print(f"real scrape of --workers {workers} ({size} bytes), {scrapes} scrapes: median "
              f"{1000 * statistics.median(times):.2f} ms, p99 "
              f"{1000 * times[int(len(times) * 0.99)]:.2f} ms, max {1000 * times[-1]:.2f} ms")
        print(f"  workers running: {len(server.worker_pids())}")


def main() -> None:
    global SOCKET_DIR
    with tempfile.TemporaryDirectory(prefix="duck-bench-metrics-") as SOCKET_DIR:
        run_parts()


def run_parts() -> None:
    parts = os.environ.get("PARTS", "rate render scrape").split()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    if "rate" in parts:
        rate_part(int(os.environ.get("ROUNDS", "3")), os.environ.get("DURATION", "10s"),
                  os.environ.get("WARMUP", "2s"))
    if "render" in parts:
        render_part(int(os.environ.get("REPEAT", "500")))
    if "scrape" in parts:
        scrape_part(int(os.environ.get("SCRAPE_WORKERS", "64")),
                    int(os.environ.get("SCRAPES", "50")))


if __name__ == "__main__":
    main()
