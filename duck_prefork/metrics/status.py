"""What an operator reads: the systemd STATUS= line and `duck-prefork status`.

summary_line() and render_table() are plain functions of what the master reports (a Snapshot,
or the /status JSON), tested without a server; fetch() is the status command's one request.
"""

from __future__ import annotations

import http.client
import socket
import sys
import time
from typing import Any

from ..config import Config
from ..net.listeners import parse_bind
from . import layout
from .counters import METHODS, STATUS_CLASSES
from .gather import Snapshot
from .server import read_token

STATUS_TIMEOUT = 5.0


def summary_line(snapshot: Snapshot, last_reload: str = "") -> str:
    """systemd's STATUS=: workers ready/wanted, in flight, req/s, 5xx share, accept queue,
    restarts (and the last reload, when there was one)."""
    requests = snapshot.total(layout.REQUESTS, layout.N_REQUESTS)
    errors = sum(slot.counters[layout.REQUESTS + m * len(STATUS_CLASSES) + 4]
                 for slot in snapshot.slots for m in range(len(METHODS)))
    share = f"{100.0 * errors / requests:.1f}%" if requests else "0%"
    line = (f"{snapshot.workers_ready}/{snapshot.workers_wanted} workers ready, "
            f"{sum(slot.in_flight for slot in snapshot.slots)} in flight, "
            f"{snapshot.requests_per_second:.1f} req/s, {share} 5xx, accept queue "
            f"{sum(listener.queue for listener in snapshot.listeners)}, "
            f"{sum(snapshot.exits.values())} restarts")
    return f"{line}; last reload {last_reload}" if last_reload else line


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024  # type: ignore[assignment]
    return "-"  # unreachable


COLUMNS = ("slot", "pid", "state", "age", "req/s", "in-flight", "conns", "uss", "rss",
           "loop lag", "beat", "last exit")


def render_table(document: dict[str, Any]) -> str:
    """The /status JSON as a terminal table: a row per worker, then the totals."""
    totals = document["totals"]
    restarts = ", ".join(f"{reason} {count}" for reason, count in document["restarts"].items()
                         if count)
    lines = [f"duck-prefork master pid {document['pid']}, up {_duration(document['uptime'])}, "
             f"{document['workers_ready']}/{document['workers_wanted']} workers ready, "
             f"{totals['requests']} requests, restarts {totals['restarts']}"
             + (f" ({restarts})" if restarts else "")]
    slots = {slot["slot"]: slot for slot in document["slots"]}
    rows = [COLUMNS]
    for worker in document["workers"]:
        slot = slots.get(worker["slot"], {})
        rows.append((
            str(worker["slot"]), str(worker["pid"]), worker["state"], _duration(worker["age"]),
            f"{slot.get('requests_per_second', 0.0):.1f}", str(worker["in_flight"]),
            str(worker["connections"]), _bytes(worker["memory_uss"]),
            _bytes(worker["memory_rss"]), f"{worker['loop_lag'] * 1000:.0f}ms",
            f"{worker['heartbeat_age']:.1f}s", slot.get("last_exit") or "-"))
    rows.append(("total", "", "", "", f"{totals['requests_per_second']:.1f}",
                 str(totals["in_flight"]), str(totals["connections"]),
                 _bytes(totals["memory_uss"]), _bytes(totals["memory_rss"]), "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip() for row in rows]
    for listener in document["listeners"]:
        lines.append(f"listener {listener['name']}: accept queue {listener['queue']}/"
                     f"{listener['limit']}")
    return "\n".join(lines)


class StatusError(Exception):
    """The status command cannot ask the master; str() is the one line for the operator."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def fetch(config: Config, path: str = "/status", accept: str = "") -> tuple[int, bytes]:
    """One request to the running master's metrics endpoint (--metrics-bind, with
    --metrics-token when set): (status, body). Raises StatusError."""
    if not config.metrics_bind:
        raise StatusError("no --metrics-bind configured: the master serves its status there "
                          "(give the same --config or options as the server)")
    address = parse_bind(config.metrics_bind)
    headers = {"Accept": accept} if accept else {}
    try:
        if config.metrics_token:
            headers["Authorization"] = "Bearer " + read_token(config.metrics_token).decode()
    except Exception as exc:
        raise StatusError(str(exc)) from None
    if address.kind == "unix":
        connection: http.client.HTTPConnection = _UnixConnection(address.path, STATUS_TIMEOUT)
    else:
        connection = http.client.HTTPConnection(address.host, address.port,
                                                timeout=STATUS_TIMEOUT)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError as exc:
        raise StatusError(f"cannot reach the master at {config.metrics_bind}: "
                          f"{exc.strerror or exc}") from None
    finally:
        connection.close()


def run_status(config: Config, as_json: bool, watch: bool, interval: float = 2.0) -> int:
    """`duck-prefork status`: 0 when the master answered, 1 otherwise (the reason on stderr)."""
    import json

    while True:
        try:
            status, body = fetch(config)
        except StatusError as exc:
            print(f"duck-prefork: error: {exc}", file=sys.stderr)
            return 1
        if status != 200:
            print(f"duck-prefork: error: the master answered {status}: "
                  f"{body.decode('utf-8', 'replace').strip()}", file=sys.stderr)
            return 1
        text = body.decode("utf-8").rstrip() if as_json else \
            render_table(json.loads(body))
        if watch:
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")  # home, clear: refreshed in place
            sys.stdout.flush()
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                return 0
        else:
            print(text)
            return 0
