"""Everything before the supervision loop that can fail with a one-line error: logs, the
working directory, the user, --preload, the pid file, the listeners (bound, inherited from
systemd, or adopted after USR2); then the loop.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from .. import logs
from ..config import Config, ConfigError
from ..net.listeners import bind_all, from_systemd
from ..worker.process import EXIT_BOOT_FAILED, BootFailure, load_application, resolve_user
from . import reload, upgrade
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
        else:
            try:
                listeners = bind_all(config.bind, config.backlog,
                                     slots=config.workers if config.reuse_port else 0)
            except OSError as exc:
                print(f"duck-prefork: error: --bind: {exc.strerror or exc}", file=sys.stderr)
                return EXIT_CONFIG
        return Master(config, listeners, reload_config=reload_config,
                      preloaded_app=preloaded_app, argv=argv, inherited=inherited,
                      reexecuted=bool(inherit)).run()
    finally:
        if config.pid:
            remove_pid_file(config.pid)
