"""The error log (operator events), and what the access log (access_log.py) shares with it.

The logger names are stable, for --log-config: `duck_prefork.error` (every operator event of
the master and the workers; records carry `role`, "master" or "worker N") and
`duck_prefork.access` (one record per response, when the log configuration gives that logger
a handler; else the access log writes to --access-logfile itself: access_log.py).
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import sys
import time
import tomllib
from collections.abc import Callable
from typing import TextIO

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


class _Before(logging.Filter):
    """Calls `before` ahead of each record the error log writes (a logger filter runs only for
    records at the logger's level, in the thread that logs)."""

    def __init__(self, before: Callable[[], None]) -> None:
        super().__init__()
        self.before = before

    def filter(self, record: logging.LogRecord) -> bool:
        self.before()
        return True


def before_each_line(before: Callable[[], None]) -> None:
    """Have `before` called ahead of each error-log line of this process (the access log's
    drain, when both logs share a file)."""
    log.addFilter(_Before(before))


def set_role(role: str) -> None:
    _role_filter.role = role


def role() -> str:
    """Who this process is in the log: "master" or "worker N"."""
    return _role_filter.role


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


STDOUT = 1  # the descriptor, whatever an app may have made of sys.stdout
_stdout_fd = STDOUT  # the real stdout, after --capture-output moved fd 1 to the error log


def stdout_fd() -> int:
    """The real stdout's descriptor (the access log's `-`), wherever --capture-output has
    sent fd 1."""
    return _stdout_fd
