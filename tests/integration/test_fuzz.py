"""Fuzzing a live worker with random and mutated requests (hypothesis), one per parser
(--http httptools and --http h11), sent the same bytes at once.

Each example is sent on a new connection (sometimes followed by a half-close, so the server
also meets EOF in every parser state) and whatever comes back is read briefly. Afterwards the
worker must be the same process (its PID from /pid of tests/apps/basic.py, which is also the
well-formed request on a fresh connection that must get a 200), and the server must not have
logged a traceback or an error: no client bytes may crash or upset a worker.

Reproducible: derandomize=True draws the same examples on every run. Shrinking is off: after
a crash every later example fails too, and each example costs a round trip; the failing bytes
are in the assertion message as they are.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from .conftest import on_each, running_servers
from .wire import LogWatch, exchange, parse_responses

pytestmark = pytest.mark.timeout(120)

APP = "tests.apps.basic:app"
H = b"Host: fuzz.test\r\n"

SEEDS = [
    b"GET /echo?a=1&b=2 HTTP/1.1\r\n" + H + b"Accept: */*\r\nX-Pad: value\r\n\r\n",
    b"POST /echo HTTP/1.1\r\n" + H + b"Content-Type: text/plain\r\nContent-Length: 11\r\n\r\n"
    b"hello world",
    b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"GET / HTTP/1.0\r\nUser-Agent: fuzz\r\n\r\n",
    b"GET /scope HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\n" + H + b"\r\nPOST /echo HTTP/1.1\r\n" + H +
    b"Content-Length: 2\r\nConnection: close\r\n\r\nhi",
]
SPECIAL = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b";", b",", b"\xff", b"\x7f",
           b"0", b"-", b"\r\n\r\n", b"\r\n ", b"chunked", b"Content-Length: 5\r\n",
           b"Transfer-Encoding: chunked\r\n", b"HTTP/1.1", b"ffffffffffffffffffff"]


@st.composite
def requests(draw) -> tuple[bytes, bool]:
    """(bytes to send, whether to half-close afterwards)."""
    half_close = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=600)), half_close
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup-line",
                                   "splice-binary"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.sampled_from(SPECIAL))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
        elif op == "dup-line":
            lines = bytes(data).split(b"\r\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            data = bytearray(b"\r\n".join(lines))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data) or b"\r\n", half_close


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    with running_servers([APP, "--workers", "1"], tmp_path_factory.mktemp("fuzz")) as servers:
        for server in servers.values():
            server.worker_pid = _pid(server)
            server.log_watch = LogWatch(server)
        yield servers


def _pid(server) -> int | None:
    ex = exchange(server.port, b"GET /pid HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close"
                  b"\r\n\r\n", idle=5.0)
    responses = parse_responses(ex.data).responses
    if [r.status for r in responses] != [200]:
        return None
    return int(responses[0].body)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], print_blob=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(example=requests())
def test_worker_survives_any_bytes(servers, example):
    on_each(servers, lambda server: survives(server, *example))


def survives(server, data: bytes, half_close: bool) -> None:
    """(The answers are not compared between parsers here: read with 0.1 s of patience, they
    depend on timing. The corpus and the bad-request suite compare them.)"""
    ex = exchange(server.port, data, idle=0.1, first=0.2, half_close=half_close)
    pid = _pid(server)
    problems = server.log_watch.new_problems()
    context = (f"sent {data!r} (half-close: {half_close}); got {ex.data[:200]!r}"
               f"{' closed' if ex.closed else ' open'}")
    assert pid == server.worker_pid, f"worker {server.worker_pid} -> {pid} after: {context}"
    assert not problems, f"the server logged a problem after: {context}\n{problems}"
