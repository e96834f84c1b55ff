"""A fake of master.processes.Processes: the master's decisions without processes or time.

Forks hand out pids and channel numbers and run nothing; signals, execs and closes are
recorded; a test makes workers speak (`say`), exit (`exit`) and time pass (`advance`), then
runs one round of the master's loop with `step(master)`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence

from duck_prefork.config import build_config
from duck_prefork.master.supervisor import Master
from duck_prefork.worker import channel


class FakeProcesses:
    def __init__(self) -> None:
        self.clock = 1000.0
        self.next_pid = 100
        self.channels: dict[int, int] = {}  # pid -> channel fd
        self.alive: set[int] = set()
        self.signals: list[tuple[int, int]] = []  # (pid, signum), in order
        self.exits: list[tuple[int, int]] = []  # (pid, exit code) not reaped yet
        self.inbox: dict[int, bytes] = {}  # channel fd -> bytes not read yet
        self.closed: list[int] = []
        self.execs: list[tuple[list[str], Collection[int]]] = []  # (argv, signals blocked)
        self.spawned: list[list[str]] = []
        self.fork_error: OSError | None = None  # the next forks raise this
        self.exec_error: OSError = OSError(8, "Exec format error")  # exec "fails" by default
        self.left_pending: list[int] = []  # what the last exec left pending for the new image
        self.redelivered: list[int] = []
        self.exec_env: dict[str, str] = {}
        self.sent: dict[int, bytes] = {}  # channel fd -> what the master wrote to the worker
        self.full: set[int] = set()  # channel fds whose worker is not reading: sends fail

    # --- the Processes interface -----------------------------------------------------------

    def now(self) -> float:
        return self.clock

    def sleep(self, seconds: float) -> None:
        self.clock += seconds

    def fork(self, child: Callable[[int, int], object],
             signals: Collection[int]) -> tuple[int, int]:
        if self.fork_error is not None:
            raise self.fork_error
        pid = self._new_pid()
        self.channels[pid] = pid + 10000
        return pid, self.channels[pid]

    def exec(self, argv: Sequence[str], env: Mapping[str, str], pass_fds: Collection[int],
             signals: Collection[int], take_pending: Callable[[], Iterable[int]]) -> None:
        self.execs.append((list(argv), set(signals)))
        self.left_pending = list(take_pending())
        self.exec_env = dict(env)
        # A failed exec unblocks: the signals left pending reach the handlers again.
        self.redelivered = list(self.left_pending)
        raise self.exec_error

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], stdout: int,
              stderr: int) -> int:
        self.spawned.append(list(argv))
        return self._new_pid()

    def kill(self, pid: int, signum: int) -> None:
        self.signals.append((pid, signum))

    def reap(self) -> Iterator[tuple[int, int]]:
        while self.exits:
            pid, code = self.exits.pop(0)
            self.alive.discard(pid)
            yield pid, code

    def wait(self, pid: int) -> None:
        self.alive.discard(pid)

    def read(self, fd: int) -> tuple[bytes, bool]:
        return self.inbox.pop(fd, b""), False

    def send(self, fd: int, data: bytes) -> bool:
        if fd in self.full:
            return False
        self.sent[fd] = self.sent.get(fd, b"") + data
        return True

    def close(self, fd: int) -> None:
        self.closed.append(fd)

    # --- what a test does ------------------------------------------------------------------

    def _new_pid(self) -> int:
        self.next_pid += 1
        self.alive.add(self.next_pid)
        return self.next_pid

    def say(self, pid: int, message: bytes) -> None:
        fd = self.channels[pid]
        self.inbox[fd] = self.inbox.get(fd, b"") + message

    def exit(self, pid: int, code: int) -> None:
        self.exits.append((pid, code))

    def advance(self, seconds: float) -> None:
        self.clock += seconds

    def views(self, pid: int) -> list[tuple[int, bool]]:
        """Every view the master sent worker `pid`, in order."""
        lines = self.sent.get(self.channels[pid], b"").splitlines(keepends=True)
        return [view for line in lines
                if (view := channel.read_views(line)[0]) is not None]

    def signalled(self, signum: int) -> list[int]:
        return [pid for pid, sent in self.signals if sent == signum]


class SteppedMaster(Master):
    """The master with its wait replaced: a round reads whatever the workers have said."""

    def wait_for_events(self) -> None:
        for worker in list(self.workers.values()):
            if self.processes.inbox.get(worker.channel):
                self.read_channel(worker)


def make_master(*args: str, reload: Callable[[], object] | None = None,
                fork_error: OSError | None = None,
                **values: object) -> tuple[SteppedMaster, FakeProcesses]:
    """A started master over a FakeProcesses, with options given as keyword values."""
    processes = FakeProcesses()
    processes.fork_error = fork_error
    config = build_config(None, {"workers": 2, **values}, environ={})
    master = SteppedMaster(config, [], reload_config=reload, argv=list(args) or None,
                           processes=processes)
    master.start()
    return master, processes


def step(master: Master, rounds: int = 1) -> None:
    for _ in range(rounds):
        master.step()


def boot(master: SteppedMaster, processes: FakeProcesses) -> None:
    """Every worker not yet ready reports ready."""
    for worker in list(master.workers.values()):
        if not worker.ever_ready:
            processes.say(worker.pid, channel.READY)
    step(master)


def beat(master: SteppedMaster, processes: FakeProcesses) -> None:
    for worker in master.workers.values():
        processes.say(worker.pid, channel.HEARTBEAT)
