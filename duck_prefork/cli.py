"""Command line parsing only: argv -> Config, then hand over to the master."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__, build
from .config import (
    OPTIONS,
    OPTIONS_BY_NAME,
    Config,
    ConfigError,
    Option,
    build_config,
    from_toml_text,
    parse_value,
)
from .tls.context import TlsError

EXIT_USAGE = 1

# Habit flags: uvicorn's and gunicorn's names for options that mean the same here. Each is
# another name for the option it maps to (same value, same parsing); the TOML file and the
# environment know only our own names.
ALIASES: dict[str, str] = {
    "--timeout-keep-alive": "keep_alive",  # uvicorn
    "--timeout-graceful-shutdown": "graceful_timeout",  # uvicorn
    "--limit-max-requests": "max_requests",  # uvicorn
    "--header": "response_header",  # uvicorn: --header NAME:VALUE
    "--log-file": "error_logfile",  # gunicorn
    "-p": "pid",  # gunicorn
    "-n": "name",  # gunicorn
    "-t": "timeout",  # gunicorn
    "--ssl-certfile": "certfile",  # uvicorn (gunicorn's --certfile is ours)
    "--ssl-keyfile": "keyfile",  # uvicorn (gunicorn's --keyfile is ours)
    "--ssl-ca-certs": "ca_certs",  # uvicorn (gunicorn's --ca-certs is ours)
    "--ssl-ciphers": "ciphers",  # uvicorn (gunicorn's --ciphers is ours)
    # uvicorn's --ssl-keyfile-password takes the password itself, ours a file: refused below.
}

# uvicorn's ways of giving an address: each adds one address to the --bind list.
BIND_ALIASES = {
    "--uds": ("PATH", "listen on the unix socket PATH (uvicorn's --uds): same as --bind unix:PATH"),
    "--fd": ("N", "serve the inherited socket N (uvicorn's --fd): same as --bind fd://N"),
    "--host": ("HOST", "uvicorn's --host: with --port, one more --bind HOST:PORT (default host "
                       "127.0.0.1)"),
    "--port": ("PORT", "uvicorn's --port: with --host, one more --bind HOST:PORT (default port "
                       "8000)"),
}

# Habit flags with no equivalent: refused with what to do instead. (flags, takes a value, why)
REFUSED: tuple[tuple[tuple[str, ...], bool, str], ...] = (
    (("-k", "--worker-class"), True,
     "every worker runs the ASGI app on a uvloop event loop; there is no other worker class: drop"
     " the option"),
    (("--threads",), True,
     "a worker is one event loop, not a thread pool: use --workers for more processes"),
    (("--worker-connections",), True,
     "use --limit-concurrency N (requests in progress per worker, then 503)"),
    (("--loop",), True,
     "workers always run uvloop: drop the option (--loop uvloop or auto is accepted)"),
    (("-D", "--daemon"), False,
     "run it in the foreground under systemd (see systemd/) or another supervisor"),
    (("--ssl-keyfile-password",), True,
     "put the password in a file and give --keyfile-password-file FILE (not on the command "
     "line, where ps shows it)"),
    (("--ssl-cert-reqs", "--cert-reqs"), True,
     "use --client-cert none|optional|required (with --ca-certs)"),
    (("--ssl-version",), True, "use --tls-min-version 1.2|1.3"),
)
_SAME_LOOP = ("auto", "uvloop")  # --loop values that ask for what we do anyway


class _Parser(argparse.ArgumentParser):
    # argparse exits 2 with the whole usage text; our contract is one line and exit code 1.
    def error(self, message: str) -> NoReturn:
        unknown = message.partition("unrecognized arguments: ")[2].split()
        flag = next((word.partition("=")[0] for word in unknown if word.startswith("-")), "")
        if flag:
            known = [name for action in self._actions for name in action.option_strings]
            close = [name for name in known if name.startswith(flag) and len(flag) > 2] \
                or difflib.get_close_matches(flag, known, 1, 0.6)
            # A hint only: --grace is not taken for --graceful-timeout (no prefix matching).
            hint = f"; did you mean {' or '.join(close[:3])}?" if close else ""
            message = f"unrecognized option {flag}{hint} (see --help)"
        self.exit(EXIT_USAGE, f"duck-prefork: error: {message}\n")


def _describe_default(option: Option) -> str:
    if option.flag or option.name == "access_logfile":
        return "off"
    if option.name == "workers":
        return f"{option.default_value()}, the CPUs available"
    default = option.default_value()
    if isinstance(default, list):
        return " ".join(default) or "none"
    if default == "" or default is None:
        return "none"
    return str(default)


class _Version(argparse.Action):
    """--version: one line, unwrapped (argparse's own action wraps it at the terminal width)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"duck-prefork {__version__} ({build.DESCRIPTION})")
        parser.exit()


class _Refuse(argparse.Action):
    """A habit flag that has no equivalent here: one line saying what to use instead."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        if self.dest == "loop" and isinstance(values, str) and values.lower() in _SAME_LOOP:
            return  # --loop uvloop: what every worker runs anyway
        given = f"{option_string} {values}" if isinstance(values, str) else option_string
        parser.error(f"{given}: {self.help}")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="duck-prefork",
        # No prefix matching: --grace must not quietly mean --graceful-timeout.
        allow_abbrev=False,
        description="Serve an ASGI application with a prefork master and uvloop workers. "
        "Every option can also be set as DUCK_PREFORK_<OPTION> in the environment "
        "(e.g. DUCK_PREFORK_WORKERS=8); the command line wins.",
        epilog="Subcommand: duck-prefork drain --pid FILE (TERM to that master). "
        "Signals to the master: TERM graceful stop after --drain-delay (second TERM: no "
        "delay), INT graceful stop (second INT: at once), "
        "QUIT immediate stop, HUP reload (new workers, each old one stops once its "
        "replacement is ready), TTIN/TTOU one worker more/fewer, USR1 reopen log files, "
        "USR2 upgrade in place (same pid). "
        "`duck-prefork status [--json] [--watch]` shows a running server's workers (see "
        "--metrics-bind). "
        "Exit codes: 0 clean stop, 1 bad option, 3 the app could not boot.",
    )
    parser.add_argument("app", nargs="?", metavar="APP",
                        help="the ASGI app as module.path:attribute (default: a built-in demo app)")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="show the version and which build runs (compiled or pure Python)")
    for option in OPTIONS:
        flags = [option.short, option.long] if option.short else [option.long]
        help_text = f"{option.help} (default: {_describe_default(option)}; env {option.env})"
        if option.flag:
            parser.add_argument(*flags, dest=option.name, action="store_const", const="true",
                                default=None, help=help_text)
        else:
            parser.add_argument(*flags, dest=option.name, metavar=option.metavar,
                                action="append" if option.repeatable else "store",
                                default=None, help=help_text)
    habits = parser.add_argument_group(
        "uvicorn and gunicorn habits", "other names for the options above (command line only)")
    for flag, name in ALIASES.items():
        option = OPTIONS_BY_NAME[name]
        habits.add_argument(flag, dest=name, metavar=option.metavar, default=None,
                            action="append" if option.repeatable else "store",
                            help=f"same as {option.long}")
    habits.add_argument("--proxy-headers", dest="no_proxy_headers", action="store_const",
                        const="false", default=None,
                        help="uvicorn's --proxy-headers: trusted proxies' headers are read by "
                             "default (see --forwarded-allow-ips); undoes --no-proxy-headers")
    habits.add_argument("--access-log", dest="access_logfile", action="store_const", const="-",
                        default=None, help="uvicorn's --access-log: same as --access-logfile -")
    habits.add_argument("--no-access-log", dest="access_logfile", action="store_const", const="",
                        default=None, help="uvicorn's --no-access-log: no access log (the "
                                           "default here)")
    for flag, (metavar, help_text) in BIND_ALIASES.items():
        habits.add_argument(flag, dest="alias_" + flag[2:], metavar=metavar, default=None,
                            help=help_text)
    for refused, takes_value, why in REFUSED:
        habits.add_argument(*refused, dest=refused[-1].lstrip("-").replace("-", "_"),
                            action=_Refuse, nargs=None if takes_value else 0,
                            help=f"not supported: {why}", default=argparse.SUPPRESS,
                            metavar=None if not takes_value else "X")
    return parser


def alias_binds(namespace: argparse.Namespace) -> list[tuple[str, str]]:
    """The addresses given with uvicorn's --host/--port, --uds and --fd: (address, flag)."""
    binds = []
    host, port = namespace.alias_host, namespace.alias_port
    if host is not None or port is not None:
        host = host or "127.0.0.1"
        port = port or "8000"
        address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else \
            f"{host}:{port}"
        binds.append((address, "--host/--port"))
    if namespace.alias_uds is not None:
        binds.append(("unix:" + namespace.alias_uds, "--uds"))
    if namespace.alias_fd is not None:
        binds.append(("fd://" + namespace.alias_fd, "--fd"))
    return binds


def parse_args(argv: Sequence[str], environ: dict[str, str] | None = None) -> Config:
    """Parse argv (without the program name) into a Config; raises ConfigError."""
    namespace = make_parser().parse_args(list(argv))
    cli_values: dict[str, Any] = {}
    binds = alias_binds(namespace)
    if binds:
        bind = OPTIONS_BY_NAME["bind"]
        cli_values["bind"] = [parse_value(bind, item, bind.long) for item in namespace.bind or []]
        cli_values["bind"] += [parse_value(bind, address, flag) for address, flag in binds]
    for option in OPTIONS:
        if option.name in cli_values:
            continue
        raw = getattr(namespace, option.name)
        if raw is None:
            continue
        if option.repeatable:
            cli_values[option.name] = [parse_value(option, item, option.long) for item in raw]
        else:
            cli_values[option.name] = parse_value(option, raw, option.long)
    return build_config(namespace.app, cli_values, os.environ if environ is None else environ)


def describe(config: Config) -> str:
    """The effective configuration, as TOML a --config file would accept."""
    lines = [f"app = {json.dumps(config.app)}" if config.app else "# app: the built-in demo"]
    for option in OPTIONS:
        if option.name in ("config", "check_config"):
            continue
        value = getattr(config, option.name)
        key = option.name.replace("_", "-")
        if value is None:
            lines.append(f"# {key}: not set")
        elif option.name == "umask":
            lines.append(f'{key} = "{value:03o}"')
        else:
            lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars are TOML
    return "\n".join(lines)


def describe_certificates(config: Config) -> str:
    """--check-config: the certificates, read and checked as the master would (USR2's check
    refuses a new image whose certificates are broken), as TOML comments: subject, SANs,
    serial, expiry. Raises TlsError."""
    import time

    from .tls.context import EXPIRY_WARNING_DAYS, load

    certificates = load(config)
    if certificates is None:
        return ""
    now = time.time()
    lines = [f"# TLS certificate {info.describe(now)}" +
             (" -- renew it" if info.days_left(now) < EXPIRY_WARNING_DAYS else "")
             for info in certificates.infos]
    lines += [f"# warning: {warning}" for warning in certificates.warnings]
    return "\n" + "\n".join(lines)


def check_app(config: Config) -> int:
    """--check-config also imports APP, as a worker would: USR2 runs the new image with
    --check-config before exec, and an app that no longer imports must stop the upgrade
    there, while the old master and workers still serve (with --preload the new master
    itself would exit)."""
    from .worker.process import EXIT_BOOT_FAILED, BootFailure, load_application

    try:
        if config.chdir:
            os.chdir(config.chdir)
    except OSError as exc:
        print(f"duck-prefork: error: --chdir: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.path.insert(0, os.getcwd())
    try:
        load_application(config)
    except BootFailure as exc:
        print(f"{exc}\nduck-prefork: --check-config: the app could not be loaded",
              file=sys.stderr)
        return EXIT_BOOT_FAILED
    return 0


def checked_config_after_usr2(error: ConfigError) -> Config | None:
    """In the image USR2 has just exec'd, whose configuration no longer reads (it changed
    between the check and the exec): the configuration the check validated, so that the
    master and its workers carry on instead of exiting. None anywhere else."""
    from .master.upgrade import CHECKED_CONFIG_ENV, INHERIT_ENV

    checked = os.environ.pop(CHECKED_CONFIG_ENV, "")
    if not checked or not os.environ.get(INHERIT_ENV):
        return None
    try:
        config = from_toml_text(checked, "the configuration USR2's check validated")
    except ConfigError:
        return None
    print(f"duck-prefork: error: {error}\nduck-prefork: the configuration became invalid "
          "after USR2's check; serving the one the check validated (HUP once it is fixed)",
          file=sys.stderr, flush=True)
    return config


def drain_command(argv: Sequence[str]) -> int:
    """`duck-prefork drain --pid FILE`: TERM to the master FILE names (its lame duck starts;
    run it again to skip the rest of --drain-delay)."""
    from .master.pidfile import PidFileError, signal_master

    parser = _Parser(prog="duck-prefork drain", allow_abbrev=False,
                     description="Start the lame-duck drain of a running server: send TERM to "
                                 "the master named by its pid file. Readiness turns 503 and "
                                 "every response carries Connection: close at once; the "
                                 "listeners close after --drain-delay, then in-flight work "
                                 "finishes within --graceful-timeout. Run it again to skip the "
                                 "rest of the delay.")
    parser.add_argument("--pid", "-p", dest="pid", metavar="FILE", required=True,
                        help="the server's --pid file")
    namespace = parser.parse_args(list(argv))
    try:
        pid = signal_master(namespace.pid)
    except PidFileError as exc:
        print(f"duck-prefork drain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"duck-prefork drain: sent TERM to the master (pid {pid})")
    return 0




def status_main(argv: Sequence[str]) -> int:
    """`duck-prefork status [--json] [--watch] [OPTIONS]`: ask the running master (at
    --metrics-bind, read from the same options, environment and --config as the server's)."""
    from .metrics.status import run_status

    parser = _Parser(prog="duck-prefork status", allow_abbrev=False,
                     description="Show the running server's workers and totals, as its master "
                     "serves them on --metrics-bind. Give the same --config (or "
                     "--metrics-bind and --metrics-token) as the server; other server options "
                     "are accepted and ignored.")
    parser.add_argument("--json", action="store_true", help="print the /status JSON as it is")
    parser.add_argument("--watch", action="store_true",
                        help="refresh in place every --interval seconds, until Ctrl-C")
    parser.add_argument("--interval", type=float, default=2.0, metavar="S",
                        help="seconds between refreshes with --watch (default: 2)")
    namespace, rest = parser.parse_known_args(list(argv))
    try:
        config = parse_args(rest)
    except ConfigError as exc:
        print(f"duck-prefork: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_status(config, namespace.json, namespace.watch, max(0.1, namespace.interval))


# Subcommands: a first word that cannot be an APP (an APP is module:attribute).
SUBCOMMANDS = {"drain": drain_command, "status": status_main}


def main(argv: Sequence[str] | None = None) -> NoReturn:
    from .master.startup import run_master
    from .master.upgrade import CHECKED_CONFIG_ENV

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        sys.exit(SUBCOMMANDS[argv[0]](argv[1:]))
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        fallback = checked_config_after_usr2(exc)
        if fallback is None:
            print(f"duck-prefork: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        config = fallback
    os.environ.pop(CHECKED_CONFIG_ENV, None)
    if config.check_config:
        try:
            certificates = describe_certificates(config)
        except TlsError as exc:
            print(f"duck-prefork: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        print(describe(config) + certificates, flush=True)
        # From here on stdout is the app's, and goes to stderr: stdout is exactly the
        # configuration, which USR2's check hands to the new image.
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        sys.exit(check_app(config))
    sys.exit(run_master(config, reload_config=lambda: parse_args(argv), argv=list(argv)))
