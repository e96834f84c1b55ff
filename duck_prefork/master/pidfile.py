"""--pid FILE: the master's pid, written atomically, refused while another live process owns it."""

from __future__ import annotations

import errno
import os
import signal


def write_pid_file(path: str) -> None:
    """Write our pid atomically; refuse if the file names another live process."""
    try:
        with open(path) as file:
            other = int(file.read().strip() or 0)
    except (OSError, ValueError):
        other = 0
    if other and other != os.getpid():
        try:
            os.kill(other, 0)
        except ProcessLookupError:
            pass  # a leftover from a server that died
        except PermissionError:
            raise OSError(errno.EEXIST, f"{path} names running process {other}") from None
        else:
            raise OSError(errno.EEXIST, f"{path} names running process {other}")
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as file:
        file.write(f"{os.getpid()}\n")
    os.replace(temporary, path)


def remove_pid_file(path: str) -> None:
    try:
        with open(path) as file:
            if int(file.read().strip() or 0) != os.getpid():
                return  # not ours any more
        os.unlink(path)
    except (OSError, ValueError):
        pass


class PidFileError(Exception):
    """The pid file does not name a running master; str() is the one line for the operator."""


def master_pid(path: str) -> int:
    """The pid of the running duck-prefork master that `path` names; raises PidFileError."""
    try:
        with open(path) as file:
            text = file.read().strip()
    except FileNotFoundError:
        raise PidFileError(f"{path}: no such pid file: is the server running with --pid "
                           f"{path}?") from None
    except OSError as exc:
        raise PidFileError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if not text.isdigit() or int(text) <= 0:
        raise PidFileError(f"{path}: not a pid file (expected a process id, got {text[:40]!r})")
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise PidFileError(f"{path}: stale pid file: process {pid} is not running (the server "
                           "is stopped; remove the file)") from None
    except PermissionError:
        pass  # another user's process: the title check below or the kill says more
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            title = file.read()
    except OSError:
        title = b""
    # The master's process title (setproctitle; `python -m duck_prefork ...` for the moment
    # after a USR2 exec): a pid reused by another program since the server died must not be
    # signalled.
    if title and b"duck-prefork: master" not in title and b"duck_prefork" not in title:
        program = title.split(b"\0")[0][:60].decode("utf-8", "replace")
        raise PidFileError(f"{path}: stale pid file: process {pid} is not a duck-prefork master "
                           f"({program})")
    return pid


def signal_master(path: str, signum: int = signal.SIGTERM) -> int:
    """Send `signum` to the master `path` names; returns its pid. Raises PidFileError."""
    pid = master_pid(path)
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        raise PidFileError(f"{path}: stale pid file: process {pid} is not running") from None
    except PermissionError:
        raise PidFileError(f"{path}: not allowed to signal process {pid} (run as its "
                           "user)") from None
    return pid
