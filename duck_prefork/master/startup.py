"""Everything before the supervision loop that can fail with a one-line error: logs, the
working directory, the user, --preload, the pid file, the listeners (bound, inherited from
systemd, or adopted after USR2); then the loop.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from .. import logs
from ..config import Config, ConfigError
from ..metrics.server import MetricsBindError
from ..metrics.service import Metrics
from ..net.listeners import bind_all, from_systemd, mark_tls, parse_bind, tls_by_default
from ..tls.context import TlsError, tls_configured
from ..tls.context import load as load_certificates
from ..tls.keeper import CertificateKeeper, log_certificates
from ..worker.process import EXIT_BOOT_FAILED, BootFailure, load_application, resolve_user
from . import reload, upgrade
from .agent import AgentServer
from .pidfile import remove_pid_file, write_pid_file
from .supervisor import EXIT_CONFIG, Master


def run_master(config: Config, reload_config: Callable[[], Config] | None = None,
               argv: list[str] | None = None) -> int:
    """Everything before the supervision loop that can fail with a one-line error."""
    try:
        logs.setup_error_log(config.error_logfile, config.log_level)
    except OSError as exc:
        print(f"duck-prefork: error: --error-logfile: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if config.log_config:
        try:
            logs.load_log_config(config.log_config)
        except ValueError as exc:
            print(f"duck-prefork: error: --log-config: {config.log_config}: {exc}",
                  file=sys.stderr)
            return EXIT_CONFIG
    if config.reload:
        try:
            reload.check_available()
        except ConfigError as exc:
            print(f"duck-prefork: error: {exc}", file=sys.stderr)
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
    # The certificates are read and checked here, as root if started as root (--user applies to
    # the workers), before anything listens: a TLS listener is never served without them.
    try:
        certificates = load_certificates(config)
    except TlsError as exc:
        print(f"duck-prefork: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if certificates is not None:
        log_certificates(certificates)
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
    inherit = os.environ.pop(upgrade.INHERIT_ENV, "")
    try:
        inherited: list[upgrade.InheritedWorker] = []
        activated = from_systemd(os.environ)
        if inherit:
            listeners, inherited = upgrade.adopt(inherit)
        elif activated:
            listeners = activated  # socket activation: systemd bound them, and keeps them
            mark_tls(listeners, config.bind, tls_configured(config))
        else:
            binds = tls_by_default(config.bind) if tls_configured(config) else config.bind
            try:
                listeners = bind_all(binds, config.backlog,
                                     slots=config.workers if config.reuse_port else 0)
            except OSError as exc:
                print(f"duck-prefork: error: --bind: {exc.strerror or exc}", file=sys.stderr)
                return EXIT_CONFIG

        def refuse(message: str, *opened: AgentServer) -> int:
            """One line naming the problem; what was opened is closed again; exit 1."""
            print(f"duck-prefork: error: {message}", file=sys.stderr)
            for listener in listeners:
                listener.close(unlink=not inherit)
            for server in opened:
                server.close()
            return EXIT_CONFIG

        tls_listeners = any(listener.tls for listener in listeners)
        if tls_listeners and certificates is None:
            return refuse("the TLS listeners need a certificate: --certfile or --cert")
        agent = None
        if config.agent_bind:
            address = parse_bind(config.agent_bind)
            try:
                agent = AgentServer.bind(address.host, address.port)
            except OSError as exc:
                return refuse(f"--agent-bind {config.agent_bind}: {exc.strerror or exc}")
        keeper = CertificateKeeper(config, certificates, time.monotonic(), tls_listeners)
        # The metrics area exists before the first fork (every worker inherits it); its
        # socket is bound here, so a path that cannot be served stops the start.
        try:
            metrics = Metrics.open(config, upgrade.metrics_part(inherit))
        except MetricsBindError as exc:
            return refuse(str(exc), *([agent] if agent is not None else []))
        return Master(config, listeners, reload_config=reload_config,
                      preloaded_app=preloaded_app, argv=argv, inherited=inherited,
                      reexecuted=bool(inherit), certificates=keeper, agent=agent,
                      metrics=metrics).run()
    finally:
        if config.pid:
            remove_pid_file(config.pid)
