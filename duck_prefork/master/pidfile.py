"""--pid FILE: the master's pid, written atomically, refused while another live process owns it."""

from __future__ import annotations

import errno
import os


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
