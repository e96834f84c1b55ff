"""The known HTTP/2 attacks, scripted frame by frame (h2wire.py over a raw socket): each ends in
a GOAWAY or a close within a deadline, the worker's memory stays bounded, and an HTTP/1.1
client is served meanwhile."""

from __future__ import annotations

import time

import psutil
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    GoAwayFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from .h2wire import H2Wire

pytestmark = pytest.mark.timeout(120)

APP = "tests.apps.http2:app"
ENHANCE_YOUR_CALM = 11
PROTOCOL_ERROR = 1
# How long the end of an attack may take on a busy 2-core machine (typically well under 1 s).
DEADLINE = 5.0
MEMORY_GROWTH = 40 * 1024 * 1024  # bytes the worker may grow by during one attack


@pytest.fixture
def target(start_server):
    server = start_server(APP, "--workers", "1", "--send-timeout", "2", bind="127.0.0.1:0")
    (pid,) = server.worker_pids()
    worker = psutil.Process(pid)
    before = worker.memory_info().rss
    yield server
    assert worker.is_running(), "the worker died"
    assert worker.memory_info().rss - before < MEMORY_GROWTH
    status, _, body = server.request("GET", "/")
    assert status == 200 and body.startswith(b"1.1 ")


def send_quietly(wire: H2Wire, data: bytes) -> None:
    """Attack bytes; the server may have closed on us already."""
    try:
        wire.send(data)
    except OSError:
        pass


def ends(wire: H2Wire, server, codes: tuple[int, ...]) -> None:
    """Meanwhile an HTTP/1.1 client is served; then a GOAWAY with one of `codes` (or a bare
    close) arrives within DEADLINE of the attack's last byte."""
    status, _, _ = server.request("GET", "/")
    assert status == 200
    started = time.monotonic()
    goaway = wire.goaway(timeout=DEADLINE)
    if goaway is not None:
        assert goaway.error_code in codes, goaway
    assert wire.closed_within(DEADLINE - (time.monotonic() - started) + 1)
    wire.close()


def test_rapid_reset(target):
    """HEADERS then RST_STREAM, over and over (CVE-2023-44487)."""
    wire = H2Wire(target.port)
    data = b"".join(wire.headers(stream_id, "/slow?delay=5").serialize()
                    + RstStreamFrame(stream_id, error_code=8).serialize()
                    for stream_id in range(1, 4000, 2))
    send_quietly(wire, data)
    ends(wire, target, (ENHANCE_YOUR_CALM,))
    assert "stream resets a second: GOAWAY ENHANCE_YOUR_CALM" in target.log()


def test_endless_continuation(target):
    wire = H2Wire(target.port)
    first = wire.headers(1, "/", end_headers=False)
    frames = [first.serialize()] + [ContinuationFrame(1, data=b"\x40" * 1000).serialize()
                                    for _ in range(2000)]
    send_quietly(wire, b"".join(frames))
    ends(wire, target, (ENHANCE_YOUR_CALM,))


def test_hpack_bomb(target):
    """A small header block that decodes huge: one large table entry, referenced 200 times."""
    wire = H2Wire(target.port)
    big = (b"x-bomb", b"a" * 4000)
    wire.send_frames(wire.headers(1, "/", extra=[big]))  # puts it in the dynamic table
    bomb = wire.headers(3, "/", extra=[big] * 200)
    assert len(bomb.data) < 1000  # ~200 one-byte references: 800 KB decoded
    send_quietly(wire, bomb.serialize())
    ends(wire, target, (ENHANCE_YOUR_CALM, PROTOCOL_ERROR))


def test_ping_flood(target):
    wire = H2Wire(target.port)
    send_quietly(wire, PingFrame(0, opaque_data=b"12345678").serialize() * 20000)
    ends(wire, target, (ENHANCE_YOUR_CALM,))


def test_settings_flood(target):
    wire = H2Wire(target.port)
    send_quietly(wire, SettingsFrame(0).serialize() * 20000)
    ends(wire, target, (ENHANCE_YOUR_CALM,))


def test_too_many_streams(target):
    wire = H2Wire(target.port)
    send_quietly(wire, b"".join(wire.headers(stream_id, "/slow?delay=30").serialize()
                                for stream_id in range(1, 400, 2)))
    ends(wire, target, (PROTOCOL_ERROR, ENHANCE_YOUR_CALM))


def test_one_byte_window(target):
    """The client's windows open a byte at a time: --send-timeout (2 s here) ends it."""
    wire = H2Wire(target.port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1})
    wire.auto_window = False
    wire.request(1, "/big?size=1000000")
    status, _, _ = target.request("GET", "/")
    assert status == 200
    started = time.monotonic()
    goaway = None
    while time.monotonic() - started < 15 and goaway is None:
        send_quietly(wire, WindowUpdateFrame(1, window_increment=1).serialize())
        wire.read(0.2)
        goaway = next((f for f in wire.frames if isinstance(f, GoAwayFrame)), None)
        if wire.closed:
            break
    assert goaway is not None or wire.closed
    assert time.monotonic() - started < 2 + 1 + DEADLINE  # --send-timeout, the sweep's tick
    if goaway is not None:
        assert goaway.error_code == ENHANCE_YOUR_CALM
    assert wire.closed_within(DEADLINE)
    wire.close()


def test_slow_header_block_beside_an_active_stream(start_server):
    """A HEADERS frame whose CONTINUATION never comes holds the whole connection (nothing may
    come between a block's frames); a stream in flight keeps the connection from being idle,
    so --header-timeout bounds the block by itself."""
    server = start_server(APP, "--workers", "1", "--header-timeout", "1", bind="127.0.0.1:0")
    wire = H2Wire(server.port)
    wire.send_frames(wire.headers(1, "/slow?delay=5"))  # in flight meanwhile
    wire.ping()  # the SETTINGS exchanged: the wire sends nothing more of its own
    wire.send_frames(wire.headers(3, "/", end_headers=False))
    ends(wire, server, (ENHANCE_YOUR_CALM,))
    assert "a header block took more than 1 s" in server.log()
