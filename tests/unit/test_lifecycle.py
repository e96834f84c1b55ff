"""The worker lifecycle table and the health verdicts: plain data and plain functions."""

from __future__ import annotations

import pytest

from duck_prefork.config import build_config
from duck_prefork.master import health
from duck_prefork.master.lifecycle import TRANSITIONS, Event, State, WorkerProcess

pytestmark = pytest.mark.timeout(30)


def test_every_state_answers_every_event():
    assert set(TRANSITIONS) == {(state, event) for state in State for event in Event}


@pytest.mark.parametrize(("events", "state"), [
    ((), State.BOOTING),
    ((Event.READY,), State.READY),
    ((Event.READY, Event.RETIRE), State.RETIRING),
    ((Event.RETIRE, Event.READY), State.RETIRING),  # retired while booting stays retired
    ((Event.READY, Event.HANG), State.HUNG),
    ((Event.READY, Event.RETIRE, Event.HANG), State.RETIRING),  # killed, not restarted
    ((Event.READY, Event.HANG, Event.RETIRE), State.RETIRING),
    ((Event.HANG, Event.READY), State.HUNG),  # a late "ready" from a worker being killed
])
def test_transitions(events, state):
    worker = WorkerProcess(1, 100, 5, started=0.0)
    for event in events:
        worker.on(event)
    assert worker.state is state
    assert worker.serving is (state is State.READY)
    assert worker.retiring is (state is State.RETIRING)


def verdict_of(worker, now, **options):
    return health.verdict(worker, build_config(None, options, environ={}), now)


def test_a_booting_worker_is_judged_by_its_boot_timeout():
    worker = WorkerProcess(1, 100, 5, started=0.0, last_beat=0.0)
    assert verdict_of(worker, 59.0, boot_timeout=60.0, timeout=5.0) is health.Verdict.FINE
    assert verdict_of(worker, 61.0, boot_timeout=60.0) is health.Verdict.NOT_BOOTED
    assert verdict_of(worker, 1e6, boot_timeout=0.0) is health.Verdict.FINE  # 0: off


def test_a_serving_worker_is_judged_by_its_heartbeat():
    worker = WorkerProcess(1, 100, 5, started=0.0, ready_at=1.0, last_beat=10.0)
    worker.on(Event.READY)
    assert verdict_of(worker, 39.0, timeout=30.0) is health.Verdict.FINE
    assert verdict_of(worker, 41.0, timeout=30.0) is health.Verdict.SILENT
    worker.kill_at = 42.0
    assert verdict_of(worker, 41.5, timeout=30.0) is health.Verdict.FINE  # its dump's grace
    assert verdict_of(worker, 42.0, timeout=30.0) is health.Verdict.KILL_NOW
    worker.killed = True
    assert verdict_of(worker, 100.0, timeout=30.0) is health.Verdict.FINE  # only reaping left
