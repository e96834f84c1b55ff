"""The access log: one line per response, formatted on the event loop, written by a thread.

Compiled with mypyc (build.py COMPILED): a line is made on every response, and what it costs
is what turning the access log on costs. The default line and the JSON one are written out as
code; an --access-logformat is compiled from gunicorn's atoms into one function.

A line leaves the loop as text: write() formats it at once and appends it to a list, which is
handed every ACCESS_LOG_FLUSH_INTERVAL to a thread that joins the lines and writes them with
one system call. A stalled stdout pipe or a slow disk then holds up that thread only, and at
most `limit` characters of lines wait for it: past that, lines are dropped and counted, and
each episode is logged to the error log when it starts and when it ends. When a --log-config
gives `duck_prefork.access` a handler, the thread hands each line to that logger instead (its
handlers get a record per response, as they expect); the loop's side is the same.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

from mypy_extensions import mypyc_attr

from . import logs
from .logs import log

# Characters of access-log lines that may wait to be written (a stalled stdout pipe, a slow
# disk); past that, lines are dropped and counted, and the episode is logged.
ACCESS_LOG_BUFFER = 1 << 20
# How often the lines appended on the event loop are handed to the writer thread: waking the
# thread once per line would cost more than formatting the line.
ACCESS_LOG_FLUSH_INTERVAL = 0.05
# At the worker's exit, how long the lines still waiting get to be written.
ACCESS_LOG_CLOSE_WAIT = 1.0
# Before an error-log line that goes to the same file, how long the access lines made before
# it get to be written first (a stalled file would hold up the error log's own write anyway).
ACCESS_LOG_DRAIN_WAIT = 1.0

_CLOSE = -1  # tells the writer thread to stop, after what was queued before it (fds are >= 0)

# A record is what a response's line is made from, as the loop has it:
# (time, client, method, target, http_version, status, size, duration, headers, extra).
# Durations come from the loop's clock, whose resolution is a millisecond (uvloop), so they
# are printed in whole milliseconds.
Record = tuple


class SecondCache:
    """The text of a time, remade only when the second changes (lines come in bursts)."""

    def __init__(self, layout: str) -> None:
        self.layout = layout
        self.second = -1
        self.text = ""

    def of(self, when: float) -> str:
        second = int(when)
        if second != self.second:
            self.text = time.strftime(self.layout, time.gmtime(second))
            self.second = second
        return self.text

    def __call__(self, when: float) -> str:
        return self.of(when)


# The text of the numbers below 1000, made once: most statuses, durations in milliseconds and
# the milliseconds of a time are, and str() of an int costs a fifth of a short line.
# (Final: mypyc keeps these in C variables, not the module's dict, read on every line.)
_DECIMALS: Final = [str(number) for number in range(1000)]
_MILLISECONDS: Final = [str(1000 + number)[1:] for number in range(1000)]  # "000" to "999"
_wall_time: Final = time.time


def decimal(number: int) -> str:
    """str(number), for the numbers of a line."""
    return _DECIMALS[number] if 0 <= number < 1000 else str(number)


def _protocol(version: str) -> str:
    """The request line's end: ` HTTP/1.1"` (made once for the usual versions)."""
    if version == "1.1":
        return ' HTTP/1.1" '
    if version == "1.0":
        return ' HTTP/1.0" '
    return f' HTTP/{version}" '


def milliseconds(seconds: float) -> int:
    """A duration in whole milliseconds, rounded half up (round() would cost more here than
    the rest of a line's numbers together)."""
    return int(seconds * 1000.0 + 0.5)


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return "-"


# gunicorn's atoms (https://docs.gunicorn.org/en/stable/settings.html#access-log-format), each
# as an expression over the record `r`, its client `c` and its target as text `tg`.
ATOMS: dict[str, str] = {
    "h": "(c[0] if c else '-')",  # remote address
    "l": "'-'",
    "u": "'-'",  # user name (no authentication here)
    "t": "clf(r[0])",  # [10/Oct/2000:13:55:36 +0000], UTC
    "r": "r[2] + ' ' + tg + ' HTTP/' + r[4]",  # request line
    "m": "r[2]",
    "U": "tg.partition('?')[0]",
    "q": "tg.partition('?')[2]",
    "H": "'HTTP/' + r[4]",
    "s": "r[5]",
    "B": "r[6]",
    "b": "(r[6] or '-')",
    "f": "ref",  # referrer: picked with the user agent in one pass over the headers
    "a": "ua",
    "T": "int(r[7])",  # whole seconds
    "M": "ms(r[7])",  # milliseconds
    "D": "ms(r[7]) * 1000",  # microseconds (of a millisecond clock)
    "L": "'%.3f' % r[7]",  # seconds, to the millisecond
    "p": "PID",  # this process's, when the format is compiled (in the worker)
}
# The default line: the combined log format (what log tools parse), then the duration in ms.
# (CombinedLine writes it out; format_line of it makes the same line.)
DEFAULT_ACCESS_FORMAT = '%(h)s - - %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)s'
_ATOM = re.compile(r"%\(([^)]*)\)")
_SAMPLE: Record = (0.0, ("127.0.0.1", 1), "GET", b"/?q", "1.1", 200, 1, 0.001,
                   [(b"user-agent", b"x")], "")


