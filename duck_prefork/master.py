"""The master: binds, forks workers, keeps their count, stops them. Synchronous on purpose.

No event loop and no threads run here (forking from either is how prefork servers deadlock).
The master sleeps in select() on a self-pipe that signal handlers wake, plus one channel per
worker. Signal handlers only queue the signal; run() dispatches each to handle_<name>().
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
import setproctitle

from . import __version__, channel, logs, reexec
from .config import Config, ConfigError
from .hooks import run_hook
from .logs import log
from .pidfile import remove_pid_file, write_pid_file
from .sockets import Listener, bind_all, describe_all, from_systemd, open_slot
from .systemd import Notifier
from .worker import (
    EXIT_BOOT_FAILED,
    LIFESPAN_SHUTDOWN_TIMEOUT,
    BootFailure,
    Worker,
    load_application,
    process_title,
    resolve_user,
)

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

# A hung worker is sent this to dump every thread's stack (faulthandler), then killed after
# STACK_DUMP_GRACE seconds.
STACK_DUMP_SIGNAL = signal.SIGUSR2
STACK_DUMP_GRACE = 1.0
# How often --max-worker-memory is checked (reading USS costs the master a few ms a worker).
MEMORY_CHECK_INTERVAL = 5.0

# A worker that dies sooner than this after its fork counts as a crash, and is restarted
# after a delay that doubles with each consecutive crash, up to RESTART_DELAY_MAX.
YOUNG_DEATH = 5.0
RESTART_DELAY_FIRST = 0.5
RESTART_DELAY_MAX = 30.0


@dataclass
class WorkerProcess:
    """The master's record of one forked worker."""

    number: int  # the slot 1..N; a replacement keeps its predecessor's number
    pid: int
    channel: int  # read end of the worker's pipe
    started: float
    channel_open: bool = True  # False once the worker closed its end (it is exiting)
    ready: bool = False
    inbox: bytes = b""
    failure: str | None = None
    last_beat: float = 0.0  # when the worker's event loop last reported
    replaces: int | None = None  # pid of the worker this one takes over from once ready
    replaced_by: int | None = None  # pid of the worker being started to take over
    retiring: bool = False  # asked to stop (replaced or scaled down): not restarted
    hung: bool = False  # found silent past --timeout: its stack was dumped, it is being killed
    kill_at: float = 0.0  # when to SIGKILL the hung worker, once its stack dump is written


@dataclass
class Slot:
    """Crash bookkeeping for one worker number."""

    crashes: int = 0
    restart_at: float = 0.0


