"""The lame-duck drain's decisions: the master's stop phases (drain.py) and what the master does
in each (against the fake process API), the master's view the workers are sent, the readiness
rule (worker/probes.py) and the agent-check answer (master/agent.py)."""

from __future__ import annotations

import signal

import pytest

from duck_prefork.master import drain
from duck_prefork.master.agent import agent_answer
from duck_prefork.master.drain import DRAINING, KILLING, LAME_DUCK, SERVING, Trigger
from duck_prefork.master.systemd import Notifier
from duck_prefork.worker import channel
from duck_prefork.worker.probes import readiness

from .fake_processes import boot, make_master, step

pytestmark = pytest.mark.timeout(30)


# --- the phases, as data ------------------------------------------------------------------------

@pytest.mark.parametrize(("phase", "trigger", "expected"), [
    (SERVING, Trigger.TERM, LAME_DUCK),
    (SERVING, Trigger.TERM_NO_DELAY, DRAINING),
    (SERVING, Trigger.INT, DRAINING),  # INT keeps its contract: no delay
    (SERVING, Trigger.QUIT, KILLING),
    (LAME_DUCK, Trigger.TERM, DRAINING),  # the second TERM skips the delay
    (LAME_DUCK, Trigger.DELAY_OVER, DRAINING),
    (LAME_DUCK, Trigger.INT, DRAINING),
    (LAME_DUCK, Trigger.QUIT, KILLING),
    (DRAINING, Trigger.TERM, DRAINING),  # a TERM during the graceful stop changes nothing
    (DRAINING, Trigger.INT, KILLING),  # a second INT: at once
    (DRAINING, Trigger.DEADLINE, KILLING),
    (KILLING, Trigger.TERM, KILLING),
    (SERVING, Trigger.DELAY_OVER, SERVING),
])
def test_phase_transitions(phase, trigger, expected):
    assert drain.next_phase(phase, trigger) is expected


def test_term_starts_the_lame_duck_only_with_a_delay():
    assert drain.term_trigger(5.0) is Trigger.TERM
    assert drain.term_trigger(0.0) is Trigger.TERM_NO_DELAY


# --- the master in each phase -------------------------------------------------------------------

class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[str] = []

    def notify(self, *fields: str) -> None:
        self.sent.extend(fields)


def started(**values):
    master, processes = make_master(workers=2, **values)
    master.notifier = RecordingNotifier()
    boot(master, processes)
    return master, processes


def test_term_with_a_delay_keeps_the_workers_and_tells_them_and_systemd():
    master, processes = started(drain_delay=10.0)
    master.handle_term()
    assert master.phase is LAME_DUCK and master.stopping
    assert "STOPPING=1" in master.notifier.sent
    assert processes.signalled(signal.SIGINT) == []  # the workers still serve, still accept
    for pid in master.workers:
        assert processes.views(pid)[-1] == (2, True)  # serving 2, stopping


def test_the_delay_over_starts_the_graceful_stop():
    master, processes = started(drain_delay=10.0)
    master.handle_term()
    processes.advance(9.0)
    step(master)
    assert master.phase is LAME_DUCK
    processes.advance(1.5)
    step(master)
    assert master.phase is DRAINING
    assert sorted(processes.signalled(signal.SIGINT)) == sorted(master.workers)
    assert master.notifier.sent.count("STOPPING=1") == 1  # once, at the start


def test_a_second_term_skips_the_delay():
    master, processes = started(drain_delay=60.0)
    master.handle_term()
    master.handle_term()
    assert master.phase is DRAINING
    assert sorted(processes.signalled(signal.SIGINT)) == sorted(master.workers)


def test_term_without_a_delay_is_the_graceful_stop_at_once():
    master, processes = started()
    master.handle_term()
    assert master.phase is DRAINING
    assert "STOPPING=1" in master.notifier.sent


def test_int_skips_the_delay_and_a_second_int_stops_at_once():
    master, processes = started(drain_delay=60.0)
    master.handle_int()
    assert master.phase is DRAINING
    master.handle_int()
    assert master.phase is KILLING


def test_no_worker_is_restarted_during_the_lame_duck():
    master, processes = started(drain_delay=10.0)
    master.handle_term()
    forks = processes.next_pid
    processes.exit(next(iter(master.workers)), 1)
    step(master)
    processes.advance(2.0)
    step(master)
    assert processes.next_pid == forks  # nothing forked