def _atom(key: str) -> str:
    if key in ATOMS:
        return ATOMS[key]
    if key.startswith("{") and key.endswith("}i") and len(key) > 3:
        return f"header(r[8], {key[1:-2].lower().encode('latin-1')!r})"
    raise ValueError(f"unknown atom %({key})s (known: {' '.join(ATOMS)} and {{header}}i)")


def format_line(fmt: str) -> Callable[[Record], str]:
    """The formatter of a gunicorn-style format, compiled into one function (one `%` of a
    tuple of expressions; the time's text made once a second)."""
    keys = _ATOM.findall(fmt)
    expressions = [_atom(key) for key in keys]
    positional = _ATOM.sub("%", fmt)  # %(h)s -> %s: the values go in as one tuple
    source = ("def line(r):\n"
              "    c = r[1]\n"
              "    tg = r[3]\n"
              "    if type(tg) is bytes:\n"
              "        tg = tg.decode('latin-1')\n")
    if "f" in keys or "a" in keys:
        source += ("    ref = ua = '-'\n"
                   "    for k, v in r[8]:\n"
                   "        if k == b'referer':\n"
                   "            ref = v.decode('latin-1')\n"
                   "        elif k == b'user-agent':\n"
                   "            ua = v.decode('latin-1')\n")
    source += f"    return FORMAT % ({', '.join(expressions)},) + r[9]\n"
    namespace: dict[str, Any] = {"FORMAT": positional,
                                 "clf": SecondCache("[%d/%b/%Y:%H:%M:%S +0000]"),
                                 "header": _header, "ms": milliseconds,
                                 "PID": f"<{os.getpid()}>"}
    exec(compile(source, f"<access log format {fmt!r}>", "exec"), namespace)  # noqa: S102
    return cast(Callable[[Record], str], namespace["line"])


def check_access_format(fmt: str) -> None:
    """Raises ValueError unless `fmt` formats a line (--access-logformat)."""
    if not _ATOM.search(fmt):
        raise ValueError("expected gunicorn's atoms, e.g. '%(h)s \"%(r)s\" %(s)s'")
    try:
        format_line(fmt)(_SAMPLE)
    except ValueError:
        raise
    except (TypeError, KeyError, SyntaxError) as exc:
        raise ValueError(f"not a valid format ({exc})") from None


def _referrer_and_agent(headers: Any) -> tuple[str | None, str | None]:
    """The Referer and User-Agent values of a request's headers (None: absent)."""
    referrer: str | None = None
    agent: str | None = None
    # The parsers' list of (name, value) bytes pairs, typed: mypyc then compares bytes
    # directly instead of through the generic protocol (a third of a line's cost, untyped).
    fields: list[tuple[bytes, bytes]] = headers if isinstance(headers, list) else list(headers)
    for name, value in fields:
        if name == b"referer":
            referrer = value.decode("latin-1")
        elif name == b"user-agent":
            agent = value.decode("latin-1")
    return referrer, agent


class LineFormat:
    """Makes the line of a record; called as a function too (`LineFormat()(record)`)."""

    def line(self, r: Record) -> str:
        raise NotImplementedError

    def make(self, when: float, client: Any, method: str, target: Any, version: str,
             status: int, size: int, duration: float, headers: Any, extra: str) -> str:
        """The line of the record these fields make (AccessLog.write's call: the formats
        written out take them as they are, no record built)."""
        return self.line((when, client, method, target, version, status, size, duration,
                          headers, extra))

    def __call__(self, r: Record) -> str:
        return self.line(r)


