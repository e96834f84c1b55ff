"""The error log (operator events) and the access log (one line per response)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger("duck_prefork")


class _RoleFilter(logging.Filter):
    """Stamps every record with who wrote it: "master" or "worker N"."""

    role = "master"

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


_role_filter = _RoleFilter()


def _open(path: str, default: TextIO) -> TextIO:
    if path in ("", "-"):
        return default
    return open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the process


_error_log_path = ""


def setup_error_log(path: str, level: str) -> None:
    """Send our log records to PATH or stderr; raises OSError if the file cannot be opened."""
    global _error_log_path
    _error_log_path = path
    handler = logging.StreamHandler(_open(path, sys.stderr))
    formatter = logging.Formatter(
        "%(asctime)s [%(process)d] [%(levelname)s] %(role)s: %(message)s", "%Y-%m-%d %H:%M:%S UTC")
    # UTC everywhere: an app may change TZ in its worker (Django does), not our timestamps.
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(_role_filter)
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


class FailureLog:
    """Logs an unexpected exception with its traceback, once per distinct failure (its type
    and the line that raised it): a failure in something that runs every second must not write
    a traceback every second."""

    LIMIT = 1000  # distinct failures remembered; past that, the memory starts over

    def __init__(self) -> None:
        self._seen: set[tuple] = set()

    def __call__(self, what: str, exc: BaseException) -> None:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        key = (type(exc), tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb else (type(exc),)
        if key in self._seen:
            return
        if len(self._seen) >= self.LIMIT:
            self._seen.clear()
        self._seen.add(key)
        log.error("%s (this failure is logged once)", what, exc_info=exc)


def set_role(role: str) -> None:
    _role_filter.role = role


def error_stream() -> TextIO:
    """Where the error log goes now (for faulthandler's stack dumps)."""
    handler = log.handlers[0] if log.handlers else None
    return handler.stream if isinstance(handler, logging.StreamHandler) else sys.stderr


def reopen() -> None:
    """Reopen the error log file by its path (logrotate has moved the old one away)."""
    if _error_log_path in ("", "-") or not log.handlers:
        return
    handler = log.handlers[0]
    if not isinstance(handler, logging.StreamHandler):
        return
    old = handler.setStream(_open(_error_log_path, sys.stderr))
    if old is not None:
        old.close()


# Bytes of access-log lines that may wait to be written (a stalled stdout pipe, a slow disk);
# past that, lines are dropped and counted, and the episode is logged.
ACCESS_LOG_BUFFER = 1 << 20
# How often the lines appended on the event loop are handed to the writer thread: waking the
# thread once per line would cost more than formatting the line.
ACCESS_LOG_FLUSH_INTERVAL = 0.05
# At the worker's exit, how long the lines still waiting get to be written.
ACCESS_LOG_CLOSE_WAIT = 1.0

_CLOSE = object()  # tells the writer thread to stop, after what was queued before it
STDOUT = 1  # the descriptor, whatever an app may have made of sys.stdout


class AccessLog:
    """Writes one line per response; built only when --access-logfile is set.

    The event loop never writes to the file itself: write() formats the line and appends it
    to a list, which is handed every ACCESS_LOG_FLUSH_INTERVAL to a thread that does the
    writing. A stalled stdout pipe or a slow disk then holds up that thread only, and at most
    `limit` bytes of lines wait for it: past that, lines are dropped and counted, and each
    episode is logged to the error log when it starts and when it ends."""

    def __init__(self, path: str, limit: int = ACCESS_LOG_BUFFER):
        self.path = path
        self.limit = limit
        self.dropped = 0  # lines dropped since the start, all episodes together
        self._fd = self._open()
        self._lines: list[str] = []  # written since the last hand-over to the thread
        self._room = limit  # what may still be appended before the bound is looked at again
        # Characters handed to the thread (counted by the loop) and written or given up on
        # (counted by the thread): each is changed by one thread only.
        self._handed = 0
        self._done = 0
        self._episode = 0  # lines dropped in the current episode; 0: not dropping
        self._schedule: Callable[[Callable[[], None]], object]
        try:
            self._schedule = functools.partial(asyncio.get_running_loop().call_later,
                                               ACCESS_LOG_FLUSH_INTERVAL)
        except RuntimeError:  # no event loop (a test, a tool): hand each line over at once
            self._schedule = _call_now
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="duck-prefork access log",
                                        daemon=True)
        self._thread.start()

    def _open(self) -> int:
        if self.path in ("", "-"):
            return STDOUT
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def write(self, client: tuple | None, method: str, target: str, http_version: str,
              status: int, size: int, duration: float, extra: str = "") -> None:
        """One line; `extra` (" key=value ...") goes at its end: a passed-through response's
        upstream and the time it took (upstream/exchange.py)."""
        peer = f"{client[0]}:{client[1]}" if client else "-"
        line = (f'{peer} "{method} {target} HTTP/{http_version}" {status} {size} '
                f'{duration:.6f}{extra}\n')
        self._room -= len(line)
        if self._room < 0 and not self._make_room(line):
            return
        lines = self._lines
        lines.append(line)
        if len(lines) == 1:
            self._schedule(self._hand_over)

    @property
    def waiting(self) -> int:
        """Characters handed to the writer thread and not yet written (or given up on)."""
        return self._handed - self._done

    def _make_room(self, line: str) -> bool:
        """The bound is reached as far as the loop knows: hand what is here to the thread
        and look at what it has written since. Returns whether `line` is kept."""
        self._hand_over()
        waiting = self._handed - self._done
        if self._episode and waiting > self.limit // 2:
            self._episode += 1  # still dropping until half the bound has been written
            self.dropped += 1
            return False
        if waiting + len(line) > self.limit:
            if not self._episode:
                log.warning("access log: %s is not keeping up (%d KiB waiting to be written); "
                            "dropping lines until it does", self.path or "-", waiting // 1024)
            self._episode += 1
            self.dropped += 1
            return False
        if self._episode:
            log.warning("access log: writing again; %d lines dropped", self._episode)
            self._episode = 0
        self._room = self.limit - waiting - len(line)
        return True

    def _hand_over(self) -> None:
        lines = self._lines
        if lines:
            self._lines = []
            size = sum(map(len, lines))
            self._handed += size
            self._queue.put((lines, size))
        if not self._episode:  # (while dropping, every line goes through _make_room)
            self._room = self.limit - (self._handed - self._done)

    def reopen(self) -> None:
        """Reopen the file by its path (USR1, after logrotate moved it): the lines written
        before this call go to the old file, the ones after it to the new one."""
        if self.path in ("", "-"):
            return
        try:
            fd = self._open()
        except OSError as exc:
            log.error("access log: cannot reopen %s: %s; writing on to the old file",
                      self.path, exc.strerror or exc)
            return
        self._hand_over()
        self._queue.put(fd)

    def close(self, timeout: float) -> None:
        """Write what is left, waiting up to `timeout` seconds, then close the file."""
        self._hand_over()
        self._queue.put(_CLOSE)
        self._thread.join(timeout)

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        # Signals are for the event loop's thread: one delivered here would only interrupt a
        # write (and a test or a debugger holding them back in the main thread would miss it).
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        failed = False  # in an episode of write errors (already logged)
        get = self._queue.get
        while True:
            items = [get()]
            while not self._queue.empty():  # whatever else is there: one write for all
                items.append(get())
            batch: list[str] = []
            size = 0
            for item in items:
                if type(item) is tuple:
                    batch += item[0]
                    size += item[1]
                    continue
                failed = self._write(batch, failed)  # what came before goes to the old file
                self._done += size
                batch, size = [], 0
                if self._fd != STDOUT:
                    os.close(self._fd)
                if item is _CLOSE:
                    return
                self._fd = item  # reopened
            failed = self._write(batch, failed)
            self._done += size

    def _write(self, lines: list[str], failed: bool) -> bool:
        """Write `lines` whole (the thread blocks as long as it takes); returns whether this
        write failed, logging the first failure of an episode and the recovery."""
        if not lines:
            return failed
        data = "".join(lines).encode("utf-8", "replace")
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            if not failed:
                log.error("access log: cannot write to %s: %s; dropping lines until a write "
                          "succeeds", self.path or "-", exc.strerror or exc)
            return True
        if failed:
            log.warning("access log: writing to %s again", self.path or "-")
        return False


def _call_now(function: Callable[[], None]) -> None:
    function()