def test_the_view_follows_the_serving_count_and_is_resent_to_a_worker_not_reading():
    master, processes = make_master(workers=2)
    first, second = sorted(master.workers)
    processes.say(first, channel.READY)
    step(master)
    assert processes.views(first)[-1] == (1, False)
    processes.full.add(master.workers[second].channel)  # not reading now
    processes.say(second, channel.READY)
    step(master)
    assert processes.views(first)[-1] == (2, False)
    assert processes.views(second)[-1] == (1, False)  # the new view did not fit
    processes.full.clear()
    step(master)
    assert processes.views(second)[-1] == (2, False)  # sent again on the next round
    sent = len(processes.views(first))
    step(master)
    assert len(processes.views(first)) == sent  # unchanged: not sent again


def test_heartbeats_carry_the_requests_in_progress():
    master, processes = started()
    pid = next(iter(master.workers))
    processes.say(pid, channel.busy_message(7))
    step(master)
    assert master.workers[pid].busy == 7


# --- the channel's master-to-worker view --------------------------------------------------------

def test_the_last_complete_view_wins_and_a_partial_one_waits():
    inbox = channel.view_message(2, False) + channel.view_message(3, True) + b"view 4"
    assert channel.read_views(inbox) == ((3, True), b"view 4")
    assert channel.read_views(b"view 4" + b" 0\n") == ((4, False), b"")
    assert channel.read_views(b"garbage\n") == (None, b"")


def test_busy_heartbeats_split_across_reads():
    messages, rest, _ = channel.split_messages(channel.READY + b"busy 1")
    assert (messages, rest) == ([channel.READY], b"busy 1")
    assert channel.split_messages(rest + b"2\n" + channel.HEARTBEAT) == (
        [12, channel.HEARTBEAT], b"", None)


# --- readiness and the agent check ----------------------------------------------------------------

@pytest.mark.parametrize(("serving", "min_ready", "stopping", "status"), [
    (2, 1, False, 200),
    (1, 1, False, 200),
    (0, 1, False, 503),  # the master has not counted us yet
    (1, 2, False, 503),
    (4, 1, True, 503),  # a stop has begun: 503 at once
])
def test_readiness(serving, min_ready, stopping, status):
    assert readiness(serving, min_ready, stopping)[0] == status


@pytest.mark.parametrize(("stopping", "serving", "min_ready", "busy", "answer"), [
    (False, 4, 1, 0, b"ready 100%\n"),
    (False, 4, 1, 1, b"ready 75%\n"),
    (False, 4, 1, 4, b"ready 1%\n"),  # never 0%, which HAProxy takes for drain
    (False, 1, 2, 0, b"maint\n"),
    (False, 0, 1, 0, b"maint\n"),
    (True, 4, 1, 0, b"drain\n"),
])
def test_agent_answer(stopping, serving, min_ready, busy, answer):
    assert agent_answer(stopping, serving, min_ready, busy) == answer


# --- the agent server, on real sockets, without a master -----------------------------------------

def test_agent_server_answers_lingers_until_the_client_closes_and_expires_the_silent():
    import socket as socket_module

    from duck_prefork.master.agent import LINGER, AgentServer

    server = AgentServer.bind("127.0.0.1", 0)
    port = server.socket.getsockname()[1]
    try:
        talker = socket_module.create_connection(("127.0.0.1", port), timeout=5)
        talker.sendall(b"backend/app1\n")  # agent-send: read and dropped
        silent = socket_module.create_connection(("127.0.0.1", port), timeout=5)
        deadline = 100.0
        while len(server.lingering) < 2:  # both accepted (the kernel may queue them a moment)
            server.ready(server.socket.fileno(), b"ready 50%\n", now=10.0)
            deadline -= 1
            assert deadline > 0
        assert talker.recv(100) == b"ready 50%\n" and talker.recv(100) == b""  # then EOF
        talker.close()
        talker_fd = next(iter(server.lingering))  # accepted first: the backlog is FIFO
        readable = select_readable(server.lingering[talker_fd][0])
        assert readable
        server.ready(talker_fd, b"", now=10.5)
        assert talker_fd not in server.lingering  # closed once the client closed
        server.expire(10.0 + LINGER)
        assert server.lingering == {}  # the silent client's wait is bounded
        assert silent.recv(100) == b"ready 50%\n"
        silent.close()
    finally:
        server.close()


def select_readable(sock) -> bool:
    import select

    return bool(select.select([sock], [], [], 5)[0])