class CombinedLine(LineFormat):
    """The default line, DEFAULT_ACCESS_FORMAT written out: the combined log format, then
    the duration in milliseconds (the atoms' compiled function makes the same line, slower)."""

    def __init__(self) -> None:
        # The time with what surrounds it: fewer pieces to join (each costs as much as a
        # short piece's characters).
        self.clf = SecondCache(' - - [%d/%b/%Y:%H:%M:%S +0000] "')

    def line(self, r: Record) -> str:
        return self.make(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])

    def make(self, when: float, client: Any, method: str, target: Any, version: str,
             status: int, size: int, duration: float, headers: Any, extra: str) -> str:
        # (Typed values and no format specs: mypyc then joins the pieces directly.)
        path: str = target.decode("latin-1") if isinstance(target, bytes) else target
        duration_ms = milliseconds(duration)
        referrer, agent = _referrer_and_agent(headers)
        host: str = client[0] if client else "-"
        return (f'{host}{self.clf.of(when)}{method} {path}{_protocol(version)}'
                f'{decimal(status)} {decimal(size) if size else "-"} '
                f'"{"-" if referrer is None else referrer}" '
                f'"{"-" if agent is None else agent}" {decimal(duration_ms)}{extra}')


_json_text: Final[Callable[[str], str]] = json.encoder.encode_basestring  # (the C one)
EMPTY: Final = '""'  # an empty JSON string


class JsonLine(LineFormat):
    """--access-log-json: one JSON object a line, the fields a log shipper expects, named as
    most of them name them. Built as text (json.dumps of a dict per line would cost three times
    as much); the method is a token and the client an address, which need no escaping, the rest
    goes through the C string encoder. Made in the worker: the pid and the worker are its."""

    def __init__(self) -> None:
        self.tail = f'"pid": {os.getpid()}, "worker": {_json_text(logs.role())}}}'
        self.iso = SecondCache("%Y-%m-%dT%H:%M:%S")

    def line(self, r: Record) -> str:
        return self.make(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])

    def make(self, when: float, client: Any, method: str, target: Any, version: str,
             status: int, size: int, duration: float, headers: Any, extra: str) -> str:
        # (Typed values and no format specs: mypyc then joins the pieces directly.)
        text_target: str = target.decode("latin-1") if isinstance(target, bytes) else target
        duration_ms = milliseconds(duration)
        millisecond: int = int(when * 1000.0) % 1000
        path, _, query = text_target.partition("?")
        referrer, agent = _referrer_and_agent(headers)
        if client:
            host: str = client[0]
            port: int = client[1]
            peer = f'"client": "{host}", "client_port": {decimal(port)}'
        else:
            peer = '"client": null, "client_port": null'
        text = _json_text
        return (f'{{"time": "{self.iso.of(when)}.{_MILLISECONDS[millisecond]}Z", {peer}, '
                f'"method": "{method}", "path": {text(path)}, '
                f'"query": {text(query) if query else EMPTY}, '
                f'"protocol": "HTTP/{version}", "status": {decimal(status)}, '
                f'"bytes": {decimal(size)}, "duration_ms": {decimal(duration_ms)}, '
                f'"referrer": {"null" if referrer is None else text(referrer)}, '
                f'"user_agent": {"null" if agent is None else text(agent)}, '
                f'{_json_fields(extra) if extra else ""}{self.tail}')


def _json_fields(extra: str) -> str:
    """ key=value ... (a passed-through response's upstream) as JSON fields, each a string."""
    fields = [item.partition("=") for item in extra.split()]
    return "".join(f'{_json_text(key)}: {_json_text(value)}, ' for key, _, value in fields)


class AtomsLine(LineFormat):
    """An --access-logformat: the function format_line compiled from its atoms."""

    def __init__(self, function: Callable[[Record], str]) -> None:
        self.function = function

    def line(self, r: Record) -> str:
        return self.function(r)


def access_formatter(fmt: str = "", as_json: bool = False) -> LineFormat:
    """The line format for --access-logformat / --access-log-json (default: combined + ms)."""
    if as_json:
        return JsonLine()
    if fmt in ("", DEFAULT_ACCESS_FORMAT):
        return CombinedLine()
    return AtomsLine(format_line(fmt))


