"""What a worker and the master tell each other, over the socket pair each worker has to it.

Worker to master:
  b"busy N\n"            heartbeat: the worker's event loop is turning (sent once a second
                         from inside the loop, so a blocked loop stops beating), with N the
                         requests it has in progress at that moment (--agent-bind's weight)
  b"."                   heartbeat without a count (a worker of an image before "busy", still
                         running after USR2)
  b"ready\\n"             the app is imported, lifespan startup is done, the worker accepts
  b"recycle\\n"           the worker has served its --max-requests: replace it gracefully
  b"failed\\n" + text     the worker cannot boot; text (a traceback or a message) runs to the
                         end of the pipe, and the worker exits

Master to worker:
  b"view S D\n"          the master's view, sent when it changes: S workers serve, D is 1 from
                         the start of a stop (the lame duck: --ready-path answers 503 and every
                         response carries Connection: close), else 0. The last one read wins.

A stream socket keeps these in order and a write of a few bytes is atomic, so the reader only
has to cope with a message split across reads. The master never blocks on a worker: a view that
does not fit is sent again on its next round (a view is a state, not an event).

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
_BUSY = b"busy "
_VIEW = b"view "


def busy_message(in_progress: int) -> bytes:
    return b"busy %d\n" % in_progress


def split_messages(inbox: bytes) -> tuple[list[Message | int], bytes, str | None]:
    """Complete messages at the start of `inbox`, the unconsumed rest, and the failure text if
    a FAILED message began (everything after it is the text). A heartbeat with a count is the
    count (an int)."""
    messages: list[Message | int] = []
    while inbox:
        if inbox.startswith(FAILED):
            return messages, b"", inbox[len(FAILED):].decode("utf-8", "replace")
        if inbox.startswith(_BUSY):
            line, newline, rest = inbox.partition(b"\n")
            if not newline:
                break  # the rest follows
            count = line[len(_BUSY):]
            messages.append(int(count) if count.isdigit() else 0)
            inbox = rest
            continue
        for message in _MESSAGES:
            if inbox.startswith(message):
                messages.append(message)
                inbox = inbox[len(message):]
                break
        else:
            break  # a partial message: the rest follows
    return messages, inbox, None


def view_message(serving: int, stopping: bool) -> bytes:
    return b"view %d %d\n" % (serving, stopping)


def read_views(inbox: bytes) -> tuple[tuple[int, bool] | None, bytes]:
    """The last complete view in `inbox` as (serving, stopping), or None, and the unread rest."""
    view = None
    while True:
        line, newline, rest = inbox.partition(b"\n")
        if not newline:
            return view, inbox
        inbox = rest
        fields = line[len(_VIEW):].split() if line.startswith(_VIEW) else []
        if len(fields) == 2 and fields[0].isdigit() and fields[1] in (b"0", b"1"):
            view = int(fields[0]), fields[1] == b"1"


class Sender:
    """The worker's end of its channel (a pipe's write end, made non-blocking here)."""

    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self._pending = b""  # messages that did not fit yet: they go before anything else
        self._closed = False  # the master closed its end (it is gone): nothing is sent

    def beat(self, in_progress: int) -> None:
        """A heartbeat with the requests in progress, from inside the event loop; dropped if it
        does not fit now (a beat says only "now")."""
        if self._flush():
            message = busy_message(in_progress)
            written = self._write(message)
            if 0 < written < len(message):
                self._pending = message[written:]  # the rest, before anything else

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
