"""The master's decisions against a fake process/clock API: what it spawns, signals, retires
and when, including the failure paths (fork fails, a worker dies during a reload, a signal
arrives while exec fails, a bug in a handler) that are slow or racy to reach with processes."""

from __future__ import annotations

import errno
import logging
import signal

import pytest

from duck_prefork.config import ConfigError, build_config
from duck_prefork.master import upgrade
from duck_prefork.master.health import STACK_DUMP_GRACE
from duck_prefork.master.slots import RESTART_DELAY_FIRST, YOUNG_DEATH
from duck_prefork.master.supervisor import POLL_INTERVAL, STOP_ALLOWANCE
from duck_prefork.worker import channel

from .fake_processes import FakeProcesses, SteppedMaster, beat, boot, make_master, step

pytestmark = pytest.mark.timeout(30)


def serving(master) -> list[int]:
    return sorted(w.pid for w in master.workers.values() if w.serving)


def test_start_forks_one_worker_per_slot_and_boots_once_all_are_ready():
    master, processes = make_master(workers=3)
    assert sorted(w.number for w in master.workers.values()) == [1, 2, 3]
    assert not master.booted
    boot(master, processes)
    assert master.booted and len(serving(master)) == 3


def test_a_worker_killed_by_a_realtime_signal_is_named_and_replaced(caplog):
    master, processes = make_master()
    boot(master, processes)
    victim = serving(master)[0]
    processes.advance(YOUNG_DEATH + 1)
    processes.exit(victim, -(signal.SIGRTMIN + 6))
    step(master)
    assert f"(pid {victim}) killed by SIGRTMIN+6; restarting it" in caplog.text
    assert victim not in master.workers and len(master.workers) == 2
    assert "bug while" not in caplog.text
    assert not processes.signalled(signal.SIGKILL)


def test_a_failed_fork_backs_off_and_retries_the_slot(caplog):
    master, processes = make_master()
    boot(master, processes)
    victim = serving(master)[0]
    processes.fork_error = OSError(errno.EAGAIN, "Resource temporarily unavailable")
    processes.advance(YOUNG_DEATH + 1)
    processes.exit(victim, -signal.SIGKILL)
    step(master)
    assert "cannot fork worker" in caplog.text and "retrying in" in caplog.text
    assert len(master.workers) == 1
    processes.fork_error = None
    step(master)  # the back-off has not passed: nothing is forked yet
    assert len(master.workers) == 1
    processes.advance(RESTART_DELAY_FIRST * 2)
    step(master)
    assert len(master.workers) == 2
    assert "bug while" not in caplog.text


def test_a_failed_fork_at_first_start_is_retried_not_fatal(caplog):
    error = OSError(errno.EAGAIN, "Resource temporarily unavailable")
    master, processes = make_master(fork_error=error)
    assert not master.workers and not master.stopping
    assert caplog.text.count("cannot fork worker") == 2
    processes.fork_error = None
    processes.advance(RESTART_DELAY_FIRST)
    step(master)
    boot(master, processes)
    assert master.booted and len(serving(master)) == 2


def test_a_failed_fork_for_a_reload_keeps_the_old_worker_serving(caplog):
    master, processes = make_master()
    boot(master, processes)
    before = serving(master)
    processes.fork_error = OSError(errno.ENOMEM, "Cannot allocate memory")
    master.pending_signals.append(signal.SIGHUP)
    step(master)
    assert serving(master) == before
    assert not processes.signalled(signal.SIGTERM)
    assert "keeps serving" in caplog.text


def test_a_bug_in_a_signal_handler_is_logged_and_supervision_goes_on(caplog, monkeypatch):
    master, processes = make_master()
    boot(master, processes)

    def broken() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(master, "handle_ttin", broken)
    master.pending_signals += [signal.SIGTTIN, signal.SIGTTOU]
    step(master)
    assert "bug while handling TTIN" in caplog.text and "RuntimeError: a bug" in caplog.text
    assert len(master.slots) == 1  # the TTOU behind it was still handled
    assert not processes.signalled(signal.SIGKILL)
    assert not master.stopping


def test_a_bug_in_a_worker_exit_keeps_the_other_workers(caplog, monkeypatch):
    master, processes = make_master()
    boot(master, processes)
    first, second = serving(master)

    def broken(worker, code) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(master, "on_worker_exit", broken)
    processes.exit(first, 1)
    step(master)
    assert "bug while handling the exit of worker" in caplog.text
    assert second in master.workers and first not in master.workers
    assert processes.channels[first] in processes.closed  # its channel is not leaked
    assert not processes.signalled(signal.SIGKILL)