# Plain Python may subclass it: the unit tests' recorders do (and the compiled pipeline still
# calls a real AccessLog's write() directly, not through a method lookup).
@mypyc_attr(allow_interpreted_subclasses=True)
class AccessLog:
    """Writes one line per response; built only when the access log is on (process.py)."""

    def __init__(self, path: str, limit: int = ACCESS_LOG_BUFFER,
                 formatter: LineFormat | None = None, logger: Any = None) -> None:
        self.path = path
        self.limit = limit
        self.format: LineFormat = formatter or CombinedLine()
        self.logger = logger  # a --log-config's duck_prefork.access, instead of the file
        self.dropped = 0  # lines dropped since the start, all episodes together
        self.failures = logs.FailureLog()  # a line that cannot be formatted (a bug of ours)
        self._fd = self._open()
        self._lines: list[str] = []  # made since the last hand-over to the thread
        self._size = 0  # their characters, newlines included
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
        self._writer = threading.Thread(target=self._run, name="duck-prefork access log",
                                        daemon=True)
        self._writer.start()

    def _open(self) -> int:
        if self.path in ("", "-") or self.logger is not None:
            return logs.stdout_fd()
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def write(self, client: tuple | None, method: str, target: str | bytes, http_version: str,
              status: int, size: int, duration: float,
              headers: Sequence[tuple[bytes, bytes]] = (), extra: str = "") -> None:
        """One response. `extra` (" key=value ...") goes at the end of a line, as fields of a
        JSON one: a passed-through response's upstream and the time it took
        (upstream/exchange.py)."""
        try:
            line = self.format.make(_wall_time(), client, method, target, http_version, status,
                                    size, duration, headers, extra)
        except Exception as exc:  # a bug of ours: the line goes, serving goes on
            self.failures("access log: a line could not be formatted and is lost", exc)
            return
        cost = len(line) + 1
        self._room -= cost
        if self._room < 0 and not self._make_room(cost):
            return
        lines = self._lines
        lines.append(line)
        self._size += cost
        if len(lines) == 1:
            self._schedule(self._hand_over)

    @property
    def waiting(self) -> int:
        """Characters handed to the writer thread and not yet written (or given up on)."""
        return self._handed - self._done

    def _make_room(self, cost: int) -> bool:
        """The bound is reached as far as the loop knows: hand what is here to the thread
        and look at what it has written since. Returns whether the line (counted as `cost`)
        is kept."""
        self._hand_over()
        waiting = self._handed - self._done
        if self._episode and waiting > self.limit // 2:
            self._episode += 1  # still dropping until half the bound has been written
            self.dropped += 1
            return False
        if waiting + cost > self.limit:
            if not self._episode:
                log.warning("access log: %s is not keeping up (%d KiB waiting to be written); "
                            "dropping lines until it does", self.path or "-", waiting // 1024)
            self._episode += 1
            self.dropped += 1
            return False
        if self._episode:
            log.warning("access log: writing again; %d lines dropped", self._episode)
            self._episode = 0
        self._room = self.limit - waiting - cost
        return True

    def _hand_over(self) -> None:
        lines = self._lines
        if lines:
            size = self._size
            self._lines = []
            self._size = 0
            self._handed += size
            self._queue.put((lines, size))
        if not self._episode:  # (while dropping, every line goes through _make_room)
            self._room = self.limit - (self._handed - self._done)

    def shares_file_with(self, stream: Any) -> bool:
        """Whether this log writes to the same file, pipe or terminal as `stream` (the error
        log's): 2>&1, a journal, or both options naming one path."""
        if self.logger is not None:
            return False
        try:
            ours, theirs = os.fstat(self._fd), os.fstat(stream.fileno())
        except (AttributeError, OSError, ValueError):
            return False
        return (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)

    def drain(self) -> None:
        """Write the lines made so far before the caller goes on (waiting at most
        ACCESS_LOG_DRAIN_WAIT): called before each error-log line when both logs share a file,
        so that it reads in order (an error about a request after that request's line, the
        worker's last words after its last lines)."""
        if not self._lines and self._handed == self._done:
            return  # (nothing waits: the usual case costs no round trip to the thread)
        if threading.get_ident() == self._writer.ident or not self._writer.is_alive():
            return  # the writer's own warnings; or closed
        self._hand_over()
        written = threading.Event()
        self._queue.put(written)
        written.wait(ACCESS_LOG_DRAIN_WAIT)

    def reopen(self) -> None:
        """Reopen the file by its path (USR1, after logrotate moved it): the lines written
        before this call go to the old file, the ones after it to the new one."""
        if self.path in ("", "-") or self.logger is not None:
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
        self._writer.join(timeout)

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
                if isinstance(item, tuple):
                    batch += item[0]
                    size += item[1]
                    continue
                failed = self._write(batch, failed)  # what came before goes to the old file
                self._done += size
                batch, size = [], 0
                if isinstance(item, threading.Event):  # drain(): what came before is written
                    item.set()
                    continue
                if self._fd != logs.stdout_fd():
                    os.close(self._fd)
                if item == _CLOSE:
                    return
                self._fd = item  # reopened
            failed = self._write(batch, failed)
            self._done += size

    def _write(self, lines: list[str], failed: bool) -> bool:
        """Write `lines` whole (the thread blocks as long as it takes); returns whether this
        write failed, logging the first failure of an episode and the recovery."""
        if not lines:
            return failed
        if self.logger is not None:
            for line in lines:
                self.logger.info(line)
            return False
        lines.append("")
        data = "\n".join(lines).encode("utf-8", "replace")
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
