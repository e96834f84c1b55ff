"""What a worker tells the master, over the pipe each worker has to it.

  b"."                   heartbeat: the worker's event loop is turning (sent once a second
                         from inside the loop, so a blocked loop stops beating)
  b"ready\\n"             the app is imported, lifespan startup is done, the worker accepts
  b"recycle\\n"           the worker has served its --max-requests: replace it gracefully
  b"failed\\n" + text     the worker cannot boot; text (a traceback or a message) runs to the
                         end of the pipe, and the worker exits

A pipe keeps these in order and a write of a few bytes is atomic, so the reader only has to
cope with a message split across reads.
"""

from __future__ import annotations

HEARTBEAT = b"."
READY = b"ready\n"
RECYCLE = b"recycle\n"
FAILED = b"failed\n"

_MESSAGES = (HEARTBEAT, READY, RECYCLE)


def split_messages(inbox: bytes) -> tuple[list[bytes], bytes, str | None]:
    """Complete messages at the start of `inbox`, the unconsumed rest, and the failure text if
    a FAILED message began (everything after it is the text)."""
    messages = []
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
