"""--tls-reload watch: have the certificate files changed, and have they stopped changing?

The master polls (its loop wakes at least once a second; no thread, no inotify): each file is
stat'ed through its symlinks (certbot's live/NAME/fullchain.pem points into archive/, and a
renewal re-points it), so a new target, a new inode, size or mtime is a change. A change is
acted on once the files have looked the same for SETTLE seconds, so a burst of writes (a
deploy copying four files) is one reload, and a file caught half-written is not loaded: and if
it were read anyway, the master's validation refuses it and keeps the running certificates.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

SETTLE = 2.0  # seconds the files must look unchanged before they are loaded

Signature = tuple[tuple[object, ...], ...]


def signature(paths: Sequence[str], stat: Callable[[str], os.stat_result] = os.stat,
              realpath: Callable[[str], str] = os.path.realpath) -> Signature:
    """What the files look like now: target, inode, size, mtime; or the error reading them."""
    seen: list[tuple[object, ...]] = []
    for path in paths:
        try:
            info = stat(path)
        except OSError as exc:
            seen.append((path, "error", exc.errno))
            continue
        seen.append((path, realpath(path), info.st_dev, info.st_ino, info.st_size,
                     info.st_mtime_ns, info.st_ctime_ns))
    return tuple(seen)


class FileWatch:
    """Polls `paths`; `poll(now)` is True once they changed and then stayed the same for
    SETTLE seconds. `accept()` takes what they look like now as the new normal (after a load,
    good or bad: a bad file is not retried until it changes again)."""

    def __init__(self, paths: Sequence[str], now: float,
                 look: Callable[[Sequence[str]], Signature] = signature) -> None:
        self.paths = list(paths)
        self.look = look
        self.known = look(self.paths)
        self.latest = self.known
        self.since = now  # when the files last looked different

    def poll(self, now: float) -> bool:
        current = self.look(self.paths)
        if current != self.latest:
            self.latest = current
            self.since = now
            return False
        return current != self.known and now - self.since >= SETTLE

    def accept(self, paths: Sequence[str] | None = None) -> None:
        if paths is not None:
            self.paths = list(paths)
        self.known = self.latest = self.look(self.paths)
