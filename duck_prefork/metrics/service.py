"""The metrics as the master holds them: the area, the gatherer and the scrape server behind
one narrow interface, so the supervisor only says what happened to its workers and lends its
poll loop.

The supervisor calls: claim() before a fork, started() / fork_failed() after it, exited() when
it reaps a worker, adopt() after USR2; poll_fds(), on_event(), deadline() and tick() (every
round) from its loop; snapshot() for the STATUS= line; in_child() in a new worker. What the
master knows about its workers reaches the snapshot through `facts`, a callable the supervisor
provides.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence

from .. import __version__, build
from ..config import Config
from ..logs import log
from ..net.listeners import Listener, parse_bind
from . import exposition
from .gather import Gatherer, Snapshot, WorkerFacts
from .layout import Area
from .server import MetricsServer, bind, read_token

# Memory readings are refreshed (a few workers at a time, gather.MEMORY_READS) this often at
# most: with many workers the loop goes round many times a second (every heartbeat).
MEMORY_ROUND = 0.25
# (workers, wanted slot numbers, listeners): what the supervisor's records say now.
Facts = Callable[[], tuple[Sequence[WorkerFacts], Sequence[int], Sequence[Listener]]]


def serves(sock: socket.socket, address: str) -> bool:
    """Whether the inherited scrape socket is the one --metrics-bind asks for."""
    parsed = parse_bind(address)
    name = sock.getsockname()
    if parsed.kind == "unix":
        return sock.family == socket.AF_UNIX and name == parsed.path
    return sock.family != socket.AF_UNIX and name[1] == parsed.port


class Metrics:
    """The master's metrics (see the module docstring)."""

    def __init__(self, area: Area, sock: socket.socket, token: bytes | None):
        self.area = area
        self.gatherer = Gatherer(area)
        self.server = MetricsServer(sock, self.respond, token, time.monotonic)
        self.facts: Facts = lambda: ((), (), ())
        self.next_memory_round = 0.0

    @classmethod
    def open(cls, config: Config, inherited: str = "") -> Metrics | None:
        """For --metrics-bind: the area and the bound socket, or after USR2 the ones the
        previous image passed (`inherited`: "AREA_FD:SOCKET_FD"). Raises MetricsBindError."""
        if not config.metrics_bind:
            return None
        token = read_token(config.metrics_token) if config.metrics_token else None
        if inherited:
            area_fd, _, sock_fd = inherited.partition(":")
            try:
                area = Area.adopt(int(area_fd))
                sock = socket.socket(fileno=int(sock_fd))
                sock.set_inheritable(False)
                sock.setblocking(False)
                if not serves(sock, config.metrics_bind):
                    # USR2 with another --metrics-bind: the counts go on, on the new address.
                    log.info("metrics: moving from %s to %s", sock.getsockname(),
                             config.metrics_bind)
                    old = sock.getsockname() if sock.family == socket.AF_UNIX else ""
                    sock.close()
                    if old:
                        try:
                            os.unlink(old)
                        except OSError:
                            pass
                    sock = bind(config.metrics_bind)
                return cls(area, sock, token)
            except (OSError, ValueError) as exc:
                log.error("metrics: the previous image's area cannot be used (%s): counting "
                          "starts again", exc)
                for fd in (area_fd, sock_fd):
                    try:
                        os.close(int(fd))  # else the socket's path would look taken (by us)
                    except (OSError, ValueError):
                        pass
        sock = bind(config.metrics_bind)
        return cls(Area.create(), sock, token)

    def inherit(self) -> tuple[str, list[int]]:
        """For USR2's exec: the description and the descriptors to pass."""
        fds = [self.area.fd, self.server.sock.fileno()]
        return f"{fds[0]}:{fds[1]}", fds

    # --- the supervisor's events ----------------------------------------------------------------

    def claim(self, slot: int) -> int | None:
        return self.gatherer.claim(slot)

    def started(self, cell: int | None, pid: int) -> None:
        self.gatherer.started_worker(cell, pid)

    def fork_failed(self, cell: int | None) -> None:
        self.gatherer.fork_failed(cell)

    def exited(self, pid: int, reason: str | None) -> None:
        self.gatherer.exited(pid, reason)

    def adopt(self, pids: Sequence[int]) -> None:
        self.gatherer.adopt(pids)

    def in_child(self) -> None:
        """In a new worker: the scrape sockets and the area's descriptor are the master's (the
        mapping stays: the worker writes its cell through it)."""
        self.server.close()
        self.area.close_fd()

    def close(self, unlink: bool = False) -> None:
        """Close the scrape socket and, with `unlink` (the master's stop, not a USR2 exec), remove
        its path if it is a unix socket's."""
        sock = self.server.sock
        path = sock.getsockname() if unlink and sock.family == socket.AF_UNIX else ""
        self.server.close()
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass

    # --- the loop -------------------------------------------------------------------------------

    def poll_fds(self) -> dict[int, int]:
        return self.server.poll_fds()

    def on_event(self, fd: int) -> None:
        self.server.on_event(fd)

    def deadline(self) -> float | None:
        return self.server.deadline()

    def tick(self, pids: Sequence[int]) -> None:
        """Every round of the master's loop: expire scrapes past their deadline; every
        MEMORY_ROUND seconds, refresh the oldest memory readings of the workers `pids`."""
        self.server.expire()
        now = time.monotonic()
        if now >= self.next_memory_round:
            self.next_memory_round = now + MEMORY_ROUND
            self.gatherer.refresh_memory(pids, now)

    # --- what is served ---------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        workers, slots, listeners = self.facts()
        return self.gatherer.snapshot(workers, slots, listeners, time.monotonic(), os.getpid(),
                                      {"version": __version__, "build": build.DESCRIPTION})

    def respond(self, path: str, accept: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            openmetrics = exposition.wants_openmetrics(accept)
            return 200, exposition.OPENMETRICS_TYPE if openmetrics else \
                exposition.PROMETHEUS_TYPE, exposition.render(self.snapshot(), openmetrics)
        if path == "/status":
            return 200, "application/json", exposition.render_status(self.snapshot())
        return 404, "text/plain", b"not found: /metrics or /status\n"
