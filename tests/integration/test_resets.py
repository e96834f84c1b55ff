"""Clients that reset their connection (RST, via SO_LINGER 0) at every stage of a request are
a normal event: nothing is logged as an error, and nothing is left behind in the worker.

Measured inside the worker by tests/apps/introspect.py (/stats): asyncio tasks, open
connections, live HttpConnection / RequestData / Request objects, pending futures and timers,
and RSS. uvicorn, for one, leaks a keep-alive timer per reset connection.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections import Counter

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.timeout(180)

APP = "tests.apps.introspect:app"
TOTAL_RESETS = 10_000
PER_KIND_PER_BATCH = 40  # connections of each kind open at once
WARM_UP_BATCHES = 3
RSS_GROWTH_LIMIT = 20 * 1024 * 1024
LINGER_RESET = struct.pack("ii", 1, 0)

# What the client does before it resets, and the state /stats?quick=1 reports for such a
# connection once the worker has caught up (None: reset at once, no waiting).
KINDS = {
    "connect": None,  # reset right after connect(), racing the worker's accept()
    "accepted": "fresh",  # accepted by the worker, not a byte sent
    "half_head": "partial_head",  # half a request head
    "body_pending": "request",  # POST head complete, body incomplete: the app awaits receive()
    "slow_pending": "request",  # /slow?delay=0.2 sleeping before its response
    "streaming": "request",  # /stream between chunks, the first one read
    "flooding": "request",  # /flood: the client stopped reading, the app awaits drain()
    "idle": "idle",  # after a complete keep-alive response
}

HALF_HEAD = b"GET /stream?n=3 HTTP/1.1\r\nHost: test\r\nUser-Ag"
BODY_PENDING = (b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 100000\r\n\r\n" + b"x" * 1000)
SLOW = b"GET /slow?delay=0.2 HTTP/1.1\r\nHost: test\r\n\r\n"
STREAM = b"GET /stream?n=100000&delay=0.05 HTTP/1.1\r\nHost: test\r\n\r\n"
FLOOD = b"GET /flood?n=100000 HTTP/1.1\r\nHost: test\r\n\r\n"
IDLE = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
IDLE_END = b"Hello, world!"


@pytest.fixture
def server(start_server, http_parser):
    # Timeouts long enough that the per-second sweep never cleans up for the server: whatever
    # is still there at the end was left behind by the resets themselves.
    return start_server(APP, "--workers", "1", "--keep-alive", "300", "--header-timeout", "300",
                        "--http", http_parser)


def stats(server, quick: bool = False) -> dict:
    """GET /stats on a fresh connection (closed by the server after the response)."""
    status, _, body = server.request("GET", "/stats?quick=1" if quick else "/stats",
                                     headers={"Connection": "close"})
    assert status == 200, body
    return json.loads(body)


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    sock.close()


def recv_until(sock: socket.socket, marker: bytes, limit: int = 1 << 20) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed by the server after {data[:200]!r}"
        data += chunk
        assert len(data) < limit, f"{marker!r} not found in {len(data)} bytes"
    return data


def recv_at_least(sock: socket.socket, size: int) -> None:
    received = 0
    while received < size:
        chunk = sock.recv(65536)
        assert chunk, "connection closed by the server mid-response"
        received += len(chunk)


def run_batch(server, counts: dict[str, int], tally: Counter) -> None:
    """Bring counts[kind] connections of each kind to their stage, all open at once, wait
    until the worker reports them in that state, then reset them all."""
    address = ("127.0.0.1", server.port)
    socks: dict[str, list[socket.socket]] = {kind: [] for kind in KINDS}

    def open_one(kind: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if kind == "flooding":  # a small window: the server's buffers fill after little data
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.settimeout(10)
        sock.connect(address)
        return sock

    try:
        for kind, count in counts.items():
            for _ in range(count):
                sock = open_one(kind)
                if kind == "connect":
                    reset(sock)
                    tally[kind] += 1
                else:
                    socks[kind].append(sock)
        # Send every request first, so the worker works on all of them at once, then read.
        for kind, payload in (("half_head", HALF_HEAD), ("body_pending", BODY_PENDING),
                              ("streaming", STREAM), ("flooding", FLOOD), ("idle", IDLE)):
            for sock in socks[kind]:
                sock.sendall(payload)
        for sock in socks["streaming"]:
            recv_until(sock, b"chunk 0\n")
        for sock in socks["flooding"]:
            recv_at_least(sock, 16 * 1024)
        for sock in socks["idle"]:
            recv_until(sock, IDLE_END)
        # Last, the requests on a clock: the 0.2 s must outlast the wait below.
        for sock in socks["slow_pending"]:
            sock.sendall(SLOW)

        expected = Counter()
        for kind, sockets in socks.items():
            if KINDS[kind] is not None:
                expected[KINDS[kind]] += len(sockets)
        expected["write_paused"] = len(socks["flooding"])

        def in_place():
            states = stats(server, quick=True)["states"]
            return all(states[name] >= count for name, count in expected.items())

        wait_for(in_place, timeout=20, what=f"the worker to hold {dict(expected)}")
        for sock in socks["slow_pending"]:
            sock.setblocking(False)
            try:
                answered = sock.recv(1)
            except BlockingIOError:
                answered = b""
            if answered:  # too late to test this stage on this connection
                tally["slow_answered_first"] += 1
    finally:
        for kind, sockets in socks.items():
            for sock in sockets:
                reset(sock)
            tally[kind] += len(sockets)


def run_resets(server, total: int, tally: Counter) -> None:
    per_kind = {kind: total // len(KINDS) for kind in KINDS}
    for kind in list(KINDS)[:total % len(KINDS)]:
        per_kind[kind] += 1
    while any(per_kind.values()):
        counts = {kind: min(PER_KIND_PER_BATCH, left) for kind, left in per_kind.items()}
        run_batch(server, counts, tally)
        for kind, count in counts.items():
            per_kind[kind] -= count


def wait_settled(server, baseline: dict, what: str, keys=("connections", "request_tasks",
                                                          "tasks")) -> dict:
    """Poll /stats until `keys` are at their `baseline` values; fail with the last stats."""
    last = {}

    def check():
        last.update(stats(server))
        return all(last[key] == baseline[key] for key in keys)

    try:
        wait_for(check, timeout=30, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nbaseline: {baseline}\nlast:     {last}") from None
    time.sleep(1.5)  # let a tick or two pass: what is still pending is not on its way out
    return stats(server)


def test_resets_at_every_stage_leave_nothing_behind(server):
    # Warm up with a few batches of every kind, so that allocator pools, caches and socket
    # buffers reach their working size before the baseline is taken.
    for _ in range(5):
        assert server.request("GET", "/")[0] == 200
    run_resets(server, WARM_UP_BATCHES * PER_KIND_PER_BATCH * len(KINDS), Counter())
    baseline = wait_settled(server, {"connections": 0, "request_tasks": 0},
                            "the worker to be idle after the warm-up",
                            keys=("connections", "request_tasks"))

    started = time.monotonic()
    tally: Counter = Counter()
    run_resets(server, TOTAL_RESETS, tally)
    elapsed = time.monotonic() - started
    assert sum(tally[kind] for kind in KINDS) == TOTAL_RESETS

    after = wait_settled(server, baseline, "connections and tasks back to the baseline")
    keys = ("tasks", "request_tasks", "connections", "http_connections", "request_data",
            "requests", "transports", "pending_futures", "timers", "timer_handles",
            "gc_objects", "allocated_blocks", "rss")
    report = "\n".join(f"  {key:17} {baseline[key]:>12} -> {after[key]:>12}" for key in keys)
    print(f"\n{TOTAL_RESETS} resets in {elapsed:.1f} s: {dict(tally)}\n{report}")

    for key in ("tasks", "request_tasks", "connections", "http_connections", "request_data",
                "requests", "transports", "pending_futures", "timers"):
        assert after[key] == baseline[key], f"{key} left behind:\n{report}"
    assert after["states"] == baseline["states"], report
    # Anything kept per reset connection, even one small object, adds up to 10,000 of them.
    for key in ("gc_objects", "allocated_blocks"):
        assert after[key] - baseline[key] < TOTAL_RESETS // 4, f"{key} grew:\n{report}"
    assert after["rss"] - baseline["rss"] < RSS_GROWTH_LIMIT, f"rss grew:\n{report}"
    # A /slow response that arrived before the reset did not test its stage: a few may, in a
    # slow run; many would mean the test no longer tests what it says.
    assert tally["slow_answered_first"] <= tally["slow_pending"] // 10, dict(tally)

    log = server.log()
    assert "Traceback" not in log, log
    assert [line for line in log.splitlines() if "ERROR" in line] == [], log
    assert "Exception in callback" not in log and "never retrieved" not in log, log
