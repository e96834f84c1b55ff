"""The master's certificates over its life: loaded at start, reloaded by HUP or by the file
watch, checked for expiry once a day. The master asks three questions of it (reload, poll,
check_expiry) and forks its workers with `current`; everything else is here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config import Config
from ..logs import log
from .context import Certificates, TlsError, load
from .watch import FileWatch

EXPIRY_CHECK_INTERVAL = 86400.0  # the expiry warning: once a day

Loader = Callable[[Config, Certificates | None], Certificates | None]


def log_certificates(certificates: Certificates, now: float | None = None) -> None:
    """One line per certificate (subject, SANs, serial, expiry), a warning for each that
    expires within EXPIRY_WARNING_DAYS, and the configuration's warnings."""
    now = time.time() if now is None else now
    for info in certificates.infos:
        log.info("TLS certificate %s", info.describe(now))
    for info in certificates.expiring(now):
        log.warning("TLS certificate %s expires in %.0f days: renew it", info.path,
                    info.days_left(now))
    for warning in certificates.warnings:
        log.warning("TLS: %s", warning)


class CertificateKeeper:
    """Holds the running certificates; replaces them only with ones that loaded and checked."""

    def __init__(self, config: Config, current: Certificates | None, now: float,
                 tls_listeners: bool = True, loader: Loader = load,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.current = current
        self.tls_listeners = tls_listeners  # a reload may not leave them without certificates
        self.loader = loader
        self.wall_clock = wall_clock
        self.watch: FileWatch | None = None
        self.next_expiry_check = now + EXPIRY_CHECK_INTERVAL
        self._watch(now)

    def _watch(self, now: float) -> None:
        if self.config.tls_reload == "watch" and self.current is not None:
            if self.watch is None:
                self.watch = FileWatch(self.current.files, now)
            else:
                self.watch.accept(self.current.files)
        else:
            self.watch = None

    def reload(self, config: Config, now: float) -> bool:
        """HUP: the certificates `config` names; True if they differ from the running ones
        (then the workers must be replaced). Raises TlsError, keeping the running ones."""
        certificates = self.loader(config, self.current)
        if certificates is None and self.tls_listeners:
            raise TlsError("the TLS listeners need a certificate: --certfile or --cert")
        changed = certificates is not self.current
        self.config = config
        self.current = certificates
        if certificates is not None:  # at every reload, changed or not
            log_certificates(certificates, self.wall_clock())
        self._watch(now)
        return changed

    def poll(self, now: float) -> bool:
        """--tls-reload watch, from the master's loop: True when the files changed, settled,
        and loaded (the workers must be replaced); a failed load is logged once and the
        running certificates are kept."""
        watch = self.watch
        if watch is None or not watch.poll(now):
            return False
        watch.accept()
        try:
            certificates = self.loader(self.config, self.current)
        except TlsError as exc:
            log.error("TLS: the certificate files changed but cannot be used, keeping the "
                      "running certificates: %s", exc)
            return False
        if certificates is self.current:
            return False  # touched, same bytes
        self.current = certificates
        if certificates is not None:
            log_certificates(certificates, self.wall_clock())
            watch.accept(certificates.files)
        return True

    def check_expiry(self, now: float) -> None:
        """Once a day: warn about certificates that expire within EXPIRY_WARNING_DAYS."""
        if now < self.next_expiry_check or self.current is None:
            return
        self.next_expiry_check = now + EXPIRY_CHECK_INTERVAL
        wall = self.wall_clock()
        for info in self.current.expiring(wall):
            log.warning("TLS certificate %s expires in %.0f days: renew it", info.path,
                        info.days_left(wall))


__all__ = ["CertificateKeeper", "TlsError", "log_certificates"]