@dataclass
class Master:
    """The supervisor of the worker processes."""

    config: Config
    listeners: list[Listener]
    reload_config: Callable[[], Config] | None = None  # re-reads the configuration on HUP
    preloaded_app: object = None  # --preload: the app, imported here before any fork
    argv: list[str] | None = None  # the command line, for USR2's re-exec
    inherited: list[reexec.InheritedWorker] = field(default_factory=list)  # after a re-exec
    workers: dict[int, WorkerProcess] = field(default_factory=dict)  # by pid
    slots: dict[int, Slot] = field(default_factory=dict)
    pending_signals: list[int] = field(default_factory=list)
    booted: bool = False  # every worker of the first generation has reported ready
    stopping: bool = False
    graceful: bool = True
    stop_deadline: float = 0.0
    exit_code: int = EXIT_OK
    oom_kills: int | None = None  # the cgroup's oom_kill count when last looked at
    next_memory_check: float = 0.0
    notifier: Notifier = field(default_factory=Notifier)
    reloading: bool = False  # a HUP's replacements are still booting (systemd waits for READY)
    last_reload: str = ""  # when the last reload finished, for STATUS=

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
        log.info("duck-prefork %s (pid %d) listening on %s", __version__, os.getpid(),
                 describe_all(self.listeners))
        self.explain_reuse_port()
        self.oom_kills = oom_kill_count()
        try:
            for number in range(1, self.config.workers + 1):
                self.slots[number] = Slot()
            if self.inherited:
                self.take_over()
            else:
                run_hook("on-starting", self.config.on_starting, self.config)
                for number in self.slots:
                    self.spawn(number)
            while self.workers or not self.stopping:
                self.wait_for_events()
                self.dispatch_signals()
                self.reap_workers()
                self.check_deadlines()
                if not self.stopping:
                    self.check_health()
                    self.restart_missing_workers()
                    self.notifier.pet_watchdog(time.monotonic())
        finally:
            self.kill_all(signal.SIGKILL)
            for listener in self.listeners:
                listener.close(unlink=True)
            signal.set_wakeup_fd(-1)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
        log.info("stopped (exit code %d)", self.exit_code)
        return self.exit_code

    # --- events ----------------------------------------------------------------------------

    def _enqueue_signal(self, signum: int, frame: object) -> None:
        self.pending_signals.append(signum)

    def wait_for_events(self) -> None:
        timeout = 1.0
        now = time.monotonic()
        for deadline in self.deadlines():
            timeout = min(timeout, max(0.0, deadline - now))
        channels = {worker.channel: worker for worker in self.workers.values()
                    if worker.channel_open}
        try:
            readable, _, _ = select.select([self._wakeup_r, *channels], [], [], timeout)
        except InterruptedError:
            return
        for fd in readable:
            if fd == self._wakeup_r:
                self._drain_fd(fd)
            else:
                self.read_channel(channels[fd])

    def deadlines(self) -> list[float]:
        if self.stopping:
            return [self.stop_deadline]
        watchdog = self.notifier.watchdog_due
        if watchdog is not None:
            return [watchdog, *self._worker_deadlines()]
        return self._worker_deadlines()

    def _worker_deadlines(self) -> list[float]:
        return [slot.restart_at for number, slot in self.slots.items()
                if slot.restart_at and not self._slot_alive(number)] + \
            [worker.kill_at for worker in self.workers.values() if worker.kill_at]

    @staticmethod
    def _drain_fd(fd: int) -> tuple[bytes, bool]:
        """Read what is there without blocking; returns (data, end of file seen)."""
        chunks = []
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return b"".join(chunks), False
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)

    def read_channel(self, worker: WorkerProcess) -> None:
        data, eof = self._drain_fd(worker.channel)
        if eof:
            worker.channel_open = False  # stop selecting on it until the worker is reaped
        if worker.failure is not None:
            worker.failure += data.decode("utf-8", "replace")
            return
        messages, worker.inbox, worker.failure = channel.split_messages(worker.inbox + data)
        if messages:
            worker.last_beat = time.monotonic()
        for message in messages:
            if message == channel.READY:
                self.on_worker_ready(worker)
            elif message == channel.RECYCLE:
                log.info("worker %d (pid %d) served its --max-requests: replacing it",
                         worker.number, worker.pid)
                self.replace(worker)

    def dispatch_signals(self) -> None:
        while self.pending_signals:
            signum = self.pending_signals.pop(0)
            getattr(self, "handle_" + HANDLED_SIGNALS[signum])()

    # --- signal handlers -------------------------------------------------------------------

    def handle_term(self) -> None:
        if not self.stopping:
            log.info("TERM: graceful stop")
            self.stop(graceful=True)

    def handle_int(self) -> None:
        if not self.stopping:
            log.info("INT: graceful stop (INT again to stop at once)")
            self.stop(graceful=True)
        elif self.graceful:
            log.info("INT again: stopping at once")
            self.stop(graceful=False)

    def handle_quit(self) -> None:
        if not self.stopping or self.graceful:
            log.info("QUIT: stopping at once")
            self.stop(graceful=False)

    def handle_chld(self) -> None:
        pass  # reap_workers() runs after every wake-up

    def handle_hup(self) -> None:
        """Reload: a new worker for every slot, each old one retired once its new one is ready.
        A bad configuration or new workers that cannot boot leave the old ones serving."""
        if self.stopping:
            return
        if self.reload_config is not None:
            try:
                config = self.reload_config()
            except ConfigError as exc:
                log.error("HUP: the configuration is invalid, keeping the current one: %s", exc)
                # Type=notify-reload waits for RELOADING=1 then READY=1 after every HUP: a
                # reload that changes nothing must still answer, or systemctl reload hangs.
                self.notifier.reloading()
                self.notifier.ready(self.status_line())
                return
            run_hook("on-reload", config.on_reload, config)
            if config.bind != self.config.bind:
                log.warning("HUP: --bind changed; listeners change only with a restart")
            if config.reuse_port != self.config.reuse_port:
                log.warning("HUP: --reuse-port changed; listeners change only with a restart")
            self.config = config
        self.notifier.reloading()
        self.reloading = True
        while len(self.slots) > self.config.workers:
            self.remove_slot()
        current = [w for w in self.workers.values() if not w.retiring and w.replaces is None]
        log.info("HUP: reloading %d workers (each old one stops once its new one is ready)",
                 len(current))
        for worker in current:
            self.replace(worker)
        while len(self.slots) < self.config.workers and self.add_slot():
            pass

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
        for worker in [w for w in self.workers.values() if w.number == number]:
            self.retire(worker)
        self.close_slot_sockets(number)
        return number

    # --- --reuse-port: one socket per worker slot --------------------------------------------
    # A slot's sockets live as long as the slot: every worker of that number (a restart, a
    # reload's replacement, the workers adopted after USR2) accepts from the same queue, so a
    # connection queued while its worker is replaced is served by the next one. They are closed
    # when the slot goes (TTOU, HUP to fewer workers); the retiring worker first accepts what is
    # queued on them (Acceptor.stop), and the kernel resets connections that arrive after that,
    # unless net.ipv4.tcp_migrate_req=1 moves them to the other sockets of the group.

    def open_slot_sockets(self, number: int) -> bool:
        try:
            self.listeners += open_slot(self.listeners, number, self.config.backlog)
        except OSError as exc:
            log.error("%s; not starting worker %d", exc.strerror or exc, number)
            return False
        return True

    def close_slot_sockets(self, number: int) -> None:
        for listener in [listener for listener in self.listeners if listener.slot == number]:
            listener.close(unlink=False)
            self.listeners.remove(listener)

    def explain_reuse_port(self) -> None:
        """Say where the listeners differ from what --reuse-port asks for, and why."""
        grouped = any(listener.slot for listener in self.listeners)
        shared = [listener for listener in self.listeners if not listener.slot]
        if self.config.reuse_port:
            if any(listener.owned and listener.address.kind == "tcp" for listener in shared):
                log.warning("--reuse-port: the listeners inherited on re-exec are shared; "
                            "one socket per worker takes a restart")
            elif shared:
                log.info("--reuse-port applies to TCP addresses that duck-prefork binds: %s "
                         "stay shared by all workers",
                         ", ".join(listener.describe() for listener in shared))
        elif grouped:
            log.warning("--reuse-port is off but the listeners inherited on re-exec are one "
                        "per worker; sharing one socket takes a restart")

    def handle_usr2(self) -> None:
        """Upgrade in place: re-execute this master (same pid) with the same command line; the
        new image adopts the listeners and workers, then replaces the workers as for HUP."""
        if self.stopping or self.argv is None:
            return
        problem = reexec.check_new_image(self.argv)
        if problem:
            log.error("USR2: not re-executing, the new image would fail: %s", problem)
            return
        workers = [reexec.InheritedWorker(w.pid, w.number, w.channel, w.ready, w.retiring)
                   for w in self.workers.values()]
        log.info("USR2: re-executing the master (pid %d) with %d workers serving",
                 os.getpid(), len(workers))
        self.notifier.reloading()  # READY=1 comes from the new image once its workers serve
        try:
            reexec.exec_new_image(self.argv, self.listeners, workers)
        except OSError as exc:
            log.error("USR2: exec failed (%s); the current image keeps running", exc)

    def take_over(self) -> None:
        """After a re-exec: adopt the previous image's workers, then replace them."""
        now = time.monotonic()
        for inherited in self.inherited:
            self.workers[inherited.pid] = WorkerProcess(
                inherited.number, inherited.pid, inherited.channel, now, last_beat=now,
                ready=inherited.ready, retiring=inherited.retiring)
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
                self.replace(worker)
            else:
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

    def spawn(self, number: int, replaces: WorkerProcess | None = None) -> None:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                self._forget_master_state(read_end, number)
                listeners = [listener for listener in self.listeners if listener.serves(number)]
                worker = Worker(self.config, listeners, number, write_end, self.title_name)
                worker.preloaded_app = self.preloaded_app
                worker.run()
            finally:
                os._exit(1)
        os.close(write_end)
        os.set_blocking(read_end, False)
        now = time.monotonic()
        self.workers[pid] = WorkerProcess(number, pid, read_end, now, last_beat=now,
                                          replaces=replaces.pid if replaces else None)
        if replaces is not None:
            replaces.replaced_by = pid
        log.info("booting worker %d (pid %d)%s", number, pid,
                 f" to replace pid {replaces.pid}" if replaces else "")

    def replace(self, worker: WorkerProcess) -> None:
        """Start a successor for `worker`; `worker` stops once the successor is ready."""
        if worker.retiring or worker.replaced_by in self.workers:
            return  # already on its way out
        self.spawn(worker.number, replaces=worker)

    def retire(self, worker: WorkerProcess) -> None:
        """Stop `worker` gracefully for good: it drains and is not restarted."""
        if not worker.retiring:
            worker.retiring = True
            self._signal(worker.pid, signal.SIGTERM)

    @staticmethod
    def _signal(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass  # it is exiting; reap_workers() will see it

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
        if self.notifier.socket is not None:
            self.notifier.socket.close()  # only the master speaks to systemd

    def on_worker_ready(self, worker: WorkerProcess) -> None:
        worker.ready = True
        log.info("worker %d (pid %d) ready", worker.number, worker.pid)
        predecessor = self.workers.get(worker.replaces) if worker.replaces else None
        worker.replaces = None
        if predecessor is not None:
            self.retire(predecessor)
        if worker.number not in self.slots:
            self.retire(worker)  # scaled down (TTOU) while it booted
        self.report_state()
        if not self.booted and all(w.ready for w in self.workers.values()) \
                and len(self.workers) == len(self.slots):
            self.booted = True
            log.info("ready: %d workers serving", len(self.workers))
            self.notifier.ready(self.status_line())

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self.read_channel(worker)
            os.close(worker.channel)
            code = os.waitstatus_to_exitcode(status)
            self.on_worker_exit(worker, code)
            run_hook("worker-exit", self.config.worker_exit, self.config, worker.number,
                     worker.pid, code)

    def on_worker_exit(self, worker: WorkerProcess, code: int) -> None:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        oom_kills = oom_kill_count()
        if code == -signal.SIGKILL and oom_kills is not None and self.oom_kills is not None \
                and oom_kills > self.oom_kills:
            how += " (the kernel's OOM killer: out of memory)"
        self.oom_kills = oom_kills
        if self.stopping or (worker.retiring and code == 0):
            log.info("worker %d (pid %d) %s", worker.number, worker.pid, how)
            return
        if worker.replaces is not None:
            # A replacement (reload, recycle) that could not boot: its predecessor serves on.
            log.error("new worker %d (pid %d) %s before it was ready; pid %d keeps serving%s",
                      worker.number, worker.pid, how, worker.replaces,
                      f": {worker.failure}" if worker.failure else "")
            self.report_state()
            return
        if worker.retiring:
            log.warning("worker %d (pid %d) %s while stopping", worker.number, worker.pid, how)
            return
        if not worker.ready and not self.booted:
            # The first generation cannot boot: the app or its lifespan is broken. Retrying
            # would only crash-loop, so stop and say why.
            cause = worker.failure or f"worker {worker.number} {how} before it was ready"
            log.error("%s", cause)
            if self.config.error_logfile not in ("", "-"):
                print(cause, file=sys.stderr, flush=True)
            log.error("worker %d (pid %d) failed to boot (%s); stopping", worker.number,
                      worker.pid, how)
            self.exit_code = EXIT_BOOT_FAILED
            self.stop(graceful=False)
            return
        slot = self.slots.get(worker.number)
        if slot is None:
            return  # its number was scaled away (TTOU)
        lived = time.monotonic() - worker.started
        if lived < YOUNG_DEATH:
            delay = min(RESTART_DELAY_FIRST * 2 ** slot.crashes, RESTART_DELAY_MAX)
            slot.crashes += 1
            slot.restart_at = time.monotonic() + delay
            log.error("worker %d (pid %d) %s after %.1f s; restarting in %.1f s", worker.number,
                      worker.pid, how, lived, delay)
            if worker.failure:
                log.error("worker %d could not boot: %s", worker.number, worker.failure)
        else:
            slot.crashes = 0
            slot.restart_at = 0.0
            log.error("worker %d (pid %d) %s; restarting it", worker.number, worker.pid, how)

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
        serving = sum(1 for w in self.workers.values() if w.ready and not w.retiring)
        line = f"{serving}/{len(self.slots)} workers serving"
        return f"{line}; last reload {self.last_reload}" if self.last_reload else line

    def _slot_alive(self, number: int) -> bool:
        return any(worker.number == number and not worker.retiring
                   for worker in self.workers.values())

    def restart_missing_workers(self) -> None:
        now = time.monotonic()
        for number, slot in self.slots.items():
            if not self._slot_alive(number) and slot.restart_at <= now:
                slot.restart_at = 0.0
                self.spawn(number)

    # --- health ----------------------------------------------------------------------------

    def check_health(self) -> None:
        """Kill workers that hang at boot (--boot-timeout) or later (--timeout; a hung one
        first dumps its stack to the error log), replace those over --max-worker-memory."""
        now = time.monotonic()
        config = self.config
        check_memory = config.max_worker_memory and now >= self.next_memory_check
        if check_memory:
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL
        for worker in list(self.workers.values()):
            if worker.hung:
                if worker.kill_at and now >= worker.kill_at:
                    worker.kill_at = 0.0
                    self._signal(worker.pid, signal.SIGKILL)
            elif not worker.ready:
                if config.boot_timeout and now - worker.started > config.boot_timeout:
                    worker.hung = True
                    worker.failure = (f"worker {worker.number} (pid {worker.pid}) was not ready "
                                      f"{config.boot_timeout:g} s after its fork "
                                      f"(--boot-timeout): the app's import or lifespan startup "
                                      f"hangs")
                    log.error("%s; killing it", worker.failure)
                    self._signal(worker.pid, signal.SIGKILL)
            elif config.timeout and now - worker.last_beat > config.timeout:
                log.error("worker %d (pid %d) has been silent for %.1f s (--timeout %g): "
                          "dumping its stack, then killing it", worker.number, worker.pid,
                          now - worker.last_beat, config.timeout)
                self._signal(worker.pid, STACK_DUMP_SIGNAL)
                worker.hung = True
                worker.kill_at = now + STACK_DUMP_GRACE
            elif check_memory and not worker.retiring and worker.replaced_by not in self.workers:
                self.check_memory(worker)

    def check_memory(self, worker: WorkerProcess) -> None:
        try:
            process = psutil.Process(worker.pid)
            try:
                used = process.memory_full_info().uss
            except (psutil.AccessDenied, AttributeError):
                used = process.memory_info().rss
        except psutil.NoSuchProcess:
            return
        limit = self.config.max_worker_memory * 1024 * 1024
        if used > limit:
            log.warning("worker %d (pid %d) uses %.1f MiB, over --max-worker-memory %d: "
                        "replacing it", worker.number, worker.pid, used / 2**20,
                        self.config.max_worker_memory)
            self.replace(worker)

    # --- stopping --------------------------------------------------------------------------

    def stop(self, graceful: bool) -> None:
        if not self.stopping:
            self.notifier.stopping()
        self.stopping = True
        self.graceful = graceful
        # New connections are refused from now on (once the workers close their copies too).
        for listener in self.listeners:
            listener.close(unlink=False)
        if graceful:
            # Workers drain for up to graceful_timeout, then run lifespan shutdown.
            grace = self.config.graceful_timeout + LIFESPAN_SHUTDOWN_TIMEOUT + 1.0
            self.stop_deadline = time.monotonic() + grace
            self.kill_all(signal.SIGTERM)
        else:
            self.stop_deadline = time.monotonic()
            self.kill_all(signal.SIGKILL)

    def check_deadlines(self) -> None:
        if self.stopping and self.workers and time.monotonic() >= self.stop_deadline:
            if self.graceful:
                log.warning("graceful stop took too long: killing %d workers", len(self.workers))
                self.graceful = False
            self.kill_all(signal.SIGKILL)
            self.stop_deadline = time.monotonic() + 1.0

    def kill_all(self, signum: int) -> None:
        for pid in list(self.workers):
            self._signal(pid, signum)
        if signum == signal.SIGKILL:
            self._reap_blocking()

    def _reap_blocking(self) -> None:
        """After SIGKILL: collect every worker, so none is left a zombie."""
        for pid, worker in list(self.workers.items()):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            except OSError as exc:
                if exc.errno != errno.EINTR:
                    raise
            self.workers.pop(pid, None)
            os.close(worker.channel)
            if self.stopping:
                log.info("worker %d (pid %d) killed", worker.number, pid)


def oom_kill_count() -> int | None:
    """How many processes the kernel's OOM killer has killed in our cgroup (cgroup v2), or None
    where that cannot be read: compared before and after a SIGKILL, it says who sent it."""
    try:
        with open("/proc/self/cgroup") as file:
            path = next(line.split(":", 2)[2].strip() for line in file if line.startswith("0::"))
        with open(f"/sys/fs/cgroup{path}/memory.events") as file:
            for line in file:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, StopIteration, ValueError):
        pass
    return None


