"""What a worker tells the master, over the pipe each worker has to it.

  b"."                   heartbeat: the worker's event loop is turning (sent once a second
                         from inside the loop, so a blocked loop stops beating)
  b"ready\\n"             the app is imported, lifespan startup is done, the worker accepts
  b"recycle\\n"           the worker has served its --max-requests: replace it gracefully
  b"failed\\n" + text     the worker cannot boot; text (a traceback or a message) runs to the
                         end of the pipe, and the worker exits

A pipe keeps these in order and a write of a few bytes is atomic, so the reader only has to
cope with a message split across reads.

The worker writes through a Sender, which never blocks its event loop: a heartbeat that does
not fit in the pipe is dropped (the master is not reading, and a beat only says "now"), while
"ready" and "recycle" are kept and sent, in order, before anything else once there is room
(the next heartbeat tries again). "failed" is the worker's last word, written outside the
event loop just before it exits: that write waits until the master has read it all.
"""

from __future__ import annotations

import enum
import os


class Message(bytes, enum.Enum):
    """The messages, typed: each member is also its bytes on the wire."""

    HEARTBEAT = b"."
    READY = b"ready\n"
    RECYCLE = b"recycle\n"
    FAILED = b"failed\n"  # followed by its text, to the end of the pipe


HEARTBEAT, READY, RECYCLE, FAILED = Message.HEARTBEAT, Message.READY, Message.RECYCLE, \
    Message.FAILED

_MESSAGES = (HEARTBEAT, READY, RECYCLE)


def split_messages(inbox: bytes) -> tuple[list[Message], bytes, str | None]:
    """Complete messages at the start of `inbox`, the unconsumed rest, and the failure text if
    a FAILED message began (everything after it is the text)."""
    messages: list[Message] = []
    while inbox:
        if inbox.startswith(FAILED):
            return messages, b"", inbox[len(FAILED):].decode("utf-8", "replace")
        for message in _MESSAGES:
            if inbox.startswith(message):
                messages.append(message)
                inbox = inbox[len(message):]
                break
        else:
            break  # a partial message: the rest follows
    return messages, inbox, None


class Sender:
    """The worker's end of its channel (a pipe's write end, made non-blocking here)."""

    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self._pending = b""  # messages that did not fit yet: they go before anything else
        self._closed = False  # the master closed its end (it is gone): nothing is sent

    def beat(self) -> None:
        """A heartbeat, from inside the event loop; dropped if it does not fit now."""
        if self._flush():
            self._write(HEARTBEAT)

    def send(self, message: Message) -> None:
        """READY or RECYCLE: sent now, or kept and sent before the next message that fits."""
        if not self._closed:
            self._pending += message
            self._flush()

    def send_failure(self, text: str) -> None:
        """The worker's last message (FAILED and its text), outside the event loop: written
        whole after what was kept, waiting for the master to read it if the pipe is full."""
        if self._closed:
            return
        self._pending += FAILED + text.encode("utf-8", "replace")
        try:
            os.set_blocking(self.fd, True)
        except OSError:
            return
        self._flush()

    def _flush(self) -> bool:
        """Write what was kept; True when nothing is left of it."""
        while self._pending:
            written = self._write(self._pending)
            if not written:
                return False
            self._pending = self._pending[written:]
        return not self._closed

    def _write(self, data: bytes) -> int:
        if self._closed:
            return 0
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0  # the pipe is full: the master is not reading now
        except OSError:
            # The master is gone (EPIPE); the parent-death signal stops this worker.
            self._closed = True
            self._pending = b""
            return 0
