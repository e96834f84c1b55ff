"""Accepting connections on a listening socket, with a back-off when descriptors run out.

Why not loop.create_server(): when accept() fails with EMFILE, libuv (under uvloop) accepts
and immediately closes the pending connections to keep its loop from spinning, so clients
that were waiting in the backlog are dropped, and nothing is logged. Here, running out of
descriptors stops accepting for a moment instead: pending connections stay queued in the
kernel (or go to another worker), the condition is logged once per episode, and accepting
resumes when a retry succeeds.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable

from ..http1.connection import ServerState
from ..logs import log

# accept() errors that mean "this process or the system is out of a resource": back off.
OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
# accept() errors that concern only the one connection that was being accepted: skip it.
CONNECTION_ERRORS = frozenset((errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR))

# Connections accepted per readiness event: enough to amortize the wake-up, few enough that
# one busy worker does not take a whole burst meant for several.
ACCEPT_BATCH = 16
# On stop, what is already queued is accepted (and served in the drain), up to this many.
SWEEP_LIMIT = 65536
RETRY_FIRST = 0.05
RETRY_MAX = 0.25  # polling 4 times a second while starved costs nothing


class Acceptor:
    """Accepts connections from one listening socket and hands them to the event loop."""

    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol],
                 state: ServerState):
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.state = state  # counts connections accepted but not yet set up, for the drain
        self.loop = asyncio.get_running_loop()
        self.accepting = False
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = RETRY_FIRST
        self._starved = False  # in an out-of-descriptors episode (already logged)

    def start(self) -> None:
        self.accepting = True
        self.loop.add_reader(self.sock.fileno(), self._accept_ready)

    def stop(self, sweep: bool) -> None:
        """Stop accepting and close this process's copy of the listening socket.

        sweep=True when this close may be the socket's last (a stop, or with --reuse-port a
        removed worker slot): the kernel resets the connections still queued on a socket it
        closes, so what it has queued is accepted first, to be served in the drain.
        sweep=False when the socket stays open elsewhere (this worker is retired, its
        replacement or the other workers go on): what is queued is left to them, rather than
        taken into a worker that is stopping, beyond its --limit-concurrency."""
        if self.accepting:
            self.loop.remove_reader(self.sock.fileno())
            if sweep:
                try:
                    self._accept(SWEEP_LIMIT)
                except OSError:
                    pass  # out of descriptors: what is still queued cannot be taken now
        self.accepting = False
        if self._retry is not None:
            self._retry.cancel()
        self.sock.close()

    def _accept_ready(self) -> None:
        try:
            accepted = self._accept(ACCEPT_BATCH)
        except OSError as exc:
            self._back_off(exc)
            return
        if self._starved and accepted:
            self._starved = False
            self._retry_delay = RETRY_FIRST
            log.warning("accepting connections again")

    def _accept(self, limit: int) -> int:
        """Accept up to `limit` queued connections and start setting them up; returns how
        many. Raises OSError when out of descriptors or memory, or on an unexpected error."""
        accept = self.sock.accept
        accepted = 0
        for _ in range(limit):
            try:
                conn, _ = accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in CONNECTION_ERRORS:
                    continue
                if exc.errno not in OUT_OF_RESOURCES:
                    log.error("accept() failed: %s", exc)
                raise
            accepted += 1
            self.state.pending_connects += 1
            self.loop.create_task(self._connect(conn))
        return accepted

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.protocol_factory, conn)
        except OSError:
            conn.close()  # the client went away before the transport was set up
        finally:
            # By now the connection is in state.connections or state.staging (or gone): a
            # drain that began meanwhile waits for it, instead of exiting with it unanswered.
            self.state.pending_connects -= 1
            self.state.check_drained()

    def _back_off(self, exc: OSError) -> None:
        """Stop watching the socket for a while; connections wait in the kernel backlog."""
        if not self._starved:
            self._starved = True
            log.error("cannot accept connections: %s; pausing accept (pending connections "
                      "stay queued) until descriptors are free again", exc.strerror or exc)
        self.loop.remove_reader(self.sock.fileno())
        self.accepting = False
        self._retry = self.loop.call_later(self._retry_delay, self._resume)
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)

    def _resume(self) -> None:
        self._retry = None
        self.start()
