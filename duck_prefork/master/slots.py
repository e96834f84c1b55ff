"""Worker slots: the numbers 1..N a worker keeps across restarts, each slot's crash back-off,
and with --reuse-port each slot's own listening sockets.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..logs import log
from ..net.listeners import Listener, open_slot

# A worker that dies sooner than this after its fork counts as a crash, and is restarted
# after a delay that doubles with each consecutive crash, up to RESTART_DELAY_MAX.
YOUNG_DEATH = 5.0
RESTART_DELAY_FIRST = 0.5
RESTART_DELAY_MAX = 30.0


@dataclass
class Slot:
    """Crash bookkeeping for one worker number."""

    crashes: int = 0
    restart_at: float = 0.0

    def back_off(self, now: float) -> float:
        """Delay the slot's next start, doubling with each consecutive failure; the delay."""
        delay = min(RESTART_DELAY_FIRST * 2.0 ** self.crashes, RESTART_DELAY_MAX)
        self.crashes += 1
        self.restart_at = now + delay
        return delay


# --- --reuse-port: one socket per worker slot --------------------------------------------
# A slot's sockets live as long as the slot: every worker of that number (a restart, a
# reload's replacement, the workers adopted after USR2) accepts from the same queue, so a
# connection queued while its worker is replaced is served by the next one. They are closed
# when the slot goes (TTOU, HUP to fewer workers); the retiring worker first accepts what is
# queued on them (Acceptor.stop), and the kernel resets connections that arrive after that,
# unless net.ipv4.tcp_migrate_req=1 moves them to the other sockets of the group.


def open_slot_sockets(listeners: list[Listener], number: int, backlog: int) -> bool:
    """Open slot `number`'s sockets (one per TCP address we bind) into `listeners`."""
    try:
        listeners += open_slot(listeners, number, backlog)
    except OSError as exc:
        log.error("%s; not starting worker %d", exc.strerror or exc, number)
        return False
    return True


def close_slot_sockets(listeners: list[Listener], number: int) -> None:
    for listener in [listener for listener in listeners if listener.slot == number]:
        listener.close(unlink=False)
        listeners.remove(listener)


def explain_reuse_port(listeners: list[Listener], reuse_port: bool) -> None:
    """Say where the listeners differ from what --reuse-port asks for, and why."""
    grouped = any(listener.slot for listener in listeners)
    shared = [listener for listener in listeners if not listener.slot]
    if reuse_port:
        if any(listener.owned and listener.address.kind == "tcp" for listener in shared):
            log.warning("--reuse-port: the listeners inherited on re-exec are shared; "
                        "one socket per worker takes a restart")
        elif shared:
            log.info("--reuse-port applies to TCP addresses that duck-prefork binds: %s "
                     "stay shared by all workers",
                     ", ".join(listener.describe() for listener in shared))
    elif grouped:
        log.warning("--reuse-port is off but the listeners inherited on re-exec are one "
                    "per worker; sharing one socket takes a restart")