def test_hup_with_an_unreadable_configuration_keeps_the_running_one(caplog):
    def reload():
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    master, processes = make_master(reload=reload)
    boot(master, processes)
    before, config = serving(master), master.config
    master.pending_signals.append(signal.SIGHUP)
    step(master)
    assert "keeping the current one" in caplog.text
    assert master.config is config and serving(master) == before
    assert len(master.workers) == 2


def test_hup_with_an_invalid_configuration_is_one_line(caplog):
    def reload():
        raise ConfigError("--workers: must be a positive integer, got '0'")

    master, processes = make_master(reload=reload)
    boot(master, processes)
    master.pending_signals.append(signal.SIGHUP)
    step(master)
    assert "the configuration is invalid, keeping the current one: --workers" in caplog.text
    assert "Traceback" not in caplog.text and len(master.workers) == 2


def test_hup_keeps_the_options_it_cannot_apply(caplog):
    new = build_config(None, {"workers": 2, "bind": ["127.0.0.1:9999"], "keep_alive": 9.0},
                       environ={})
    master, processes = make_master(reload=lambda: new)
    boot(master, processes)
    master.pending_signals.append(signal.SIGHUP)
    step(master)
    assert "--bind changed and is not applied" in caplog.text
    assert master.config.bind == ["127.0.0.1:8000"]  # the running value
    assert master.config.keep_alive == 9.0  # what the new workers read is applied


def test_reload_retires_each_old_worker_with_term_once_its_replacement_is_ready():
    master, processes = make_master()
    boot(master, processes)
    old = serving(master)
    master.pending_signals.append(signal.SIGHUP)
    step(master)
    new = sorted(set(master.workers) - set(old))
    assert len(new) == 2 and not processes.signalled(signal.SIGTERM)
    processes.say(new[0], channel.READY)
    step(master)
    # TERM, not INT: the shared socket stays open, the new worker takes what is queued.
    retired = processes.signalled(signal.SIGTERM)
    assert len(retired) == 1 and retired[0] in old
    assert not processes.signalled(signal.SIGINT)


def test_a_replacement_that_dies_during_a_reload_leaves_its_predecessor_serving(caplog):
    master, processes = make_master()
    boot(master, processes)
    old = serving(master)
    master.pending_signals.append(signal.SIGHUP)
    step(master)
    new = sorted(set(master.workers) - set(old))
    processes.exit(new[0], 3)
    step(master)
    assert "keeps serving" in caplog.text
    assert serving(master) == old and not processes.signalled(signal.SIGTERM)


def test_an_old_worker_that_dies_during_a_reload_is_not_restarted_twice():
    master, processes = make_master()
    boot(master, processes)
    old = serving(master)
    master.pending_signals.append(signal.SIGHUP)
    step(master)
    processes.advance(YOUNG_DEATH + 1)
    processes.exit(old[0], -signal.SIGKILL)
    step(master)
    processes.advance(RESTART_DELAY_FIRST * 4)
    step(master)
    # The replacement already booting is that slot's worker: no third one is forked.
    assert len(master.workers) == 3
    boot(master, processes)
    assert len(serving(master)) == 2


def test_hung_worker_gets_a_stack_dump_then_sigkill():
    master, processes = make_master(timeout=5.0)
    boot(master, processes)
    quiet, talking = serving(master)
    for _ in range(7):
        processes.advance(POLL_INTERVAL)
        processes.say(talking, channel.HEARTBEAT)
        step(master)
    assert processes.signalled(signal.SIGUSR2) == [quiet]
    processes.advance(STACK_DUMP_GRACE)
    step(master)
    assert processes.signalled(signal.SIGKILL) == [quiet]


def test_usr2_checks_the_new_image_while_supervising_on(caplog):
    master, processes = make_master("app:app", timeout=2.0)
    boot(master, processes)
    master.pending_signals.append(signal.SIGUSR2)
    step(master)
    assert master.image_check is not None
    assert processes.spawned[-1][-1] == "--check-config"
    # The check takes longer than --timeout; the workers keep beating and are left alone.
    for _ in range(5):
        processes.advance(POLL_INTERVAL)
        beat(master, processes)
        step(master)
    assert not processes.signalled(signal.SIGUSR2) and not processes.signalled(signal.SIGKILL)
    processes.exit(master.image_check.pid, 3)
    step(master)
    assert "not re-executing, the new image would fail" in caplog.text
    assert master.image_check is None and not processes.execs


