"""Worker health, decided from the master's records: hung at boot (--boot-timeout), silent
(--timeout), over --max-worker-memory; and who killed a worker (the kernel's OOM killer?).

`verdict()` is a plain function of a worker's record, the configuration and the time, so the
rules are tested without processes; the supervisor applies what it decides.
"""

from __future__ import annotations

import enum
import signal

import psutil

from ..config import Config
from .lifecycle import WorkerProcess

# A hung worker is sent this to dump every thread's stack (faulthandler), then killed after
# STACK_DUMP_GRACE seconds.
STACK_DUMP_SIGNAL = signal.SIGUSR2
STACK_DUMP_GRACE = 1.0
# How often --max-worker-memory is checked (reading USS costs the master a few ms a worker).
MEMORY_CHECK_INTERVAL = 5.0


class Verdict(enum.Enum):
    FINE = "fine"
    KILL_NOW = "its SIGKILL is due"  # a hung worker's stack dump has had its grace
    NOT_BOOTED = "not ready by --boot-timeout"
    SILENT = "silent past --timeout"


def verdict(worker: WorkerProcess, config: Config, now: float) -> Verdict:
    """What to do about `worker` now (the memory check is separate: it costs a read of /proc)."""
    if worker.killed:
        return Verdict.FINE  # only its reaping is left
    if worker.kill_at:
        return Verdict.KILL_NOW if now >= worker.kill_at else Verdict.FINE
    if not worker.ever_ready:
        if config.boot_timeout and now - worker.started > config.boot_timeout:
            return Verdict.NOT_BOOTED
        return Verdict.FINE
    if config.timeout and now - worker.last_beat > config.timeout:
        return Verdict.SILENT
    return Verdict.FINE


def memory_used(pid: int) -> int | None:
    """The worker's unique memory (USS), else its RSS, in bytes; None if it is gone."""
    try:
        process = psutil.Process(pid)
        try:
            return int(process.memory_full_info().uss)
        except (psutil.AccessDenied, AttributeError):
            return int(process.memory_info().rss)
    except psutil.NoSuchProcess:
        return None


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
