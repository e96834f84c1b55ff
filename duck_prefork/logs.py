"""The error log (operator events) and the access log (one line per response)."""

from __future__ import annotations

import logging
import sys
import time
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


def set_role(role: str) -> None:
    _role_filter.role = role


def error_stream() -> TextIO:
    """Where the error log goes now (for faulthandler's stack dumps)."""
    return log.handlers[0].stream if log.handlers else sys.stderr


def reopen() -> None:
    """Reopen the error log file by its path (logrotate has moved the old one away)."""
    if _error_log_path in ("", "-") or not log.handlers:
        return
    handler = log.handlers[0]
    old = handler.setStream(_open(_error_log_path, sys.stderr))
    if old is not None:
        old.close()


class AccessLog:
    """Writes one line per response; built only when --access-logfile is set."""

    def __init__(self, path: str):
        self.path = path
        self.stream = _open(path, sys.stdout)

    def reopen(self) -> None:
        if self.path != "-":
            old, self.stream = self.stream, _open(self.path, sys.stdout)
            old.close()

    def write(self, client: tuple | None, method: str, target: str, http_version: str,
              status: int, size: int, duration: float) -> None:
        peer = f"{client[0]}:{client[1]}" if client else "-"
        self.stream.write(
            f'{peer} "{method} {target} HTTP/{http_version}" {status} {size} {duration:.6f}\n')
        if self.stream is sys.stdout:
            self.stream.flush()
