"""Flow control against a real server: neither a client that does not read its response nor
an app that reads its request body slowly makes the worker buffer the difference. Measured as
the worker's RSS (psutil) against a baseline taken after a warm-up request."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest

from .conftest import close_now, read_response, wait_for

pytestmark = pytest.mark.timeout(120)

APP = "tests.apps.pressure:app"
MiB = 1024 * 1024
SIZE = 128 * MiB
MAX_GROWTH = 32 * MiB


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def get(path: str) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n"


def wait_stable(sample, settle: float = 1.0, timeout: float = 60.0, what: str = "a value"):
    """Poll `sample()` until it returns the same value (not None) for `settle` seconds."""
    last = {"value": None, "since": 0.0}

    def stable() -> bool:
        value, now = sample(), time.monotonic()
        if value is None or value != last["value"]:
            last["value"], last["since"] = value, now
            return False
        return now - last["since"] >= settle

    wait_for(stable, timeout, f"{what} to stop changing")
    return last["value"]


def read_progress(path: Path) -> int | None:
    try:
        return int(path.read_text())  # replaced atomically by the app
    except (FileNotFoundError, ValueError):
        return None


def test_unread_response_is_not_buffered_by_the_worker(start_server, tmp_path):
    server = start_server(APP, "--workers", "1", "--send-timeout", "0")
    worker = server.worker_pids()[0]
    warm = server.connect()
    warm.sendall(get(f"/stream?size={4 * MiB}&chunk=65536"))
    status, _, body = read_response(warm)
    close_now(warm)
    assert (status, len(body)) == (200, 4 * MiB)
    baseline = rss(worker)

    progress = tmp_path / "progress"
    sock = server.connect(timeout=60)
    sock.sendall(get(f"/stream?size={SIZE}&chunk=65536&progress={progress}"))
    peak = baseline

    def sample() -> int | None:
        nonlocal peak
        peak = max(peak, rss(worker))
        return read_progress(progress)

    # We read nothing: once the kernel buffers are full the server stops writing and the
    # app's send() waits for the drain, so what it has handed over stops growing.
    handed_over = wait_stable(sample, what="the bytes the app has sent")
    peak = max(peak, rss(worker))
    assert handed_over < SIZE, "the app sent everything to a client that reads nothing"
    assert peak - baseline < MAX_GROWTH, \
        f"worker RSS grew by {(peak - baseline) / MiB:.1f} MiB (app had sent " \
        f"{handed_over / MiB:.1f} MiB)"

    status, headers, body = read_response(sock, timeout=60)
    close_now(sock)
    assert status == 200
    assert int(headers["content-length"]) == SIZE
    assert len(body) == SIZE and body.count(b"x") == SIZE
    assert read_progress(progress) == SIZE


def test_slowly_read_upload_is_not_buffered_by_the_worker(start_server, http_parser):
    server = start_server(APP, "--workers", "1", "--http", http_parser)
    worker = server.worker_pids()[0]
    warm = server.connect()
    warm.sendall(b"POST /slow-read?pause=0.001 HTTP/1.1\r\nHost: t\r\n"
                 b"Content-Length: %d\r\n\r\n" % (4 * MiB) + b"w" * (4 * MiB))
    assert read_response(warm)[::2] == (200, str(4 * MiB).encode())
    close_now(warm)
    baseline = rss(worker)

    sock = server.connect(timeout=60)
    errors: list[BaseException] = []

    def send_upload() -> None:
        piece = b"u" * MiB
        try:
            sock.sendall(b"POST /slow-read?pause=0.001 HTTP/1.1\r\nHost: t\r\n"
                         b"Content-Length: %d\r\n\r\n" % SIZE)
            for _ in range(SIZE // MiB):
                sock.sendall(piece)  # as fast as the socket takes it
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    sender = threading.Thread(target=send_upload)
    sender.start()
    peak = baseline
    samples = 0
    while sender.is_alive():
        peak = max(peak, rss(worker))
        samples += 1
        sender.join(0.02)
    peak = max(peak, rss(worker))
    assert not errors, errors
    status, headers, body = read_response(sock, timeout=60)
    close_now(sock)
    assert (status, body) == (200, str(SIZE).encode())
    assert peak - baseline < MAX_GROWTH, \
        f"worker RSS grew by {(peak - baseline) / MiB:.1f} MiB during the upload " \
        f"({samples} samples, {headers.get('x-receive-calls')} receive() calls)"