def test_usr2_check_past_its_limit_is_killed_and_refused(caplog):
    master, processes = make_master("app:app")
    boot(master, processes)
    master.pending_signals.append(signal.SIGUSR2)
    step(master)
    check = master.image_check.pid
    processes.advance(upgrade.CHECK_TIMEOUT + 1)
    beat(master, processes)
    step(master)
    assert processes.signalled(signal.SIGKILL) == [check]
    processes.exit(check, -signal.SIGKILL)
    step(master)
    assert "took longer than" in caplog.text and not processes.execs


def test_a_second_usr2_during_the_check_starts_no_second_check():
    master, processes = make_master("app:app")
    boot(master, processes)
    master.pending_signals += [signal.SIGUSR2, signal.SIGUSR2]
    step(master)
    assert len(processes.spawned) == 1


def test_usr2_execs_with_the_master_signals_blocked_and_survives_a_failed_exec(caplog):
    master, processes = make_master("app:app")
    boot(master, processes)
    master.pending_signals.append(signal.SIGUSR2)
    step(master)
    processes.exit(master.image_check.pid, 0)
    step(master)
    (argv, blocked), = processes.execs
    assert argv[-1] == "app:app"
    assert {signal.SIGHUP, signal.SIGTERM, signal.SIGUSR2, signal.SIGTTIN} <= blocked
    assert "exec failed" in caplog.text
    assert not processes.signalled(signal.SIGKILL)
    assert master.image_check is None and not master.stopping


def test_signals_caught_before_the_exec_are_left_pending_for_the_new_image():
    master, processes = make_master("app:app")
    boot(master, processes)
    master.pending_signals.append(signal.SIGUSR2)
    step(master)
    processes.exit(master.image_check.pid, 0)
    reap = processes.reap

    def reap_while_a_signal_arrives():
        # A TTIN's handler runs after this round dispatched its signals, while it reaps the
        # check and execs: queued here, it would die with this image.
        master.pending_signals.append(signal.SIGTTIN)
        yield from reap()

    processes.reap = reap_while_a_signal_arrives
    step(master)
    assert processes.left_pending == [signal.SIGTTIN]
    assert master.pending_signals == []  # taken: on a failed exec the handler gets it again


def test_the_new_image_gets_the_configuration_the_check_validated():
    master, processes = make_master("app:app")
    boot(master, processes)
    master.pending_signals.append(signal.SIGUSR2)
    step(master)
    check = master.image_check
    check.stdout.write(b'app = "app:app"\nworkers = 2\n')
    processes.exit(check.pid, 0)
    step(master)
    assert processes.exec_env[upgrade.CHECKED_CONFIG_ENV] == 'app = "app:app"\nworkers = 2\n'


def test_a_reexecuted_image_without_workers_still_takes_over(caplog):
    caplog.set_level(logging.INFO, logger="duck_prefork")
    processes = FakeProcesses()
    config = build_config(None, {"workers": 2}, environ={})
    master = SteppedMaster(config, [], processes=processes, reexecuted=True)
    master.start()
    assert "re-executed master pid" in caplog.text
    assert master.booted  # a new worker that cannot boot must not stop the site
    assert len(master.workers) == 2


def test_graceful_stop_sends_int_and_kills_after_the_allowance():
    master, processes = make_master(graceful_timeout=10.0)
    boot(master, processes)
    pids = serving(master)
    master.pending_signals.append(signal.SIGTERM)
    step(master)
    assert sorted(processes.signalled(signal.SIGINT)) == pids
    processes.advance(10.0 + STOP_ALLOWANCE - 0.1)
    step(master)
    assert not processes.signalled(signal.SIGKILL)
    processes.advance(0.2)
    step(master)
    assert sorted(processes.signalled(signal.SIGKILL)) == pids
    assert not master.workers


def test_ttou_on_shared_sockets_retires_with_term():
    master, processes = make_master(workers=3)
    boot(master, processes)
    master.pending_signals.append(signal.SIGTTOU)
    step(master)
    assert len(processes.signalled(signal.SIGTERM)) == 1
    assert not processes.signalled(signal.SIGINT)


def test_crash_loop_backs_off_exponentially():
    master, processes = make_master(workers=1)
    boot(master, processes)
    delays = []
    for _ in range(4):
        (pid,) = master.workers
        processes.exit(pid, 1)
        step(master)
        slot = master.slots[1]
        delays.append(round(slot.restart_at - processes.clock, 3))
        processes.advance(slot.restart_at - processes.clock)
        step(master)
        processes.say(next(iter(master.workers)), channel.READY)
        step(master)
    assert delays == [RESTART_DELAY_FIRST * 2 ** n for n in range(4)]
