"""--reload, for development: a watcher process that sends the master HUP when a source file
changes, so a change is served by the same readiness-gated roll as HUP (a change that breaks
the app leaves the old workers serving, and the next change tries again).

The watcher is a process of its own (`python -m duck_prefork.master.reload`), started with
posix_spawn by the master and reaped by it: watchfiles watches with a thread (inotify through
Rust's notify), and the master never runs threads. The watcher dies with the master (the
kernel sends it TERM), and the master stops it when it stops or execs a new image (USR2).
"""

from __future__ import annotations

import ctypes
import fnmatch
import importlib.util
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ..config import Config, ConfigError
from .processes import Processes

_PR_SET_PDEATHSIG = 1
# Always watched; --reload-include adds to it.
DEFAULT_INCLUDE = ("*.py",)
# The package's parent directory: the watcher imports this module from there, wherever
# --chdir has taken the master.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def check_available() -> None:
    """Raises ConfigError unless watchfiles can be imported (it is an optional extra)."""
    if importlib.util.find_spec("watchfiles") is None:
        raise ConfigError("--reload needs watchfiles: pip install 'duck-prefork[reload]'")


def watcher_argv(config: Config, master_pid: int) -> list[str]:
    """The command line of the watcher for `config` (watched directories made absolute)."""
    spec = {
        "master": master_pid,
        "dirs": list(config.reload_dir) or [os.getcwd()],
        "include": [*DEFAULT_INCLUDE, *config.reload_include],
        "exclude": list(config.reload_exclude),
        "log_level": config.log_level,
    }
    return [sys.executable, "-m", "duck_prefork.master.reload", json.dumps(spec)]


class Watcher:
    """The master's handle on its watcher process."""

    def __init__(self, config: Config, processes: Processes, output: int):
        self.processes = processes
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT,
                                                          env.get("PYTHONPATH", "")]))
        self.pid = processes.spawn(watcher_argv(config, os.getpid()), env, output, output)

    def stop(self) -> None:
        """Kill the watcher and reap it (the master is stopping or exec'ing)."""
        self.processes.kill(self.pid, signal.SIGKILL)
        self.processes.wait(self.pid)


def matches(path: str, patterns: Sequence[str]) -> bool:
    name = os.path.basename(path)
    return any(fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(path, glob) for glob in patterns)


def watch(spec: dict[str, Any]) -> None:
    """The watcher's loop: HUP the master for every batch of changes to matching files."""
    import watchfiles

    from .. import logs

    logs.setup_error_log("-", spec["log_level"])
    logs.set_role("reload watcher")
    master = spec["master"]
    include, exclude = spec["include"], spec["exclude"]
    default = watchfiles.DefaultFilter()  # .git, __pycache__, .venv, editor swap files ...

    def wanted(change: watchfiles.Change, path: str) -> bool:
        return default(change, path) and matches(path, include) and not matches(path, exclude)

    watching = False
    for changes in watchfiles.watch(*spec["dirs"], watch_filter=wanted, rust_timeout=1000,
                                    yield_on_timeout=True, raise_interrupt=False):
        if os.getppid() != master:
            return  # the master has gone
        if not watching:  # said once the first wait has begun: the watches are in place
            logs.log.info("--reload: watching %s for %s", ", ".join(spec["dirs"]),
                          " ".join(include))
            watching = True
        if not changes:
            continue
        paths = sorted({os.path.relpath(path) for _, path in changes})
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        logs.log.info("--reload: %s changed; reloading the workers", shown)
        try:
            os.kill(master, signal.SIGHUP)
        except ProcessLookupError:
            return


def main(argv: Sequence[str]) -> None:
    spec = json.loads(argv[0])
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != spec["master"]:
        return
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the master to handle
    watch(spec)


if __name__ == "__main__":
    main(sys.argv[1:])
