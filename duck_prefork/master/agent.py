"""--agent-bind: HAProxy's agent-check, answered by the master from its poll loop.

HAProxy connects to the agent port every `agent-inter`, reads one line and closes. The line
says what the balancer should do with this host (HAProxy's configuration manual, 5.2
"agent-check"):

    ready N%   serving: N is the share of workers that were idle at their last heartbeat
               (each reports its requests in progress once a second, worker/channel.py), so
               a host whose workers are all busy gets less new traffic; at least 1%, because 0%
               would mean "drain"
    drain      stopping (the lame duck and the graceful stop): no new connections, those open
               may finish
    maint      fewer than --min-ready workers serve (booting, crash loop): no traffic at all

Why the master: it has the view (how many workers serve, whether it is stopping) without
asking anyone, and it must not depend on a worker that may be hung. The master never blocks
on a client: the answer is a few bytes written without waiting into an empty socket buffer,
then our side is shut down; what the client sends (agent-send) is read and dropped until it
closes too, or for at most LINGER seconds, so that closing with unread bytes never turns into
a reset that could destroy the answer on its way.
"""

from __future__ import annotations

import errno
import socket

from ..logs import log

LINGER = 2.0  # seconds an answered agent connection may stay open waiting for the client's close
ACCEPT_BATCH = 16
MOST_OPEN = 64  # answered connections waiting for their close; beyond, the oldest is closed


def agent_answer(stopping: bool, serving: int, min_ready: int, busy: int) -> bytes:
    """The agent-check line for the master's state: `busy` of the `serving` workers had a
    request in progress at their last heartbeat."""
    if stopping:
        return b"drain\n"
    if serving < min_ready:
        return b"maint\n"
    idle = max(serving - busy, 0)
    return b"ready %d%%\n" % max(1, round(100 * idle / serving))


class AgentServer:
    """The agent-check listener and the connections answered but not yet closed."""

    def __init__(self, sock: socket.socket):
        self.socket = sock
        sock.setblocking(False)
        self.lingering: dict[int, tuple[socket.socket, float]] = {}  # fd -> (socket, close by)

    @classmethod
    def bind(cls, host: str, port: int) -> AgentServer:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def fds(self) -> list[int]:
        """What the master's poll() watches for us."""
        return [self.socket.fileno(), *self.lingering]

    def deadline(self) -> float | None:
        return min((until for _, until in self.lingering.values()), default=None)

    def ready(self, fd: int, answer: bytes, now: float) -> None:
        """`fd` is readable: a connection to answer, or an answered one's client talking or
        closing."""
        if fd == self.socket.fileno():
            self._accept(answer, now)
            return
        entry = self.lingering.get(fd)
        if entry is None:
            return  # closed earlier in this round (MOST_OPEN)
        sock = entry[0]
        try:
            while sock.recv(4096):
                pass
        except BlockingIOError:
            return  # more may come; the client closes after reading its line
        except OSError:
            pass
        self._close(fd)

    def _accept(self, answer: bytes, now: float) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    log.warning("--agent-bind: accept failed: %s", exc.strerror or exc)
                return
            conn.setblocking(False)
            try:
                conn.send(answer)  # a few bytes into an empty buffer: never blocks
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                conn.close()
                continue
            if len(self.lingering) >= MOST_OPEN:
                self._close(min(self.lingering, key=lambda key: self.lingering[key][1]))
            self.lingering[conn.fileno()] = (conn, now + LINGER)

    def expire(self, now: float) -> None:
        for fd, (_, until) in list(self.lingering.items()):
            if now >= until:
                self._close(fd)

    def _close(self, fd: int) -> None:
        sock, _ = self.lingering.pop(fd)
        sock.close()

    def close(self) -> None:
        for fd in list(self.lingering):
            self._close(fd)
        self.socket.close()
