"""The access log: lines leave the event loop without blocking it, whatever the file or pipe
does; past a bound they are dropped, counted and the episode logged; USR1's reopen switches
files between two lines."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from pathlib import Path

import pytest

from duck_prefork.access_log import ACCESS_LOG_BUFFER, AccessLog, AtomsLine

pytestmark = pytest.mark.timeout(30)

CLIENT = ("10.0.0.1", 5555)
# The default line: the combined log format, then the duration in milliseconds.
COMBINED = re.compile(r'(?P<host>\S+) - - \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000)\] '
                      r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+|-) '
                      r'"(?P<referrer>[^"]*)" "(?P<agent>[^"]*)" (?P<ms>\d+)')


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def write(access_log: AccessLog, path: str, status: int = 200) -> None:
    access_log.write(CLIENT, "GET", path, "1.1", status, 12, 0.0015)


def test_lines_are_written_in_order_in_the_usual_format(tmp_path):
    path = tmp_path / "access.log"

    async def main():
        access_log = AccessLog(str(path))
        for i in range(3):
            write(access_log, f"/{i}")
        write(access_log, "/last", 404)
        access_log.write(None, "POST", "/x?y=1", "1.0", 500, 0, 2.5)
        deadline = time.monotonic() + 15
        while path.read_text().count("\n") < 5:  # handed to the writer by the loop itself
            assert time.monotonic() < deadline, "the lines were not written"
            await asyncio.sleep(0.01)
        return access_log

    access_log = asyncio.run(main())
    access_log.close(5.0)
    lines = [COMBINED.fullmatch(line) for line in path.read_text().splitlines()]
    assert all(lines), path.read_text()
    assert [match.group("request", "status", "bytes", "ms") for match in lines] == [
        ("GET /0 HTTP/1.1", "200", "12", "2"),
        ("GET /1 HTTP/1.1", "200", "12", "2"),
        ("GET /2 HTTP/1.1", "200", "12", "2"),
        ("GET /last HTTP/1.1", "404", "12", "2"),
        ("POST /x?y=1 HTTP/1.0", "500", "-", "2500"),
    ]
    assert [match["host"] for match in lines] == ["10.0.0.1"] * 4 + ["-"]


def test_a_stalled_pipe_blocks_nothing_and_lines_past_the_bound_are_dropped(tmp_path, records):
    """A reader that stops reading (a stalled stdout pipe): writing goes on without blocking;
    what fits in the bound waits, the rest is dropped, counted and logged once; when the
    reader reads again, lines flow again and the count of what was lost is logged."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    lines = 3 * ACCESS_LOG_BUFFER // 50  # three times the bound, and the pipe's 64 KiB
    received = bytearray()

    def read_some():
        try:
            while chunk := os.read(reader, 1 << 16):
                received.extend(chunk)
        except BlockingIOError:
            pass
        return received

    async def main():
        access_log = AccessLog(str(fifo))
        for i in range(lines):  # a blocking write would hang here, once the pipe is full
            write(access_log, f"/{i:08d}")
            if i % 100 == 0:
                await asyncio.sleep(0)
        warnings = [r for r in records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "dropping" in warnings[0].getMessage()
        assert access_log.dropped > lines // 2
        # The reader reads again: what waited within the bound is written, then new lines.
        wait_for(lambda: read_some().count(b"\n") >= lines - access_log.dropped,
                 what="the lines that waited")
        # The thread counts a write as done once os.write returns, a moment after the reader
        # has the bytes: until then the episode is not over and a new line is still dropped.
        wait_for(lambda: access_log.waiting == 0, what="the writer to count its writes")
        write(access_log, "/after")
        await asyncio.sleep(0)
        return access_log

    try:
        access_log = asyncio.run(main())
        access_log.close(5.0)
        read_some()
    finally:
        os.close(reader)
    text = received.decode()
    assert text.count("\n") == lines - access_log.dropped + 1
    assert '"GET /after HTTP/1.1" 200 12 "-" "-" 2\n' in text and text.endswith("\n")
    numbers = [int(line.split('"')[1].split()[1][1:]) for line in text.splitlines()[:-1]]
    assert numbers == sorted(numbers)  # in order, with a gap where lines were dropped
    messages = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert len(messages) == 2 and f"{access_log.dropped} lines dropped" in messages[1]


def open_paths() -> set[str]:
    paths = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return paths


def test_reopen_switches_files_between_two_lines(tmp_path):
    path, rotated = tmp_path / "access.log", tmp_path / "access.log.1"

    async def main():
        access_log = AccessLog(str(path))
        write(access_log, "/before")
        path.rename(rotated)
        access_log.reopen()  # the line before went to the old file, even if not yet written
        write(access_log, "/after")
        await asyncio.sleep(0)
        return access_log

    access_log = asyncio.run(main())
    wait_for(lambda: str(rotated) not in open_paths(), what="the old file closed")
    access_log.close(5.0)
    assert "/before" in rotated.read_text() and "/after" not in rotated.read_text()
    assert "/after" in path.read_text() and "/before" not in path.read_text()


def test_close_writes_what_is_left_and_closes_the_file(tmp_path):
    path = tmp_path / "access.log"

    async def main():
        access_log = AccessLog(str(path))
        for i in range(1000):
            write(access_log, f"/{i}")
        return access_log  # no loop iteration after the last lines

    access_log = asyncio.run(main())
    access_log.close(5.0)
    assert path.read_text().count("\n") == 1000
    assert str(path) not in open_paths()


def test_a_write_error_is_logged_once_and_lines_are_dropped(tmp_path, records):
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full")

    async def main():
        access_log = AccessLog(str(full))
        for i in range(5):
            write(access_log, f"/{i}")
            await asyncio.sleep(0)
        return access_log

    access_log = asyncio.run(main())
    access_log.close(5.0)
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "No space left" in errors[0].getMessage()


def test_drain_writes_the_lines_made_so_far_before_it_returns(tmp_path):
    """Before an error-log line that goes to the same file: the access lines made before it
    are in the file when drain() returns, not a flush interval later."""
    path = tmp_path / "shared.log"

    async def main():
        access_log = AccessLog(str(path))
        for i in range(3):
            write(access_log, f"/{i}")  # handed to the thread only a flush interval later
        access_log.drain()
        text = path.read_text()
        access_log.drain()  # nothing waits: returns at once
        return access_log, text

    access_log, text = asyncio.run(main())
    access_log.close(5.0)
    assert [line.split('"')[1] for line in text.splitlines()] == \
        ["GET /0 HTTP/1.1", "GET /1 HTTP/1.1", "GET /2 HTTP/1.1"]


def test_sharing_a_file_with_the_error_log_is_seen(tmp_path):
    path, other = tmp_path / "shared.log", tmp_path / "other.log"
    access_log = AccessLog(str(path))
    try:
        with open(path, "a") as same, open(other, "a") as different:
            assert access_log.shares_file_with(same)
            assert not access_log.shares_file_with(different)
        assert not access_log.shares_file_with(object())  # no file behind it
    finally:
        access_log.close(5.0)


def test_a_line_that_cannot_be_made_is_lost_and_logged_once(tmp_path, records):
    """A formatting bug: that line goes, with one error-log record; serving and the other
    lines go on."""
    path = tmp_path / "access.log"

    def broken(r):
        if r[3] == "/bad":
            raise KeyError("a bug")
        return r[3]

    access_log = AccessLog(str(path), formatter=AtomsLine(broken))
    try:
        for target in ("/a", "/bad", "/b", "/bad", "/c"):
            write(access_log, target)
        wait_for(lambda: path.read_text().count("\n") >= 3, what="the three good lines")
    finally:
        access_log.close(5.0)
    assert path.read_text() == "/a\n/b\n/c\n"
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "could not be formatted" in errors[0].getMessage()
