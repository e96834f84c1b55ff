"""systemd's notify protocol, without libsystemd: one datagram to $NOTIFY_SOCKET per message.

Nothing here costs anything without NOTIFY_SOCKET. The master sends READY=1 once every worker
serves, RELOADING=1 (with MONOTONIC_USEC, for Type=notify-reload) then READY=1 around a HUP
and a USR2 (whose new image also sends MAINPID=, its unchanged pid),
STOPPING=1 on stop, STATUS= lines, and WATCHDOG=1 at half of $WATCHDOG_USEC from its loop, so
systemd restarts a master whose loop is wedged.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    """Sends notify messages to systemd if it asked for them."""

    def __init__(self, environ: Mapping[str, str] = os.environ):
        self.address: str | None = None
        self.socket: socket.socket | None = None
        self.watchdog_interval = 0.0  # seconds between WATCHDOG=1; 0: no watchdog
        self.next_watchdog = 0.0
        address = environ.get("NOTIFY_SOCKET", "")
        if not address:
            return
        # "@name" is a Linux abstract-namespace socket: a leading NUL byte on the wire.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        # Non-blocking: a systemd that does not read (it is busy, or hung) must not stall the
        # master's loop; a message that does not fit is dropped (notify() says why that is fine).
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                    | socket.SOCK_NONBLOCK)
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2 / 1e6

    @property
    def enabled(self) -> bool:
        return self.socket is not None

    def notify(self, *fields: str) -> None:
        if self.socket is None or self.address is None:
            return
        try:
            self.socket.sendto("\n".join(fields).encode("utf-8", "replace"), self.address)
        except OSError:
            pass  # systemd went away or the socket is full: never a reason to stop serving

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    @property
    def watchdog_due(self) -> float | None:
        """When the next WATCHDOG=1 is due (monotonic time), or None without a watchdog."""
        return self.next_watchdog if self.watchdog_interval else None

    def pet_watchdog(self, now: float) -> None:
        """Send WATCHDOG=1 if it is due; called from the master loop, so a wedged loop stops
        petting and systemd restarts the service."""
        if self.watchdog_interval and now >= self.next_watchdog:
            self.notify("WATCHDOG=1")
            self.next_watchdog = now + self.watchdog_interval


def status_line(serving: int, slots: int, last_reload: str) -> str:
    """The STATUS= line `systemctl status` shows: workers serving, and the last reload."""
    line = f"{serving}/{slots} workers serving"
    return f"{line}; last reload {last_reload}" if last_reload else line
