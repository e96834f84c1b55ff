"""The operating-system calls the master's decisions go through: fork, exec, spawn, signal,
reap, read a channel, the clock.

The master holds one `Processes` and calls nothing else for these, so its decisions (what to
spawn, kill, retire, and when) run unchanged against a fake in the unit tests
(tests/unit/fake_processes.py): a fork that fails, a worker that dies during a reload, a signal
that arrives while exec fails, each without a process or a real second passing.

Signal masks live here because they belong to the system calls they protect. The master's
signals are blocked across fork, so that one meant for a just-forked child is not run by the
master's handler inside that child: the child resets its handlers, then unblocks, and the
signal reaches it with the worker's dispositions. They are blocked across execve too: a
blocked mask and pending signals survive exec, so a HUP sent while the new image imports its
app waits until that image has installed its handlers (Master.run unblocks them), instead of
killing the master with its default action.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence


class Processes:
    """The real system calls."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def fork(self, child: Callable[[int, int], object],
             signals: Collection[int]) -> tuple[int, int]:
        """Fork a child with a channel (a unix socket pair, both ways: worker/channel.py) to the
        parent. The child runs `child(parent's end, child's end)` with `signals` blocked (it
        must unblock them once its own handlers are in place) and exits with code 1 if that
        returns or raises. Returns (pid, parent's end) in the parent; raises OSError if the
        socket pair or the fork fails, with no descriptor left open."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        read_end, write_end = parent_end.detach(), child_end.detach()  # close-on-exec both
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(read_end)
            os.close(write_end)
            raise
        if pid == 0:
            try:
                child(read_end, write_end)
            finally:
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(write_end)
        os.set_blocking(read_end, False)
        return pid, read_end

    def exec(self, argv: Sequence[str], env: Mapping[str, str], pass_fds: Collection[int],
             signals: Collection[int], take_pending: Callable[[], Iterable[int]]) -> None:
        """Replace this process's image, keeping the descriptors `pass_fds` and with `signals`
        blocked; returns only if exec failed (descriptors and mask restored, OSError raised).
        What `take_pending()` returns once the signals are blocked (signals already caught by
        the handlers but not acted on) is raised again, to stay pending across the exec."""
        for fd in pass_fds:
            os.set_inheritable(fd, True)
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        for signum in set(take_pending()):
            os.kill(os.getpid(), signum)  # blocked: pending until the new image unblocks it
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(argv[0], list(argv), dict(env))
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)  # the handlers get them again
            for fd in pass_fds:
                os.set_inheritable(fd, False)
            raise

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], stdout: int,
              stderr: int) -> int:
        """Start `argv` with its stdout and stderr on these descriptors, default signal
        dispositions and nothing blocked; returns its pid (reaped by reap())."""
        return os.posix_spawn(argv[0], list(argv), dict(env),
                              file_actions=[(os.POSIX_SPAWN_DUP2, stdout, 1),
                                            (os.POSIX_SPAWN_DUP2, stderr, 2)],
                              setsigmask=(), setsigdef=tuple(signal.valid_signals()
                                                             - {signal.SIGKILL,
                                                                signal.SIGSTOP}))

    def kill(self, pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass  # it is exiting; reap() will see it

    def reap(self) -> Iterator[tuple[int, int]]:
        """(pid, exit code) for every child that has exited, without blocking; the code is
        negative for a signal, as in subprocess."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            yield pid, os.waitstatus_to_exitcode(status)

    def wait(self, pid: int) -> None:
        """Block until `pid` has exited and reap it (after SIGKILL: it will, at once)."""
        while True:
            try:
                os.waitpid(pid, 0)
                return
            except ChildProcessError:
                return
            except OSError as exc:
                if exc.errno != errno.EINTR:
                    raise

    def read(self, fd: int) -> tuple[bytes, bool]:
        """What a non-blocking descriptor holds now; returns (data, end of file seen)."""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return b"".join(chunks), False
            except ConnectionResetError:
                # A worker that exits with the master's view unread resets its channel; what
                # it wrote before is read first (the kernel reports the reset after the data).
                return b"".join(chunks), True
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)

    def send(self, fd: int, data: bytes) -> bool:
        """Write `data` to a worker's channel without blocking; False if it did not all fit
        now (the worker is not reading) or the worker is gone."""
        try:
            return os.write(fd, data) == len(data)
        except OSError:  # BlockingIOError (full), BrokenPipeError (exited)
            return False

    def close(self, fd: int) -> None:
        os.close(fd)


def signal_name(signum: int) -> str:
    """SIGTERM, SIGRTMIN+6, or "signal 99": the enum knows neither realtime signals nor
    numbers a newer kernel may add, and a name must never fail."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        pass
    if signal.SIGRTMIN <= signum <= signal.SIGRTMAX:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
    return f"signal {signum}"
