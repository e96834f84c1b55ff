"""channel.Sender, the worker's end of its channel: it never blocks (the event loop writes to
it), drops a heartbeat (with its count of requests in progress) that does not fit, and keeps
READY and RECYCLE until they fit."""

from __future__ import annotations

import fcntl
import os
import threading

import pytest

from duck_prefork.worker import channel

pytestmark = pytest.mark.timeout(30)

BEAT = channel.busy_message(0)  # a heartbeat: no request in progress


@pytest.fixture
def pipe():
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    yield read_end, write_end
    for fd in (read_end, write_end):
        try:
            os.close(fd)
        except OSError:
            pass


def fill(fd: int) -> int:
    """Fill the pipe behind the non-blocking `fd` to the last byte; returns how much."""
    filled = 0
    for size in (65536, 4096, 1):
        while True:
            try:
                filled += os.write(fd, b"x" * size)
            except BlockingIOError:
                break
    return filled


def read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_messages_are_written_in_order(pipe):
    read_end, write_end = pipe
    sender = channel.Sender(write_end)
    sender.send(channel.READY)
    sender.beat(0)
    sender.send(channel.RECYCLE)
    assert read_all(read_end) == channel.READY + BEAT + channel.RECYCLE


def test_the_write_end_is_non_blocking(pipe):
    read_end, write_end = pipe
    channel.Sender(write_end)
    assert fcntl.fcntl(write_end, fcntl.F_GETFL) & os.O_NONBLOCK


def test_a_full_pipe_drops_heartbeats_and_keeps_ready_and_recycle_in_order(pipe):
    read_end, write_end = pipe
    sender = channel.Sender(write_end)
    filled = fill(write_end)  # a master that reads nothing; a blocking write would hang here
    sender.beat(0)
    sender.send(channel.READY)
    sender.beat(0)
    sender.send(channel.RECYCLE)
    sender.beat(0)
    assert len(read_all(read_end)) == filled  # nothing of ours fitted
    sender.beat(0)  # the next tick: what was kept goes first, then this beat
    assert read_all(read_end) == channel.READY + channel.RECYCLE + BEAT


def test_a_master_that_is_gone_is_not_an_error(pipe):
    read_end, write_end = pipe
    os.close(read_end)
    sender = channel.Sender(write_end)
    sender.send(channel.READY)
    sender.beat(0)
    sender.send_failure("text")


def test_the_final_message_is_written_whole_even_past_the_pipe_size(pipe):
    """FAILED and its text, sent as the worker exits (outside the event loop): all of it
    reaches the master, after what was kept, however long the text."""
    read_end, write_end = pipe
    sender = channel.Sender(write_end)
    filled = fill(write_end)
    sender.send(channel.READY)
    text = b"Traceback: " + b"t" * 200_000
    received = bytearray()

    def master():  # reads until the worker's end is closed
        os.set_blocking(read_end, True)
        while chunk := os.read(read_end, 65536):
            received.extend(chunk)

    reader = threading.Thread(target=master)
    reader.start()
    sender.send_failure(text.decode())
    os.close(write_end)
    reader.join(10)
    assert bytes(received[filled:]) == channel.READY + channel.FAILED + text
