"""The error log (operator events) and the access log (one line per response).

The logger names are stable, for --log-config: `duck_prefork.error` (every operator event of
the master and the workers; records carry `role`, "master" or "worker N") and
`duck_prefork.access` (one record per response, when the log configuration gives that logger
a handler; else the access log writes to --access-logfile itself).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import logging.config
import os
import queue
import re
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from typing import TextIO, cast

ERROR_LOGGER = "duck_prefork.error"
ACCESS_LOGGER = "duck_prefork.access"
log = logging.getLogger(ERROR_LOGGER)
access_logger = logging.getLogger(ACCESS_LOGGER)
# One timestamp format for every line of the error log, master and workers alike.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class _RoleFilter(logging.Filter):
    """Stamps every record with who wrote it: "master" or "worker N"."""

    role = "master"

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


_role_filter = _RoleFilter()
# On the loggers, not a handler: the handlers of a --log-config see `role` too.
log.addFilter(_role_filter)
access_logger.addFilter(_role_filter)


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
    handler.setFormatter(error_formatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def error_formatter() -> logging.Formatter:
    """The error log's line: UTC time with milliseconds, pid, level, who, message."""
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03d UTC [%(process)d] [%(levelname)s] %(role)s: %(message)s",
        TIME_FORMAT)
    # UTC everywhere: an app may change TZ in its worker (Django does), not our timestamps.
    formatter.converter = time.gmtime
    return formatter


def capture_output() -> None:
    """--capture-output, in a worker: its stdout and stderr (print(), tracebacks, logging
    without handlers) go where the error log goes. The access log's `-` keeps the real stdout."""
    global _stdout_fd
    target = error_stream()
    try:
        fd = target.fileno()
    except (AttributeError, OSError, ValueError):
        return
    target.flush()
    if fd != 1:
        _stdout_fd = os.dup(1)
        os.set_inheritable(_stdout_fd, False)
        os.dup2(fd, 1)
    if fd != 2:
        os.dup2(fd, 2)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)  # a print() reaches the log when it is made


def load_log_config(path: str) -> None:
    """--log-config: a dictConfig in JSON, TOML or YAML (by the file's extension), else an INI
    file for fileConfig, as uvicorn and gunicorn read them. Loggers it does not name keep their
    configuration (disable_existing_loggers defaults to false, as in uvicorn). Raises
    ValueError with the reason."""
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as file:
                config = json.load(file)
        elif path.endswith(".toml"):
            with open(path, "rb") as file:
                config = tomllib.load(file)
        elif path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise ValueError("a YAML file needs PyYAML (pip install pyyaml)") from None
            with open(path, encoding="utf-8") as file:
                config = yaml.safe_load(file)
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
            return
        if not isinstance(config, dict):
            raise ValueError("expected a dictConfig mapping (version = 1, handlers, loggers)")
        config.setdefault("disable_existing_loggers", False)
        logging.config.dictConfig(config)
    except ValueError as exc:  # dictConfig's "Unable to configure handler 'h'" has a cause
        cause = exc.__cause__
        raise ValueError(f"{exc}: {cause}" if cause else str(exc)) from None
    except Exception as exc:  # OSError, decoding errors, and whatever logging.config raises
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def access_logger_configured() -> bool:
    """Whether a --log-config gave duck_prefork.access a handler (on it or an ancestor other
    than the root's default)."""
    logger: logging.Logger | None = access_logger
    while logger is not None and logger.name != "root":
        if logger.handlers and logger is not log:
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


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


