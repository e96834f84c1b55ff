"""USR2: the master re-executes itself in place, keeping its pid, its listeners and its workers.

Before exec, the listening sockets and each worker's channel are made inheritable and described
in one environment variable; the new image (same pid, so the workers are still its children and
systemd still tracks it) adopts them instead of binding, then replaces the workers as for HUP.

  DUCK_PREFORK_INHERIT="listeners=3:o,4:,5:o:1,6:o:2;workers=1234:1:7:r,1235:2:8:"
  (per listener fd:flags[:slot], o = bound by us, s = TLS, slot = the worker number a --reuse-port
  socket is for; per worker pid:number:channel fd:flags, r = ready, t = retiring)
  With --metrics-bind, ";metrics=AREA_FD:SOCKET_FD" follows: the shared-memory area the workers
  write their counts into, and the scrape socket (metrics/service.py takes them over).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace

from ..net.listeners import Listener, address_of
from .processes import Processes

INHERIT_ENV = "DUCK_PREFORK_INHERIT"
# The configuration USR2's check validated (TOML): if the command line, environment or file
# has become invalid between the check and the exec, the new image uses this instead of
# exiting (which would leave the site without a master).
CHECKED_CONFIG_ENV = "DUCK_PREFORK_CHECKED_CONFIG"


@dataclass(frozen=True)
class InheritedWorker:
    pid: int
    number: int
    channel: int
    ready: bool
    retiring: bool


def describe(listeners: Sequence[Listener], workers: Sequence[InheritedWorker],
             metrics: str = "") -> str:
    return ("listeners={};workers={}" + (f";metrics={metrics}" if metrics else "")).format(
        ",".join(f"{listener.socket.fileno()}:{'o' if listener.owned else ''}"
                 f"{'s' if listener.tls else ''}"
                 f"{f':{listener.slot}' if listener.slot else ''}" for listener in listeners),
        ",".join(f"{w.pid}:{w.number}:{w.channel}:{'r' if w.ready else ''}"
                 f"{'t' if w.retiring else ''}" for w in workers))


def parse(text: str) -> tuple[list[tuple[int, bool, int, bool]], list[InheritedWorker]]:
    """(fd, owned, slot, tls) per listener, and the workers."""
    parts = dict(part.split("=", 1) for part in text.split(";") if "=" in part)
    fds = []
    for item in parts.get("listeners", "").split(","):
        if item:
            fd, _, rest = item.partition(":")
            flags, _, slot = rest.partition(":")
            fds.append((int(fd), "o" in flags, int(slot or 0), "s" in flags))
    workers = []
    for item in parts.get("workers", "").split(","):
        if item:
            pid, number, channel, flags = item.split(":")
            workers.append(InheritedWorker(int(pid), int(number), int(channel), "r" in flags,
                                           "t" in flags))
    return fds, workers


def metrics_part(text: str) -> str:
    """The "AREA_FD:SOCKET_FD" of the metrics, or "" without them."""
    parts = dict(part.split("=", 1) for part in text.split(";") if "=" in part)
    return parts.get("metrics", "")


def new_image_argv(argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "duck_prefork", *argv]


# The new image's --check-config imports the app: as long as a worker's boot may take, and more
# is a hang, not a slow import.
CHECK_TIMEOUT = 60.0


class ImageCheck:
    """The new image tried with --check-config in a child process before USR2 execs it.

    The master only starts it and goes on supervising: it reaps the child with its workers,
    kills it at `deadline`, and reads its output from temporary files when it has exited
    (files, not pipes, so a chatty check never blocks on a full pipe the master is not
    reading). What the check printed on stdout is the effective configuration it validated,
    as TOML: the new image falls back to it if its own reading fails (CHECKED_CONFIG_ENV)."""

    def __init__(self, argv: Sequence[str], processes: Processes, now: float):
        self.stdout = tempfile.TemporaryFile()  # noqa: SIM115 - closed in result()
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in result()
        self.pid = processes.spawn([*new_image_argv(argv), "--check-config"],
                                   {**os.environ, INHERIT_ENV: "", CHECKED_CONFIG_ENV: ""},
                                   self.stdout.fileno(), self.stderr.fileno())
        self.deadline = now + CHECK_TIMEOUT
        self.timed_out = False
        self.checked_config = ""  # the TOML the check printed, once it passed

    def close(self) -> None:
        self.stdout.close()
        self.stderr.close()

    def result(self, code: int) -> str | None:
        """Why exec would fail, from the check's exit code and output; None if it would not."""
        self.stdout.seek(0)
        self.stderr.seek(0)
        config = self.stdout.read().decode("utf-8", "replace")
        errors = self.stderr.read().decode("utf-8", "replace").strip()
        self.close()
        if self.timed_out:
            return f"its --check-config took longer than {CHECK_TIMEOUT:g} s and was killed"
        if code != 0:
            return errors or config.strip() or f"the new image exited with code {code}"
        self.checked_config = config
        return None


def image_problem(argv: Sequence[str]) -> str | None:
    """What makes exec fail outright, found without running anything; None if nothing."""
    executable = new_image_argv(argv)[0]
    if not os.access(executable, os.X_OK):
        return f"{executable} is not executable"
    return None


def exec_new_image(argv: Sequence[str], listeners: Sequence[Listener],
                   workers: Sequence[InheritedWorker], processes: Processes,
                   signals: Collection[int], take_pending: Callable[[], Iterable[int]],
                   checked_config: str, metrics: tuple[str, list[int]] = ("", [])) -> None:
    """Replace this process's image; returns only if exec failed (the OSError is raised).
    `signals` stay blocked into the new image until it has its handlers, and those caught but
    not yet handled (`take_pending`) are left pending for it."""
    fds = [listener.socket.fileno() for listener in listeners] + [w.channel for w in workers] \
        + metrics[1]
    env = {**os.environ, INHERIT_ENV: describe(listeners, workers, metrics[0]),
           CHECKED_CONFIG_ENV: checked_config}
    processes.exec(new_image_argv(argv), env, fds, signals, take_pending)


def adopt(text: str) -> tuple[list[Listener], list[InheritedWorker]]:
    """In the new image: the inherited listeners (made close-on-exec again) and workers."""
    fds, workers = parse(text)
    listeners = []
    for fd, owned, slot, tls in fds:
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        sock.setblocking(False)
        listeners.append(Listener(sock, replace(address_of(sock), tls=tls), owned=owned,
                                  slot=slot))
    for worker in workers:
        os.set_inheritable(worker.channel, False)
        os.set_blocking(worker.channel, False)
    return listeners, workers
