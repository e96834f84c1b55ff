"""The master: binds, forks workers, keeps their count, stops them. Synchronous on purpose.

No event loop and no threads run here (forking from either is how prefork servers deadlock).
The master sleeps in poll() on a self-pipe that signal handlers wake, plus one channel per
worker. Signal handlers only queue the signal; run() dispatches each to handle_<name>().

Nothing may take the master down while it has workers: each step of its loop, each signal's
handler and each worker's message runs under one guard (`guarded`) that logs the traceback of a
bug and lets supervision go on; the only way out of run() is a stop. Every system call goes
through `Processes`, so the decisions are unit-tested against a fake of it.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import setproctitle

from .. import __version__, build, logs
from ..config import Config, ConfigError
from ..hooks import run_hook
from ..logs import log
from ..metrics.gather import WorkerFacts
from ..metrics.layout import CellWriter
from ..metrics.service import Metrics
from ..metrics.status import summary_line
from ..net.listeners import Listener, describe_all
from ..tls.context import TlsError
from ..tls.keeper import CertificateKeeper
from ..worker import channel
from ..worker.process import (
    EXIT_BOOT_FAILED,
    STOP_ALLOWANCE,
    Worker,
    process_title,
)
from . import drain, health, slots, upgrade
from .agent import AgentServer, agent_answer
from .drain import Phase, Trigger
from .lifecycle import Event, WorkerProcess
from .processes import Processes, signal_name
from .reload import Watcher
from .slots import Slot
from .systemd import Notifier, status_line

EXIT_OK = 0
EXIT_CONFIG = 1

HANDLED_SIGNALS = {
    signal.SIGTERM: "term",
    signal.SIGINT: "int",
    signal.SIGQUIT: "quit",
    signal.SIGHUP: "hup",
    signal.SIGTTIN: "ttin",
    signal.SIGTTOU: "ttou",
    signal.SIGUSR1: "usr1",
    signal.SIGUSR2: "usr2",
    signal.SIGCHLD: "chld",
}

# The loop's longest sleep: deadlines that nothing wakes the master for (a hung worker's
# heartbeat age, the memory check) are looked at this often.
POLL_INTERVAL = 1.0
# How often the STATUS= line is refreshed with the metrics' figures (when it changed).
STATUS_INTERVAL = 5.0
# After a step of the loop raised (a bug, logged), the next round waits this long at least, so
# a bug that repeats cannot spin the master at 100% CPU or flood the log.
AFTER_A_BUG = 0.5

# Options a HUP cannot apply, and what does: they shape the master itself or its listeners,
# which live across reloads. Everything else reaches the new workers.
_LISTENERS = "the listeners are kept across HUP and USR2: it takes a restart"
_WATCHER = "the --reload watcher is started once: it takes USR2 or a restart"
RESTART_ONLY = {
    "bind": _LISTENERS,
    "backlog": _LISTENERS,
    "reuse_port": _LISTENERS,
    "preload": "the master's copy of the app is kept: it takes USR2 or a restart",
    "chdir": "the master's directory is kept: it takes USR2 or a restart",
    "umask": "the master's umask is kept: it takes USR2 or a restart",
    "pid": "the pid file is written once: it takes USR2 or a restart",
    "error_logfile": "the master's error log is kept: it takes USR2 or a restart",
    "log_level": "the master's error log is kept: it takes USR2 or a restart",
    "user": "the master checked the user at start: it takes USR2 or a restart",
    "group": "the master checked the group at start: it takes USR2 or a restart",
    "log_config": "the logging configuration is applied once: it takes USR2 or a restart",
    "agent_bind": "the agent-check socket is bound once: it takes USR2 or a restart",
    "reload": _WATCHER,
    "reload_dir": _WATCHER,
    "reload_include": _WATCHER,
    "reload_exclude": _WATCHER,
    "metrics_bind": "the metrics socket is bound once: it takes USR2 or a restart",
    "metrics_token": "the metrics token is read once: it takes USR2 or a restart",
}


@dataclass
class Master:
    """The supervisor of the worker processes."""

    config: Config
    listeners: list[Listener]
    reload_config: Callable[[], Config] | None = None  # re-reads the configuration on HUP
    preloaded_app: object = None  # --preload: the app, imported here before any fork
    argv: list[str] | None = None  # the command line, for USR2's re-exec
    inherited: list[upgrade.InheritedWorker] = field(default_factory=list)  # after a re-exec
    reexecuted: bool = False  # this image was started by USR2 (with or without workers)
    workers: dict[int, WorkerProcess] = field(default_factory=dict)  # by pid
    slots: dict[int, Slot] = field(default_factory=dict)
    pending_signals: list[int] = field(default_factory=list)
    booted: bool = False  # every worker of the first generation has reported ready
    phase: Phase = Phase.SERVING  # how far a stop has gone (drain.py)
    stopping: bool = False  # any phase but SERVING: nothing is restarted, reloaded or scaled
    graceful: bool = True
    stop_deadline: float = 0.0
    exit_code: int = EXIT_OK
    oom_kills: int | None = None  # the cgroup's oom_kill count when last looked at
    next_memory_check: float = 0.0
    notifier: Notifier = field(default_factory=Notifier)
    reloading: bool = False  # a HUP's replacements are still booting (systemd waits for READY)
    last_reload: str = ""  # when the last reload finished, for STATUS=
    processes: Processes = field(default_factory=Processes)
    image_check: upgrade.ImageCheck | None = None  # USR2: the new image being tried
    watcher: Watcher | None = None  # --reload: the process that sends us HUP on a change
    last_failure: str = ""  # the last boot failure logged with its cause (logged once)
    bug_seen: bool = False  # a step of the loop raised since the last wait
    certificates: CertificateKeeper | None = None  # TLS: what the workers are forked with
    agent: AgentServer | None = None  # --agent-bind
    metrics: Metrics | None = None  # --metrics-bind: the area, the gatherer, the scrape socket
    next_status: float = 0.0  # when the STATUS= line is next refreshed (with metrics)
    last_status: str = ""

    @property
    def title_name(self) -> str:
        return self.config.name or self.config.app or "demo"

    # --- the story of the master -----------------------------------------------------------

    def run(self) -> int:
        setproctitle.setproctitle(process_title("master", self.title_name))
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._enqueue_signal)
        # After USR2 the old image exec'd with these blocked (see processes.py): what arrived
        # meanwhile is delivered now, to the handlers just installed.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        log.info("duck-prefork %s, %s (pid %d) listening on %s", __version__,
                 build.DESCRIPTION, os.getpid(), describe_all(self.listeners))
        slots.explain_reuse_port(self.listeners, self.config.reuse_port)
        self.oom_kills = health.oom_kill_count()
        if self.metrics is not None:
            self.metrics.facts = self.metrics_facts
            log.info("metrics on %s", self.config.metrics_bind)
        try:
            self.start()
            while self.workers or not self.stopping:
                self.step()
        finally:
            # Reached on a stop with every worker gone; anything else that gets here is not an
            # Exception (those are caught by the guard), and no worker may outlive us.
            self.kill_all(signal.SIGKILL)
            if self.image_check is not None:
                self._signal(self.image_check.pid, signal.SIGKILL)
                self.processes.wait(self.image_check.pid)
            self.stop_watcher()
            if self.agent is not None:
                self.agent.close()
            for listener in self.listeners:
                listener.close(unlink=True)
            if self.metrics is not None:
                self.metrics.close(unlink=True)
            signal.set_wakeup_fd(-1)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
        log.info("stopped (exit code %d)", self.exit_code)
        return self.exit_code

    def start(self) -> None:
        for number in range(1, self.config.workers + 1):
            self.slots[number] = Slot()
        if self.reexecuted:
            self.guarded("adopting the previous image's workers", self.take_over)
        else:
            run_hook("on-starting", self.config.on_starting, self.config)
            for number in self.slots:
                self.guarded(f"starting worker {number}", self.spawn, number)
        if self.config.reload:
            self.guarded("starting the --reload watcher", self.start_watcher)

    def start_watcher(self) -> None:
        self.watcher = Watcher(self.config, self.processes, logs.error_stream().fileno())

    def stop_watcher(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.stop()

    def step(self) -> None:
        """One round of the loop: wait, then act on what happened and on what is due."""
        if self.bug_seen:
            self.bug_seen = False
            self.processes.sleep(AFTER_A_BUG)
        self.guarded("waiting for events", self.wait_for_events)
        self.dispatch_signals()
        self.guarded("reaping workers", self.reap_workers)
        self.guarded("checking deadlines", self.check_deadlines)
        self.guarded("telling the workers the master's view", self.share_view)
        if self.agent is not None:
            self.guarded("closing answered agent checks", self.agent.expire,
                         self.processes.now())
        if not self.stopping:
            if self.certificates is not None:
                self.guarded("watching the TLS certificates", self.watch_certificates)
            self.guarded("checking worker health", self.check_health)
            self.guarded("restarting workers", self.restart_missing_workers)
            self.notifier.pet_watchdog(self.processes.now())
            if self.metrics is not None:
                self.guarded("refreshing the systemd status", self.refresh_status)
        if self.metrics is not None:
            self.guarded("the metrics' round", self.metrics.tick, list(self.workers))

    def guarded(self, what: str, action: Callable[..., object], *args: object) -> None:
        """Run one step of supervision; a bug in it is logged and supervision goes on. A
        master that exits on a bug takes every worker and every request with it."""
        try:
            action(*args)
        except Exception:
            self.bug_seen = True
            log.exception("bug while %s (the master keeps supervising)", what)

    # --- events ----------------------------------------------------------------------------

    def _enqueue_signal(self, signum: int, frame: object) -> None:
        self.pending_signals.append(signum)

    def wait_for_events(self) -> None:
        """Sleep until a signal, a worker's message or the next deadline. poll(), not select():
        descriptor numbers pass 1024 in a master with many workers or a large fd table."""
        timeout = POLL_INTERVAL
        now = self.processes.now()
        for deadline in self.deadlines():
            timeout = min(timeout, max(0.0, deadline - now))
        channels = {worker.channel: worker for worker in self.workers.values()
                    if worker.channel_open}
        agent_fds = self.agent.fds() if self.agent is not None else []
        poller = select.poll()
        for fd in (self._wakeup_r, *channels, *agent_fds):
            poller.register(fd, select.POLLIN)
        scrapes = self.metrics.poll_fds() if self.metrics is not None else {}
        for fd, events in scrapes.items():
            poller.register(fd, events)
        try:
            ready = poller.poll(timeout * 1000)
        except InterruptedError:
            return
        for fd, _ in ready:
            if fd == self._wakeup_r:
                self.processes.read(fd)
            elif fd in scrapes:
                assert self.metrics is not None
                self.guarded("serving a metrics scrape", self.metrics.on_event, fd)
            elif fd not in channels:
                self.guarded("answering an agent check", self.answer_agent, fd)
            else:
                self.guarded(f"reading worker {channels[fd].number}'s messages",
                             self.read_channel, channels[fd])

    def deadlines(self) -> list[float]:
        check = [self.image_check.deadline] if self.image_check else []
        agent_deadline = self.agent.deadline() if self.agent is not None else None
        if agent_deadline is not None:
            check.append(agent_deadline)
        if self.stopping:
            return [self.stop_deadline, *check]
        watchdog = self.notifier.watchdog_due
        if watchdog is not None:
            check.append(watchdog)
        scrape = self.metrics.deadline() if self.metrics is not None else None
        if scrape is not None:
            check.append(scrape)
        return [*check, *self._worker_deadlines()]

    def _worker_deadlines(self) -> list[float]:
        return [slot.restart_at for number, slot in self.slots.items()
                if slot.restart_at and not self._slot_alive(number)] + \
            [worker.kill_at for worker in self.workers.values()
             if worker.kill_at and not worker.killed]

    def read_channel(self, worker: WorkerProcess) -> None:
        data, eof = self.processes.read(worker.channel)
        if eof:
            worker.channel_open = False  # stop selecting on it until the worker is reaped
        if worker.failure is not None:
            worker.failure += data.decode("utf-8", "replace")
            return
        messages, worker.inbox, worker.failure = channel.split_messages(worker.inbox + data)
        if messages:
            worker.last_beat = self.processes.now()
        for message in messages:
            if type(message) is int:
                worker.busy = message  # a heartbeat with the requests in progress
            elif message is channel.Message.READY:
                self.on_worker_ready(worker)
            elif message is channel.Message.RECYCLE:
                log.info("worker %d (pid %d) served its --max-requests: replacing it",
                         worker.number, worker.pid)
                self.replace(worker, "max_requests")

    def dispatch_signals(self) -> None:
        while self.pending_signals:
            signum = self.pending_signals.pop(0)
            name = HANDLED_SIGNALS[signal.Signals(signum)]
            if signum != signal.SIGCHLD:
                log.debug("received SIG%s", name.upper())
            self.guarded(f"handling {name.upper()}", getattr(self, "handle_" + name))

    # --- signal handlers -------------------------------------------------------------------

    def handle_term(self) -> None:
        self.move(drain.term_trigger(self.config.drain_delay), "TERM")

    def handle_int(self) -> None:
        self.move(Trigger.INT, "INT" if self.phase is not Phase.DRAINING else "INT again")

    def handle_quit(self) -> None:
        self.move(Trigger.QUIT, "QUIT")

    def move(self, trigger: Trigger, why: str) -> None:
        """Apply a stop's trigger (drain.py) and start what the new phase does."""
        old = self.phase
        new = drain.next_phase(old, trigger)
        if new is old:
            return
        if new is Phase.LAME_DUCK:
            log.info("%s: lame duck for %g s (--drain-delay): readiness 503, Connection: close "
                     "on every response, the listeners still accept; then the graceful stop "
                     "(TERM again to start it now)", why, self.config.drain_delay)
            self.lame_duck()
        elif new is Phase.DRAINING:
            log.info("%s: graceful stop%s", why,
                     " (INT again to stop at once)" if trigger is Trigger.INT else "")
            self.stop(graceful=True)
        else:
            log.info("%s: stopping at once", why)
            self.stop(graceful=False)

    def lame_duck(self) -> None:
        """The start of a stop with --drain-delay: the workers hear it through the master's
        view (share_view), the balancer through their readiness answers and the agent check;
        the listeners stay open until the delay is over (check_deadlines)."""
        self.notifier.stopping()
        self.phase = Phase.LAME_DUCK
        self.stopping = True
        if self.image_check is not None:
            self._signal(self.image_check.pid, signal.SIGKILL)  # reaped, then ignored
        self.stop_deadline = self.processes.now() + self.config.drain_delay
        self.share_view()

    def handle_chld(self) -> None:
        pass  # reap_workers() runs after every wake-up

    def handle_hup(self) -> None:
        """Reload: a new worker for every slot, each old one retired once its new one is ready.
        A bad configuration or new workers that cannot boot leave the old ones serving."""
        if self.stopping:
            return
        self.last_failure = ""
        if self.reload_config is not None:
            try:
                config = self.reload_config()
            except Exception as exc:
                if isinstance(exc, ConfigError):
                    log.error("HUP: the configuration is invalid, keeping the current one: %s",
                              exc)
                else:
                    log.exception("HUP: reading the configuration failed, keeping the current "
                                  "one")
                # Type=notify-reload waits for RELOADING=1 then READY=1 after every HUP: a
                # reload that changes nothing must still answer, or systemctl reload hangs.
                self.notifier.reloading()
                self.notifier.ready(self.status_line())
                return
            kept = {}
            for name, reason in RESTART_ONLY.items():
                if getattr(config, name) != getattr(self.config, name):
                    log.warning("HUP: --%s changed and is not applied: %s",
                                name.replace("_", "-"), reason)
                    kept[name] = getattr(self.config, name)
            config = replace(config, **kept)
            if self.certificates is not None:
                try:
                    self.certificates.reload(config, self.processes.now())
                except TlsError as exc:
                    log.error("HUP: %s; keeping the running certificates, configuration and "
                              "workers", exc)
                    self.notifier.reloading()
                    self.notifier.ready(self.status_line())
                    return
            run_hook("on-reload", config.on_reload, config)
            self.config = config
        self.roll_workers("HUP")

    def roll_workers(self, why: str) -> None:
        """A new worker for every slot, each old one retired once its new one is ready (HUP,
        and new TLS certificates)."""
        self.notifier.reloading()
        self.reloading = True
        while len(self.slots) > self.config.workers:
            self.remove_slot()
        current = [w for w in self.workers.values() if not w.retiring and w.replaces is None]
        log.info("%s: reloading %s (each old one stops once its new one is ready)",
                 why, logs.plural(len(current), "worker"))
        for worker in current:
            self.replace(worker, "reload")
        while len(self.slots) < self.config.workers and self.add_slot():
            pass

    def watch_certificates(self) -> None:
        """--tls-reload watch and the daily expiry check (see tls/keeper.py)."""
        keeper = self.certificates
        assert keeper is not None
        now = self.processes.now()
        keeper.check_expiry(now)
        if keeper.poll(now):
            self.roll_workers("TLS: new certificates")

    def handle_ttin(self) -> None:
        if not self.stopping and self.add_slot():
            log.info("TTIN: one worker more (%d)", len(self.slots))

    def handle_ttou(self) -> None:
        if self.stopping:
            return
        if len(self.slots) <= 1:
            log.info("TTOU: already down to one worker")
            return
        number = self.remove_slot()
        log.info("TTOU: one worker fewer (%d); stopping worker %d gracefully", len(self.slots),
                 number)

    def add_slot(self) -> bool:
        """A new worker number and its worker; False if its sockets cannot be opened."""
        number = max(self.slots, default=0) + 1
        if not self.open_slot_sockets(number):
            return False
        self.slots[number] = Slot()
        self.spawn(number)
        return True

    def remove_slot(self) -> int:
        """Drop the highest worker number; its workers drain and are not restarted."""
        number = max(self.slots)
        del self.slots[number]
        slot_sockets = any(listener.slot == number for listener in self.listeners)
        for worker in [w for w in self.workers.values() if w.number == number]:
            worker.exit_reason = worker.exit_reason or "scale_down"
            self.retire(worker, listeners_closing=slot_sockets)
        self.close_slot_sockets(number)
        return number

    def open_slot_sockets(self, number: int) -> bool:
        return slots.open_slot_sockets(self.listeners, number, self.config.backlog)

    def close_slot_sockets(self, number: int) -> None:
        slots.close_slot_sockets(self.listeners, number)

    def handle_usr2(self) -> None:
        """Upgrade in place: re-execute this master (same pid) with the same command line; the
        new image adopts the listeners and workers, then replaces the workers as for HUP.
        The new image is first tried with --check-config in a child process; the master
        supervises on meanwhile (an import can take seconds) and execs when it passes."""
        if self.stopping or self.argv is None:
            return
        if self.image_check is not None:
            log.info("USR2: the new image is already being checked (pid %d)",
                     self.image_check.pid)
            return
        problem = upgrade.image_problem(self.argv)
        if problem:
            log.error("USR2: not re-executing, the new image would fail: %s", problem)
            return
        try:
            self.image_check = upgrade.ImageCheck(self.argv, self.processes,
                                                 self.processes.now())
        except OSError as exc:
            log.error("USR2: cannot start the new image's check (%s); not re-executing", exc)
            return
        log.info("USR2: checking the new image (pid %d runs --check-config)",
                 self.image_check.pid)

    def on_image_checked(self, code: int) -> None:
        """USR2's check has exited: exec the new image if it passed."""
        check, self.image_check = self.image_check, None
        if check is None:
            return
        problem = check.result(code)
        if self.stopping or self.argv is None:
            return
        if problem:
            log.error("USR2: not re-executing, the new image would fail: %s", problem)
            return
        workers = [upgrade.InheritedWorker(w.pid, w.number, w.channel, w.ever_ready, w.retiring)
                   for w in self.workers.values()]
        log.info("USR2: re-executing the master (pid %d) with %s serving",
                 os.getpid(), logs.plural(len(workers), "worker"))
        metrics = self.metrics.inherit() if self.metrics is not None else ("", [])
        self.notifier.reloading()  # READY=1 comes from the new image once its workers serve
        self.stop_watcher()  # the new image starts its own
        try:
            upgrade.exec_new_image(self.argv, self.listeners, workers, self.processes,
                                  HANDLED_SIGNALS, self._take_pending_signals,
                                  check.checked_config, metrics)
        except OSError as exc:
            log.error("USR2: exec failed (%s); the current image keeps running", exc)
            self.notifier.ready(self.status_line())

    def _take_pending_signals(self) -> list[int]:
        """The signals queued but not handled yet, for exec to leave pending for the new
        image (they would die with this one)."""
        pending, self.pending_signals = self.pending_signals, []
        return pending

    def take_over(self) -> None:
        """After a re-exec: adopt the previous image's workers, then replace them."""
        now = self.processes.now()
        for inherited in self.inherited:
            worker = WorkerProcess(inherited.number, inherited.pid, inherited.channel, now,
                                   last_beat=now)
            if inherited.ready:
                worker.ready_at = now
                worker.on(Event.READY)
            if inherited.retiring:
                worker.on(Event.RETIRE)
            self.workers[inherited.pid] = worker
        if self.metrics is not None:
            self.metrics.adopt([inherited.pid for inherited in self.inherited])
        self.booted = True  # a new worker that cannot boot now must not stop the site
        self.reloading = True  # report_state sends READY=1 once the replacements serve
        # The pid is unchanged (execve), so systemd's main pid is right already; saying so
        # costs one field and keeps a NotifyAccess=main unit correct whatever the exec did.
        self.notifier.notify(f"MAINPID={os.getpid()}")
        log.info("re-executed master pid %d", os.getpid())
        # --reuse-port: the slots' sockets came along; the new configuration may have more
        # or fewer workers.
        for number in {listener.slot for listener in self.listeners} - {0, *self.slots}:
            self.close_slot_sockets(number)
        for number in list(self.slots):
            if not self.open_slot_sockets(number):
                del self.slots[number]
        for worker in list(self.workers.values()):
            if worker.retiring:
                continue
            if worker.number in self.slots:
                self.replace(worker, "upgrade")
            else:
                worker.exit_reason = "scale_down"
                self.retire(worker)  # the new configuration has fewer workers
        for number in self.slots:
            if not self._slot_alive(number):
                self.spawn(number)

    def handle_usr1(self) -> None:
        """Reopen the log files (after logrotate moved them), here and in every worker."""
        logs.reopen()
        log.info("USR1: log files reopened")
        for pid in list(self.workers):
            self._signal(pid, signal.SIGUSR1)

    # --- workers ---------------------------------------------------------------------------

    def spawn(self, number: int, replaces: WorkerProcess | None = None) -> bool:
        """Fork worker `number`; False if the fork failed (EAGAIN under a TasksMax, ENOMEM):
        then the slot is retried like a crash, with a back-off, and a replacement's
        predecessor keeps serving."""
        sys.stdout.flush()
        sys.stderr.flush()
        cell = self.metrics.claim(number) if self.metrics is not None else None
        try:
            pid, read_end = self.processes.fork(
                lambda own_read_end, write_end: self._run_worker(own_read_end, write_end,
                                                                 number, cell),
                HANDLED_SIGNALS)
        except OSError as exc:
            if self.metrics is not None:
                self.metrics.fork_failed(cell)
            slot = self.slots.get(number)
            if slot is not None and replaces is None:
                delay = self._back_off(slot)
                log.error("cannot fork worker %d: %s; retrying in %.1f s", number,
                          exc.strerror or exc, delay)
            else:
                log.error("cannot fork a new worker %d: %s; %s", number, exc.strerror or exc,
                          f"pid {replaces.pid} keeps serving" if replaces else "not starting it")
            return False
        now = self.processes.now()
        if self.metrics is not None:
            self.metrics.started(cell, pid)
        self.workers[pid] = WorkerProcess(number, pid, read_end, now, last_beat=now,
                                          replaces=replaces.pid if replaces else None)
        if replaces is not None:
            replaces.replaced_by = pid
        log.info("booting worker %d (pid %d)%s", number, pid,
                 f" to replace pid {replaces.pid}" if replaces else "")
        return True

    def _run_worker(self, own_read_end: int, write_end: int, number: int,
                    cell: int | None = None) -> None:
        """In the new child: shed the master's state, then become worker `number`."""
        self._forget_master_state(own_read_end, number)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        listeners = [listener for listener in self.listeners if listener.serves(number)]
        worker = Worker(self.config, listeners, number, write_end, self.title_name)
        worker.preloaded_app = self.preloaded_app
        if self.certificates is not None:
            worker.certificates = self.certificates.current
        if self.metrics is not None and cell is not None:
            worker.metrics = CellWriter(self.metrics.area, cell)
        worker.run()

    def replace(self, worker: WorkerProcess, reason: str) -> None:
        """Start a successor for `worker`; `worker` stops once the successor is ready.
        `reason` is why it goes (metrics.layout.EXIT_REASONS), counted once it has gone."""
        if worker.retiring or worker.replaced_by in self.workers:
            return  # already on its way out
        worker.exit_reason = reason
        self.spawn(worker.number, replaces=worker)

    def retire(self, worker: WorkerProcess, listeners_closing: bool = False) -> None:
        """Stop `worker` gracefully for good: it drains and is not restarted. TERM when the
        listeners stay (a replacement or the other workers take what is queued on them), INT
        when they are about to close (a stop, a removed --reuse-port slot): then the worker
        first accepts what is queued, which the kernel would reset with the last close."""
        if not worker.retiring:
            worker.on(Event.RETIRE)
            self._signal(worker.pid, signal.SIGINT if listeners_closing else signal.SIGTERM)

    def _signal(self, pid: int, signum: int) -> None:
        self.processes.kill(pid, signum)

    def _forget_master_state(self, own_read_end: int, number: int) -> None:
        """In a new worker: drop the master's signal handling and file descriptors, and the
        other slots' sockets (--reuse-port): a copy left open here would keep a removed
        slot's socket taking connections that nobody accepts."""
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        for fd in (self._wakeup_r, self._wakeup_w, own_read_end,
                   *(worker.channel for worker in self.workers.values())):
            os.close(fd)
        for listener in self.listeners:
            if not listener.serves(number):
                listener.socket.close()
        if self.image_check is not None:
            self.image_check.close()
        if self.notifier.socket is not None:
            self.notifier.socket.close()  # only the master speaks to systemd
        if self.agent is not None:
            self.agent.close()  # only the master answers agent checks
        if self.metrics is not None:
            self.metrics.in_child()

    def on_worker_ready(self, worker: WorkerProcess) -> None:
        if worker.ready_at is None:
            worker.ready_at = self.processes.now()
        worker.on(Event.READY)
        log.info("worker %d (pid %d) ready", worker.number, worker.pid)
        predecessor = self.workers.get(worker.replaces) if worker.replaces else None
        worker.replaces = None
        if predecessor is not None:
            self.retire(predecessor)
        if worker.number not in self.slots:
            self.retire(worker)  # scaled down (TTOU) while it booted
        self.report_state()
        if not self.booted and all(w.ever_ready for w in self.workers.values()) \
                and len(self.workers) == len(self.slots):
            self.booted = True
            log.info("ready: %s serving", logs.plural(len(self.workers), "worker"))
            self.notifier.ready(self.status_line())

    def reap_workers(self) -> None:
        for pid, code in self.processes.reap():
            if self.image_check is not None and pid == self.image_check.pid:
                self.guarded("finishing USR2", self.on_image_checked, code)
                continue
            if self.watcher is not None and pid == self.watcher.pid:
                self.watcher = None
                if not self.stopping:
                    log.error("the --reload watcher exited (%s); changes are not watched any "
                              "more (HUP still reloads)", f"code {code}" if code >= 0
                              else f"killed by {signal_name(-code)}")
                continue
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self.guarded(f"reading worker {worker.number}'s last messages", self.read_channel,
                         worker)
            self.processes.close(worker.channel)
            self.guarded(f"handling the exit of worker {worker.number}", self.on_worker_exit,
                         worker, code)
            if self.metrics is not None:
                self.guarded(f"counting the exit of worker {worker.number}",
                             self.metrics.exited, pid, None if self.stopping
                             else worker.exit_reason or "exit_code")
            run_hook("worker-exit", self.config.worker_exit, self.config, worker.number,
                     worker.pid, code)

    def on_worker_exit(self, worker: WorkerProcess, code: int) -> None:
        how = f"killed by {signal_name(-code)}" if code < 0 else f"exited with code {code}"
        oom_kills = health.oom_kill_count()
        if code < 0 and not worker.exit_reason:
            worker.exit_reason = "signal"
        if code == -signal.SIGKILL and oom_kills is not None and self.oom_kills is not None \
                and oom_kills > self.oom_kills:
            how += " (the kernel's OOM killer: out of memory)"
            if worker.exit_reason in ("", "signal"):
                worker.exit_reason = "oom"
        self.oom_kills = oom_kills
        if self.stopping or (worker.retiring and code == 0):
            log.info("worker %d (pid %d) %s", worker.number, worker.pid, how)
            return
        if worker.replaces is not None:
            # A replacement (reload, recycle) that could not boot: its predecessor serves on.
            # The same failure in every new worker (a syntax error under --reload): its
            # traceback is logged once.
            failure = worker.failure
            if failure and failure == self.last_failure:
                failure = "the same failure as above"
            elif failure:
                self.last_failure = failure
            log.error("new worker %d (pid %d) %s before it was ready; pid %d keeps serving%s",
                      worker.number, worker.pid, how, worker.replaces,
                      f": {failure}" if failure else "")
            self.report_state()
            return
        if worker.retiring:
            log.warning("worker %d (pid %d) %s while stopping", worker.number, worker.pid, how)
            return
        if not worker.ever_ready and not self.booted:
            # The first generation cannot boot: the app or its lifespan is broken. Retrying
            # would only crash-loop, so stop and say why.
            cause = worker.failure or f"worker {worker.number} {how} before it was ready"
            log.error("%s", cause)
            if self.config.error_logfile not in ("", "-"):
                print(cause, file=sys.stderr, flush=True)
            log.error("worker %d (pid %d) failed to boot (%s); stopping", worker.number,
                      worker.pid, how)
            self.exit_code = EXIT_BOOT_FAILED
            self.move(Trigger.BOOT_FAILED, "a worker could not boot")
            return
        slot = self.slots.get(worker.number)
        if slot is None:
            return  # its number was scaled away (TTOU)
        lived = self.processes.now() - worker.started
        if lived < slots.YOUNG_DEATH:
            delay = self._back_off(slot)
            log.error("worker %d (pid %d) %s after %.1f s; restarting in %.1f s", worker.number,
                      worker.pid, how, lived, delay)
            if worker.failure:
                log.error("worker %d could not boot: %s", worker.number, worker.failure)
        else:
            slot.crashes = 0
            slot.restart_at = 0.0
            log.error("worker %d (pid %d) %s; restarting it", worker.number, worker.pid, how)

    def _back_off(self, slot: Slot) -> float:
        return slot.back_off(self.processes.now())

    def report_state(self) -> None:
        """Tell systemd: READY=1 once a reload's replacements have all settled, else STATUS=."""
        if not self.notifier.enabled or not self.booted:
            return
        if self.reloading and not any(w.replaces is not None for w in self.workers.values()):
            self.reloading = False
            self.last_reload = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            self.notifier.ready(self.status_line())
        else:
            self.notifier.status(self.status_line())

    def status_line(self) -> str:
        if self.metrics is not None:
            return summary_line(self.metrics.snapshot(), self.last_reload)
        return status_line(self.serving_count(), len(self.slots), self.last_reload)

    # --- what the workers and the balancer hear ---------------------------------------------

    def serving_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.serving)

    def share_view(self) -> None:
        """Send each worker the master's view (how many workers serve, whether a stop has
        begun) when it differs from what that worker was last sent: --ready-path answers from
        it, and from the start of a stop every response carries Connection: close. A worker
        not reading now is sent it again on the next round."""
        view = channel.view_message(self.serving_count(), self.stopping)
        for worker in self.workers.values():
            if worker.view_sent != view and worker.channel_open and not worker.killed:
                if self.processes.send(worker.channel, view):
                    worker.view_sent = view

    def answer_agent(self, fd: int) -> None:
        agent = self.agent
        assert agent is not None
        serving = [w for w in self.workers.values() if w.serving]
        answer = agent_answer(self.stopping, len(serving), self.config.min_ready,
                              sum(1 for w in serving if w.busy))
        agent.ready(fd, answer, self.processes.now())

    def refresh_status(self) -> None:
        """With metrics: STATUS= every STATUS_INTERVAL seconds, when the line changed."""
        now = self.processes.now()
        if not self.notifier.enabled or not self.booted or now < self.next_status:
            return
        self.next_status = now + STATUS_INTERVAL
        line = self.status_line()
        if line != self.last_status:
            self.last_status = line
            self.notifier.status(line)

    def metrics_facts(self) -> tuple[list[WorkerFacts], list[int], list[Listener]]:
        """What the metrics need from the master's records (metrics.service.Facts)."""
        return ([WorkerFacts(worker.number, worker.pid, worker.state.value, worker.started,
                             worker.last_beat) for worker in self.workers.values()],
                sorted(self.slots), self.listeners)

    def _slot_alive(self, number: int) -> bool:
        return any(worker.number == number and not worker.retiring
                   for worker in self.workers.values())

    def restart_missing_workers(self) -> None:
        now = self.processes.now()
        for number, slot in self.slots.items():
            if not self._slot_alive(number) and slot.restart_at <= now:
                slot.restart_at = 0.0
                self.spawn(number)

    # --- health ----------------------------------------------------------------------------

    def check_health(self) -> None:
        """Kill workers that hang at boot (--boot-timeout) or later (--timeout; a hung one
        first dumps its stack to the error log), replace those over --max-worker-memory."""
        now = self.processes.now()
        config = self.config
        check_memory = config.max_worker_memory and now >= self.next_memory_check
        if check_memory:
            self.next_memory_check = now + health.MEMORY_CHECK_INTERVAL
        for worker in list(self.workers.values()):
            verdict = health.verdict(worker, config, now)
            if verdict is health.Verdict.KILL_NOW:
                self.kill(worker)
            elif verdict is health.Verdict.NOT_BOOTED:
                worker.on(Event.HANG)
                worker.exit_reason = "boot_timeout"
                worker.failure = (f"worker {worker.number} (pid {worker.pid}) was not ready "
                                  f"{config.boot_timeout:g} s after its fork (--boot-timeout): "
                                  f"the app's import or lifespan startup hangs")
                log.error("%s; killing it", worker.failure)
                self.kill(worker)
            elif verdict is health.Verdict.SILENT:
                log.error("worker %d (pid %d) has been silent for %.1f s (--timeout %g): "
                          "dumping its stack, then killing it", worker.number, worker.pid,
                          now - worker.last_beat, config.timeout)
                worker.on(Event.HANG)
                worker.exit_reason = "hung"
                self._signal(worker.pid, health.STACK_DUMP_SIGNAL)
                worker.kill_at = now + health.STACK_DUMP_GRACE
            elif check_memory and worker.serving and worker.replaced_by not in self.workers:
                self.check_memory(worker)

    def kill(self, worker: WorkerProcess) -> None:
        worker.killed = True
        self._signal(worker.pid, signal.SIGKILL)

    def check_memory(self, worker: WorkerProcess) -> None:
        used = health.memory_used(worker.pid)
        if used is not None and used > self.config.max_worker_memory * 1024 * 1024:
            log.warning("worker %d (pid %d) uses %.1f MiB, over --max-worker-memory %d: "
                        "replacing it", worker.number, worker.pid, used / 2**20,
                        self.config.max_worker_memory)
            self.replace(worker, "memory_limit")

    # --- stopping --------------------------------------------------------------------------

    def stop(self, graceful: bool) -> None:
        if not self.stopping:
            self.notifier.stopping()
        self.stopping = True
        self.phase = Phase.DRAINING if graceful else Phase.KILLING
        self.graceful = graceful
        if self.image_check is not None:
            self._signal(self.image_check.pid, signal.SIGKILL)  # reaped, then ignored
        # New connections are refused from now on (once the workers close their copies too).
        for listener in self.listeners:
            listener.close(unlink=False)
        now = self.processes.now()
        if graceful:
            # Workers drain for up to graceful_timeout, then run lifespan shutdown. INT: the
            # listeners are closing, so each first accepts what is queued (see retire()).
            self.stop_deadline = now + self.config.graceful_timeout + STOP_ALLOWANCE
            self.kill_all(signal.SIGINT)
        else:
            self.stop_deadline = now
            self.kill_all(signal.SIGKILL)

    def check_deadlines(self) -> None:
        now = self.processes.now()
        check = self.image_check
        if check is not None and not check.timed_out and now >= check.deadline:
            check.timed_out = True  # its exit is reaped and reported by on_image_checked
            self._signal(check.pid, signal.SIGKILL)
        if self.phase is Phase.LAME_DUCK and now >= self.stop_deadline:
            self.move(Trigger.DELAY_OVER, "--drain-delay over")
            return
        if self.stopping and self.workers and now >= self.stop_deadline:
            if self.graceful:
                log.warning("graceful stop took too long: killing %s",
                            logs.plural(len(self.workers), "worker"))
                self.phase = drain.next_phase(self.phase, Trigger.DEADLINE)
                self.graceful = False
            self.kill_all(signal.SIGKILL)
            self.stop_deadline = now + 1.0

    def kill_all(self, signum: int) -> None:
        for pid in list(self.workers):
            self._signal(pid, signum)
        if signum == signal.SIGKILL:
            self._reap_blocking()

    def _reap_blocking(self) -> None:
        """After SIGKILL: collect every worker, so none is left a zombie."""
        for pid, worker in list(self.workers.items()):
            self.processes.wait(pid)
            self.workers.pop(pid, None)
            self.processes.close(worker.channel)
            if self.stopping:
                log.info("worker %d (pid %d) killed", worker.number, pid)
