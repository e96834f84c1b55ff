"""bench/proxy_conns.py: new connections per second with a PROXY v2 header against plain ones.

Two one-worker servers of bench/hello.py run side by side, one with `--proxy-protocol v2`, one
without; each connection sends one GET with `Connection: close` (after a 28-byte PROXY v2
header, TCP4, on the first), reads the answer to the end, and closes: so every request is a new
connection, accept and stages and HTTP/1.1 and close, which is where a PROXY header costs. The
runs alternate, ROUNDS times (the first of each round switching), DURATION seconds each, so
both see the same machine. Reported: the medians of connections per second and of the worker's
CPU time per connection (user + system, psutil), and proxy / plain for each. The CPU figure is
the one to trust on a shared machine or when the client (Python, asyncio over uvloop, CLIENTS
processes of CONCURRENCY connections each) is the bottleneck; the client's share of the
machine is in the report's header (load average before and after).

Knobs (environment): ROUNDS=5 DURATION=5 (s) CONCURRENCY=32 CLIENTS=1, SERVER_CPU and
CLIENT_CPU (taskset-style CPU numbers; default: server on the last CPU, clients on the others,
when there are at least two), DUCK_ARGS (flags for both servers).

Run it from a checkout with a python that has the project's dependencies, e.g.
    PYTHONPATH=. .venv/bin/python bench/proxy_conns.py
(the servers are `python -m duck_prefork` from this checkout: the compiled build when it is
current, see README, Builds).
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import shlex
import statistics
import struct
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import DuckServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
# A PROXY v2 header as HAProxy's send-proxy-v2 writes it for an IPv4 client (no TLVs).
PROXY_V2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes((0x21, 0x11)) + struct.pack("!H", 12)
            + bytes((203, 0, 113, 7, 127, 0, 0, 1)) + struct.pack("!HH", 56324, 8000))


class _Exchange(asyncio.Protocol):
    def __init__(self, done: asyncio.Future) -> None:
        self.done = done
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.received)


async def _client(port: int, payload: bytes, until: float, counts: list[int]) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        done: asyncio.Future = loop.create_future()
        try:
            transport, _ = await loop.create_connection(functools.partial(_Exchange, done),
                                                        "127.0.0.1", port)
        except OSError:
            counts[1] += 1
            continue
        transport.write(payload)
        if await done > 0:
            counts[0] += 1
        else:
            counts[1] += 1


def _client_process(port: int, payload: bytes, duration: float, concurrency: int,
                    cpus: list[int], results: multiprocessing.Queue) -> None:
    import uvloop

    if cpus:
        os.sched_setaffinity(0, cpus)

    async def run() -> list[int]:
        counts = [0, 0]  # answered, failed
        until = asyncio.get_running_loop().time() + duration
        await asyncio.gather(*(_client(port, payload, until, counts)
                               for _ in range(concurrency)))
        return counts

    results.put(uvloop.run(run()))


def measure(server: DuckServer, payload: bytes, duration: float, concurrency: int,
            clients: int, client_cpus: list[int]) -> tuple[float, float, int]:
    """(connections per second, worker CPU microseconds per connection, failures)."""
    worker = psutil.Process(server.worker_pids()[0])
    results: multiprocessing.Queue = multiprocessing.Queue()
    processes = [multiprocessing.Process(target=_client_process, args=(
        server.port, payload, duration, concurrency, client_cpus, results))
        for _ in range(clients)]
    before = worker.cpu_times()
    start = time.perf_counter()
    for process in processes:
        process.start()
    counts = [results.get(timeout=duration + 60) for _ in processes]
    elapsed = time.perf_counter() - start
    after = worker.cpu_times()
    for process in processes:
        process.join(10)
    answered = sum(count[0] for count in counts)
    failed = sum(count[1] for count in counts)
    cpu = (after.user - before.user) + (after.system - before.system)
    return answered / elapsed, cpu / max(answered, 1) * 1e6, failed


def main() -> int:
    rounds = int(os.environ.get("ROUNDS", "5"))
    duration = float(os.environ.get("DURATION", "5"))
    concurrency = int(os.environ.get("CONCURRENCY", "32"))
    clients = int(os.environ.get("CLIENTS", "1"))
    extra = shlex.split(os.environ.get("DUCK_ARGS", ""))
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = [int(os.environ["SERVER_CPU"])] if "SERVER_CPU" in os.environ else \
        cpus[-1:] if len(cpus) > 1 else []
    client_cpus = [int(c) for c in os.environ["CLIENT_CPU"].split(",")] \
        if "CLIENT_CPU" in os.environ else [c for c in cpus if c not in server_cpu]
    command = [sys.executable, "-m", "duck_prefork"]
    env = {"PYTHONPATH": str(ROOT)}
    if os.environ.get("DUCK_PREFORK_NO_EXTENSIONS"):  # (DuckServer drops DUCK_PREFORK_*)
        env["DUCK_PREFORK_NO_EXTENSIONS"] = "1"
    load_before = os.getloadavg()
    modes = {"plain": (REQUEST, []), "proxy-v2": (PROXY_V2 + REQUEST, ["--proxy-protocol", "v2"])}
    servers = {}
    figures: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in modes}
    try:
        for mode, (_, args) in modes.items():
            servers[mode] = DuckServer("hello:app", 1, [*args, *extra],
                                       env=env, command=command)
            if server_cpu:
                for pid in servers[mode].worker_pids():
                    os.sched_setaffinity(pid, server_cpu)
        build = servers["plain"].log()
        print(f"bench/proxy_conns: {rounds} rounds of {duration:g} s per mode, {clients} client "
              f"process(es) x {concurrency} connections, server CPU {server_cpu or 'any'}, "
              f"clients {client_cpus or 'any'}", file=sys.stderr)
        order = list(modes)
        for number in range(rounds):
            for mode in order if number % 2 == 0 else order[::-1]:
                payload = modes[mode][0]
                result = measure(servers[mode], payload, duration, concurrency, clients,
                                 client_cpus)
                figures[mode].append(result)
                print(f"bench/proxy_conns: round {number + 1} {mode}: {result[0]:,.0f} conn/s, "
                      f"{result[1]:.1f} us worker CPU per connection, {result[2]} failed",
                      file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    load_after = os.getloadavg()
    rate = {mode: statistics.median(r[0] for r in results) for mode, results in figures.items()}
    cpu = {mode: statistics.median(r[1] for r in results) for mode, results in figures.items()}
    failed = {mode: sum(r[2] for r in results) for mode, results in figures.items()}
    print("## New connections per second: PROXY v2 header against plain")
    print()
    print(f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs; load "
          f"average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"{'compiled' if 'compiled' in build or 'pure Python' not in build else 'pure-Python'}"
          f" build; one worker each; ROUNDS={rounds} DURATION={duration:g} "
          f"CONCURRENCY={concurrency} CLIENTS={clients}")
    print()
    print("| mode | conn/s (median) | worker CPU per connection (median) | failed |")
    print("| --- | --- | --- | --- |")
    for mode in modes:
        print(f"| {mode} | {rate[mode]:,.0f} | {cpu[mode]:.1f} us | {failed[mode]} |")
    print()
    print(f"proxy-v2 / plain: {rate['proxy-v2'] / rate['plain']:.3f}x conn/s, "
          f"{cpu['proxy-v2'] / cpu['plain']:.3f}x worker CPU per connection")
    return 0


if __name__ == "__main__":
    sys.exit(main())
