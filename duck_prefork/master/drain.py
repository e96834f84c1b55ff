"""How the master stops: the phases and what moves it between them, as one table.

    SERVING --TERM, --drain-delay > 0--> LAME_DUCK --delay over, TERM, INT--> DRAINING
       |                                    |                                   |
       +--TERM (no delay), INT--------------|---------------------------------->+
       |                                    |                                   |
       +--QUIT------------------------------+--QUIT---------------------------> KILLING
                                                     DRAINING --INT, QUIT, deadline--^

SERVING    the normal life
LAME_DUCK  TERM with --drain-delay: the listeners still accept, but every worker answers its
           --ready-path with 503 and every response carries Connection: close, and the
           --agent-bind port says "drain", so that the balancer takes this host out of its
           rotation before a connection is refused. A second TERM skips the rest of the delay
           (`duck-prefork drain` twice: "now, please").
DRAINING   the graceful stop (DESIGN.md's contract): the listeners close, in-flight work
           finishes within --graceful-timeout, lifespan shutdown runs
KILLING    the immediate stop

INT keeps its contract: a graceful stop without the lame-duck delay (Ctrl-C in a terminal
wants the server gone, not held for a balancer), and a second INT stops at once. systemd hears
STOPPING=1 when SERVING is left, whichever way.
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    SERVING = "serving"
    LAME_DUCK = "lame duck"
    DRAINING = "draining"
    KILLING = "killing"


class Trigger(enum.Enum):
    TERM = "TERM"
    TERM_NO_DELAY = "TERM (no --drain-delay)"
    INT = "INT"
    QUIT = "QUIT"
    DELAY_OVER = "the drain delay is over"
    DEADLINE = "the graceful timeout is over"
    BOOT_FAILED = "a worker could not boot"


SERVING, LAME_DUCK, DRAINING, KILLING = Phase.SERVING, Phase.LAME_DUCK, Phase.DRAINING, \
    Phase.KILLING

# (phase, trigger) -> next phase; a pair that is not here changes nothing.
TRANSITIONS: dict[tuple[Phase, Trigger], Phase] = {
    (SERVING, Trigger.TERM): LAME_DUCK,
    (SERVING, Trigger.TERM_NO_DELAY): DRAINING,
    (SERVING, Trigger.INT): DRAINING,
    (SERVING, Trigger.QUIT): KILLING,
    (SERVING, Trigger.BOOT_FAILED): KILLING,
    (LAME_DUCK, Trigger.TERM): DRAINING,  # a second TERM: skip the rest of the delay
    (LAME_DUCK, Trigger.TERM_NO_DELAY): DRAINING,
    (LAME_DUCK, Trigger.INT): DRAINING,
    (LAME_DUCK, Trigger.DELAY_OVER): DRAINING,
    (LAME_DUCK, Trigger.QUIT): KILLING,
    (LAME_DUCK, Trigger.BOOT_FAILED): KILLING,
    (DRAINING, Trigger.INT): KILLING,  # a second INT: at once
    (DRAINING, Trigger.QUIT): KILLING,
    (DRAINING, Trigger.DEADLINE): KILLING,
    (DRAINING, Trigger.BOOT_FAILED): KILLING,
}


def next_phase(phase: Phase, trigger: Trigger) -> Phase:
    """Where `trigger` takes the master from `phase` (the same phase if nowhere)."""
    return TRANSITIONS.get((phase, trigger), phase)


def term_trigger(drain_delay: float) -> Trigger:
    """TERM with a --drain-delay is a lame-duck start; without one, the graceful stop."""
    return Trigger.TERM if drain_delay > 0 else Trigger.TERM_NO_DELAY