def plural(count: int, noun: str) -> str:
    """'1 worker', '2 workers': a count with its noun, for log lines."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


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
_stdout_fd = STDOUT  # the real stdout, after --capture-output moved fd 1 to the error log
# What a line is counted as against the bound, besides its target: lines are formatted by the
# writer thread, so the loop counts an estimate (the thread counts the same estimate done).
LINE_ESTIMATE = 160

# --- access log formats ---------------------------------------------------------------------
# A record is what the event loop hands over for one response, as it is; the writer thread
# formats it. Durations come from the loop's clock, whose resolution is a millisecond (uvloop),
# so they are printed in whole milliseconds (or seconds to the millisecond). A format is
# compiled once into one function (one `%` of a tuple of expressions), and the time's text is
# made once a second: formatting a line costs about what the old fixed line did.
# (time, client, method, target, http_version, status, size, duration, headers, extra)
Record = tuple


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return "-"


class _SecondCache:
    """The text of a time, remade only when the second changes (lines come in bursts)."""

    def __init__(self, layout: str) -> None:
        self.layout = layout
        self.second = -1
        self.text = ""

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self.second:
            self.text = time.strftime(self.layout, time.gmtime(second))
            self.second = second
        return self.text


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
    "M": "round(r[7] * 1000)",  # milliseconds
    "D": "round(r[7] * 1000) * 1000",  # microseconds (of a millisecond clock)
    "L": "'%.3f' % r[7]",  # seconds, to the millisecond
    "p": "PID",  # this process's, when the format is compiled (in the worker)
}
# The default line: the combined log format (what log tools parse), then the duration in ms.
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
    """The formatter of a gunicorn-style format, compiled into one function."""
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
    namespace = {"FORMAT": positional, "clf": _SecondCache("[%d/%b/%Y:%H:%M:%S +0000]"),
                 "header": _header, "PID": f"<{os.getpid()}>"}
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


_json_text = json.encoder.encode_basestring  # (the C one)


def json_formatter() -> Callable[[Record], str]:
    """The --access-log-json formatter of this process: one JSON object a line, the fields a
    log shipper expects, named as most of them name them. Built as text (json.dumps of a dict
    per line would cost three times as much); the method is a token and the client an address,
    which need no escaping, the rest goes through the C string encoder."""
    tail = f'"pid": {os.getpid()}, "worker": {_json_text(_role_filter.role)}}}'
    iso = _SecondCache("%Y-%m-%dT%H:%M:%S")
    text = _json_text

    def line(record: Record) -> str:
        when, client, method, target, version, status, size, duration, headers, extra = record
        if type(target) is bytes:
            target = target.decode("latin-1")
        path, _, query = target.partition("?")
        referrer = user_agent = "null"
        for name, value in headers:
            if name == b"referer":
                referrer = text(value.decode("latin-1"))
            elif name == b"user-agent":
                user_agent = text(value.decode("latin-1"))
        if client:
            peer = f'"client": "{client[0]}", "client_port": {client[1]}'
        else:
            peer = '"client": null, "client_port": null'
        return (f'{{"time": "{iso(when)}.{int(when * 1000) % 1000:03d}Z", {peer}, '
                f'"method": "{method}", "path": {text(path)}, "query": {text(query)}, '
                f'"protocol": "HTTP/{version}", "status": {status}, "bytes": {size}, '
                f'"duration_ms": {round(duration * 1000)}, "referrer": {referrer}, '
                f'"user_agent": {user_agent}, {_json_fields(extra) if extra else ""}{tail}')

    return line


def _json_fields(extra: str) -> str:
    """ key=value ... (a passed-through response's upstream) as JSON fields, each a string."""
    fields = (item.partition("=") for item in extra.split())
    return "".join(f'{_json_text(key)}: {_json_text(value)}, ' for key, _, value in fields)


def access_formatter(fmt: str = "", as_json: bool = False) -> Callable[[Record], str]:
    """The line formatter for --access-logformat / --access-log-json (default: combined+ms)."""
    return json_formatter() if as_json else format_line(fmt or DEFAULT_ACCESS_FORMAT)


class AccessLog:
    """Writes one line per response; built only when --access-logfile is set.

    The event loop never writes to the file itself: write() formats the line and appends it
    to a list, which is handed every ACCESS_LOG_FLUSH_INTERVAL to a thread that does the
    writing. A stalled stdout pipe or a slow disk then holds up that thread only, and at most
    `limit` bytes of lines wait for it: past that, lines are dropped and counted, and each
    episode is logged to the error log when it starts and when it ends."""

    def __init__(self, path: str, limit: int = ACCESS_LOG_BUFFER,
                 formatter: Callable[[Record], str] | None = None,
                 logger: logging.Logger | None = None):
        self.path = path
        self.limit = limit
        self.format = formatter or access_formatter()
        self.logger = logger  # a --log-config's duck_prefork.access, instead of the file
        self.dropped = 0  # lines dropped since the start, all episodes together
        self._fd = self._open()
        self._lines: list[Record] = []  # written since the last hand-over to the thread
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
        if self.path in ("", "-") or self.logger is not None:
            return _stdout_fd
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def write(self, client: tuple | None, method: str, target: str | bytes, http_version: str,
              status: int, size: int, duration: float,
              headers: Sequence[tuple[bytes, bytes]] = (), extra: str = "") -> None:
        """One response. The line is formatted by the writer thread: the loop only keeps the
        facts (the request's headers by reference: they are not changed once parsed). `extra`
        (" key=value ...") goes at the end of a line, as fields of a JSON one: a passed-through
        response's upstream and the time it took (upstream/exchange.py)."""
        record = (time.time(), client, method, target, http_version, status, size, duration,
                  headers, extra)
        cost = LINE_ESTIMATE + len(target) + len(extra)
        self._room -= cost
        if self._room < 0 and not self._make_room(cost):
            return
        lines = self._lines
        lines.append(record)
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
            self._lines = []
            size = LINE_ESTIMATE * len(lines) + sum(len(record[3]) for record in lines)
            self._handed += size
            self._queue.put((lines, size))
        if not self._episode:  # (while dropping, every line goes through _make_room)
            self._room = self.limit - (self._handed - self._done)

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
            batch: list[Record] = []
            size = 0
            for item in items:
                if type(item) is tuple:
                    batch += item[0]
                    size += item[1]
                    continue
                failed = self._write(batch, failed)  # what came before goes to the old file
                self._done += size
                batch, size = [], 0
                if self._fd != _stdout_fd:
                    os.close(self._fd)
                if item is _CLOSE:
                    return
                self._fd = item  # reopened
            failed = self._write(batch, failed)
            self._done += size

    def _write(self, records: list[Record], failed: bool) -> bool:
        """Format and write `records` whole (the thread blocks as long as it takes); returns
        whether this write failed, logging the first failure of an episode and the recovery."""
        if not records:
            return failed
        try:
            lines = [self.format(record) for record in records]
        except Exception:  # a bug of ours: the lines go, serving goes on
            log.exception("access log: formatting failed; %d lines lost", len(records))
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
