"""A worker's life as the master sees it: one state, and every transition in one table.

    BOOTING --ready--> READY --retire--> RETIRING --(exit)
       |                 |                  ^
       +--retire---------|------------------+
       |                 |
       +--hang-------> HUNG ---retire-------+   (killed, then replaced once reaped)

BOOTING    forked; importing the app and running lifespan startup
READY      serving
RETIRING   asked to stop (TERM, or INT when the listeners close): it drains and is not
           restarted. A retiring worker that hangs is killed too, but stays RETIRING, so that it
           is still not restarted.
HUNG       silent past --timeout (its stack is dumped first) or not ready by --boot-timeout:
           being killed, and replaced once reaped

What is not a state stays a plain fact of the record: when it started and last beat, whether
it ever reported ready (`ready_at`), the worker it replaces once ready and the one replacing
it, when it is due its SIGKILL and whether that was sent, whether its channel is still open.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    BOOTING = "booting"
    READY = "ready"
    RETIRING = "retiring"
    HUNG = "hung"


class Event(enum.Enum):
    READY = "reported ready"
    RETIRE = "was retired"
    HANG = "was found hung"


BOOTING, READY, RETIRING, HUNG = State.BOOTING, State.READY, State.RETIRING, State.HUNG

TRANSITIONS: dict[tuple[State, Event], State] = {
    (BOOTING, Event.READY): READY,
    (BOOTING, Event.RETIRE): RETIRING,  # scaled down or replaced while it booted
    (BOOTING, Event.HANG): HUNG,  # --boot-timeout
    (READY, Event.READY): READY,
    (READY, Event.RETIRE): RETIRING,
    (READY, Event.HANG): HUNG,  # --timeout
    (RETIRING, Event.READY): RETIRING,  # retired while booting: it drains as soon as it serves
    (RETIRING, Event.RETIRE): RETIRING,
    (RETIRING, Event.HANG): RETIRING,  # killed, but still not to be restarted
    (HUNG, Event.READY): HUNG,  # a late message from a worker already being killed
    (HUNG, Event.RETIRE): RETIRING,  # being killed already; now not to be restarted either
    (HUNG, Event.HANG): HUNG,
}


@dataclass
class WorkerProcess:
    """The master's record of one forked worker."""

    number: int  # the slot 1..N; a replacement keeps its predecessor's number
    pid: int
    channel: int  # read end of the worker's pipe
    started: float
    state: State = BOOTING
    ready_at: float | None = None  # when it first reported ready; None: it never served
    last_beat: float = 0.0  # when the worker's event loop last reported
    inbox: bytes = b""
    failure: str | None = None  # why it could not boot, as it or the master tells
    channel_open: bool = True  # False once the worker closed its end: it is exiting
    replaces: int | None = None  # pid of the worker this one takes over from once ready
    replaced_by: int | None = None  # pid of the worker being started to take over
    kill_at: float = 0.0  # when its SIGKILL is due (a hung worker's stack dump comes first)
    killed: bool = False  # SIGKILL sent: only its reaping is left
    busy: int = 0  # requests in progress at its last heartbeat (--agent-bind)
    view_sent: bytes = b""  # the master's view it was last sent (worker/channel.py)
    exit_reason: str = ""  # why the master made it go (metrics.layout.EXIT_REASONS), if it did

    def on(self, event: Event) -> State:
        """Apply `event`; returns the new state. Every allowed transition is in TRANSITIONS."""
        self.state = TRANSITIONS[self.state, event]
        return self.state

    @property
    def serving(self) -> bool:
        return self.state is READY

    @property
    def retiring(self) -> bool:
        """Asked to stop for good: it will not be restarted."""
        return self.state is RETIRING

    @property
    def ever_ready(self) -> bool:
        return self.ready_at is not None