def run_master(config: Config, reload_config: Callable[[], Config] | None = None,
               argv: list[str] | None = None) -> int:
    """Everything before the supervision loop that can fail with a one-line error."""
    try:
        logs.setup_error_log(config.error_logfile, config.log_level)
    except OSError as exc:
        print(f"duck-prefork: error: --error-logfile: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if config.access_logfile and config.access_logfile != "-":
        try:
            open(config.access_logfile, "a").close()
        except OSError as exc:
            print(f"duck-prefork: error: --access-logfile: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    if config.chdir:
        try:
            os.chdir(config.chdir)
        except OSError as exc:
            print(f"duck-prefork: error: --chdir: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    # Like `python -m`, make modules in the working directory importable as APP.
    sys.path.insert(0, os.getcwd())
    if config.umask is not None:
        os.umask(config.umask)
    try:
        resolve_user(config.user, config.group)
    except (KeyError, ValueError, OverflowError):
        print(f"duck-prefork: error: --user/--group: no such user or group: "
              f"{config.user or ''} {config.group or ''}".rstrip(), file=sys.stderr)
        return EXIT_CONFIG
    preloaded_app = None
    if config.preload:
        try:
            preloaded_app = load_application(config)
        except BootFailure as exc:
            print(f"{exc}\nduck-prefork: --preload: the app could not be loaded; stopping",
                  file=sys.stderr)
            return EXIT_BOOT_FAILED
    if config.pid:
        try:
            write_pid_file(config.pid)
        except OSError as exc:
            print(f"duck-prefork: error: --pid: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_CONFIG
    # After USR2 this is the new image of the same master: adopt instead of binding.
    inherit = os.environ.pop(reexec.INHERIT_ENV, "")
    try:
        inherited: list[reexec.InheritedWorker] = []
        activated = from_systemd(os.environ)
        if inherit:
            listeners, inherited = reexec.adopt(inherit)
        elif activated:
            listeners = activated  # socket activation: systemd bound them, and keeps them
        else:
            try:
                listeners = bind_all(config.bind, config.backlog,
                                     slots=config.workers if config.reuse_port else 0)
            except OSError as exc:
                print(f"duck-prefork: error: --bind: {exc.strerror or exc}", file=sys.stderr)
                return EXIT_CONFIG
        return Master(config, listeners, reload_config=reload_config,
                      preloaded_app=preloaded_app, argv=argv, inherited=inherited).run()
    finally:
        if config.pid:
            remove_pid_file(config.pid)
