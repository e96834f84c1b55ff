"""Every option once: its name, how its value is parsed, its default, its environment variable.

The command line (cli.py), the environment and the TOML file all read from the OPTIONS table,
so a new option is one row here. Precedence: command line > `DUCK_PREFORK_<NAME>` environment
> `--config` file > default.
"""

from __future__ import annotations

import difflib
import os
import string
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

ENV_PREFIX = "DUCK_PREFORK_"


class ConfigError(Exception):
    """A bad option value; str() is the one line shown to the user."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be an integer >= 0")
    return value


def ip_list(text: str) -> str:
    """A comma list of IP addresses or networks, or *; kept as text, checked here."""
    from .asgi.forwarded import parse_trusted

    parse_trusted(text)
    return text


def octal(text: str) -> int:
    value = int(text, 8)
    if not 0 <= value <= 0o777:
        raise ValueError("must be an octal mask like 027")
    return value


def directory(text: str) -> str:
    # Absolute, so that the image re-executed by USR2 (already in DIR) lands in DIR again.
    return os.path.abspath(text) if text else ""


def file_path(text: str) -> str:
    # Absolute, as for --chdir: the files are read again by HUP and by USR2's new image.
    return os.path.abspath(text) if text else ""


def hook_spec(text: str) -> str:
    if text and (":" not in text or text.startswith(":") or text.endswith(":")):
        raise ValueError("expected module:function")
    return text


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):  # also rejects nan
        raise ValueError("must be a number of seconds >= 0")
    return value


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    parse.choices = choices  # type: ignore[attr-defined]
    return parse


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def text(value: str) -> str:
    return value


def bind_address(value: str) -> str:
    """An address to listen on, in its canonical form: gunicorn's short forms are accepted
    (`:8000` is every IPv4 interface, `HOST` alone is port 8000)."""
    # Imported here: listeners.py is the one place that knows address syntax.
    from .net.listeners import parse_bind

    value = value.strip()
    if value.startswith(":") and value[1:].isdigit():
        value = "0.0.0.0" + value
    elif value and not value.startswith(("unix:", "fd://", "[")) and ":" not in value:
        value += ":8000"
    parse_bind(value)
    return value


def metrics_address(value: str) -> str:
    """--metrics-bind: unix:PATH or HOST:PORT (no TLS, no fd://)."""
    from .net.listeners import parse_bind

    value = value.strip()
    if value and parse_bind(value).kind not in ("unix", "tcp") or value.startswith(
            ("https://", "https+unix:")):
        raise ValueError("expected unix:PATH or HOST:PORT")
    return value


def access_log_format(value: str) -> str:
    """A gunicorn-style access log format (%(h)s %(t)s ...), checked against every atom."""
    from .access_log import check_access_format

    if value:  # empty: the default format
        check_access_format(value)
    return value


def log_config_file(value: str) -> str:
    """A logging configuration file (.json, .toml, .yaml dictConfig; else an INI fileConfig):
    checked to exist here, applied by logs.apply_log_config."""
    if value and not os.path.isfile(value):
        raise ValueError("no such file")
    return os.path.abspath(value) if value else ""


# RFC 9110 5.6.2: a field name is a token.
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
# Response headers the server writes itself, from the response's framing: one given here would
# be dropped (as an app's copy is).
_FRAMING_FIELDS = ("content-length", "transfer-encoding", "connection")


def header_spec(value: str) -> str:
    """NAME:VALUE for --response-header: NAME a token, VALUE visible ASCII, spaces and tabs
    (no CR, LF, NUL or other control character); kept as "NAME: VALUE"."""
    name, colon, field_value = value.partition(":")
    name, field_value = name.strip(), field_value.strip(" \t")
    if not colon or not name:
        raise ValueError("expected NAME:VALUE, e.g. X-Content-Type-Options:nosniff")
    if not set(name) <= _TOKEN_CHARS:
        raise ValueError(f"{name!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~)")
    if name.lower() in _FRAMING_FIELDS:
        raise ValueError(f"{name} is set by the server from the response's framing")
    if not all(char == "\t" or " " <= char <= "~" for char in field_value):
        raise ValueError(f"the value of {name} must be visible ASCII, spaces and tabs (no CR, "
                         "LF, NUL or other control character)")
    return f"{name}: {field_value}"


def upstream_spec(value: str) -> str:
    """PREFIX=URL for --upstream, checked (upstream/routes.py reads it)."""
    from .upstream.routes import parse_upstream

    parse_upstream(value)
    return value.strip()


def cert_spec(value: str) -> str:
    """HOSTNAME=CERTFILE,KEYFILE for --cert (KEYFILE may be left out when CERTFILE holds the
    key); HOSTNAME a DNS name, or *.NAME for every name one label below NAME."""
    name, equals, files = value.partition("=")
    name = name.strip().lower()
    certfile, _, keyfile = files.partition(",")
    if not equals or not name or not certfile.strip():
        raise ValueError("expected HOSTNAME=CERTFILE,KEYFILE, e.g. "
                         "shop.example.com=/etc/ssl/shop.pem,/etc/ssl/shop.key")
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            raise ValueError(f"{name}: a wildcard needs a domain under it, e.g. *.example.com")
    allowed = set(string.ascii_lowercase + string.digits + "-_")
    if not labels or not all(label and set(label) <= allowed for label in labels):
        raise ValueError(f"{name!r} is not a host name (letters, digits, -, and *. in front)")
    certfile, keyfile = file_path(certfile.strip()), file_path(keyfile.strip())
    return f"{name}={certfile},{keyfile}" if keyfile else f"{name}={certfile}"


def tls_version(value: str) -> str:
    value = value.strip()
    if value not in ("1.2", "1.3"):
        raise ValueError("must be 1.2 or 1.3")
    return value


def path_prefix(value: str) -> str:
    value = value.rstrip("/")
    if value and not value.startswith("/"):
        raise ValueError("must start with /")
    return value


def probe_path(value: str) -> str:
    """--health-path, --ready-path: an absolute path matched exactly (no query string)."""
    value = value.strip()
    if value and (not value.startswith("/") or "?" in value or not value.isascii()
                  or any(char <= " " for char in value)):
        raise ValueError("must be an absolute path like /healthz (ASCII, no query string)")
    return value


def agent_address(value: str) -> str:
    """--agent-bind: a TCP HOST:PORT (the agent-check answers from the master)."""
    from .net.listeners import parse_bind

    value = value.strip()
    if value:
        address = parse_bind(value)
        if address.kind != "tcp" or address.tls:
            raise ValueError("must be a TCP HOST:PORT, e.g. 127.0.0.1:9100")
    return value


def default_workers() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Option:
    """One configurable setting."""

    name: str  # attribute on Config; env var is DUCK_PREFORK_<NAME upper>
    parse: Callable[[str], Any]
    default: Any
    help: str
    short: str | None = None
    metavar: str | None = None
    repeatable: bool = False  # may be given several times; the env var takes a comma list
    flag: bool = False  # a switch: present means true

    @property
    def long(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default


LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def option(parse: Callable[[str], Any], default: Any, help: str, short: str | None = None,
           metavar: str | None = None, repeatable: bool = False, flag: bool = False) -> Any:
    """A Config field that is also a row of the option table (its name is the field's)."""
    row = Option("", parse, default, help, short, metavar, repeatable, flag)
    metadata = {"option": row}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Config:
    """The effective configuration, and the option table: one typed field per option (its
    parser, default, help and flags in the field's metadata), plus the APP to serve. The
    command line, the environment and the TOML file are all read through OPTIONS, which is
    derived from these fields, so a new option is one field here."""

    app: str = ""
    config: str = option(text, "", metavar="FILE",
        help="read options from a TOML file: each long option name as a key (workers = 8, bind = "
             "[\"0.0.0.0:80\"]), and app")
    check_config: bool = option(boolean, False, flag=True,
        help="validate the configuration and that APP imports, print the effective values, and "
             "exit (0 valid, 1 bad option, 3 the app does not load)")
    bind: list[str] = option(
        bind_address, ["127.0.0.1:8000"], short="-b", metavar="ADDR", repeatable=True,
        help="address to listen on: HOST:PORT, [IPv6]:PORT, unix:/path/to.sock or fd://N; repeat "
             "for several")
    workers: int = option(positive_int, default_workers, short="-w", metavar="N",
        help="number of worker processes")
    factory: bool = option(boolean, False, flag=True,
        help="treat APP as a zero-argument callable that returns the ASGI app")
    graceful_timeout: float = option(non_negative_float, 30.0, metavar="S",
        help="seconds in-flight requests may take to finish on stop")
    keep_alive: float = option(non_negative_float, 75.0, metavar="S",
        help="seconds an idle keep-alive connection is kept open between requests: keep it above "
             "the idle timeout of the balancer in front (nginx upstream keepalive_timeout 60 s, "
             "HAProxy timeout server), so that the balancer, not us, closes an idle connection "
             "(0: one request per connection)")
    max_requests_per_connection: int = option(non_negative_int, 1000, metavar="N",
        help="the N-th response on a keep-alive connection carries Connection: close, so that "
             "connections are spread anew over the workers and balancers now and then (0: no "
             "limit)")
    drain_delay: float = option(non_negative_float, 0.0, metavar="S",
        help="lame-duck time on TERM: readiness answers 503 and every response carries "
             "Connection: close at once, but the listeners keep accepting for S seconds (so the "
             "balancer notices before connections are refused), then the graceful stop; a second "
             "TERM skips the rest of the delay. Size it from the balancer's health checks (see "
             "docs/deploy.md)")
    health_path: str = option(probe_path, "", metavar="PATH",
        help="answer GET PATH (exact, no query string) in the worker, before the app: 200 while "
             "the worker's event loop runs (a liveness probe); the app never sees it")
    ready_path: str = option(probe_path, "", metavar="PATH",
        help="answer PATH in the worker, before the app: 200 once lifespan startup is done and "
             "at least --min-ready workers serve, 503 otherwise and from the start of a drain (a "
             "readiness probe, the balancer's health check)")
    min_ready: int = option(positive_int, 1, metavar="N",
        help="--ready-path and --agent-bind answer ready only while at least N workers serve")
    log_health: bool = option(boolean, False, flag=True,
        help="write --health-path and --ready-path answers to the access log too (they are left "
             "out by default: a balancer probes every second or two)")
    agent_bind: str = option(agent_address, "", metavar="HOST:PORT",
        help="serve HAProxy's agent-check on HOST:PORT from the master: each connection is "
             "answered 'ready N%%' (N the share of idle workers), 'drain' while stopping or "
             "'maint' below --min-ready workers, then closed")
    backlog: int = option(positive_int, 2048, metavar="N",
        help="listen backlog: connections the kernel queues before accept")
    reuse_port: bool = option(boolean, False, flag=True,
        help="give each worker its own SO_REUSEPORT socket for every TCP address, so the kernel "
             "spreads new connections evenly over the workers (unix sockets and fd:// or systemd "
             "sockets stay shared)")
    root_path: str = option(path_prefix, "", metavar="PATH",
        help="ASGI root_path: the prefix the app is mounted under behind a proxy")
    lifespan: str = option(one_of("auto", "on", "off"), "auto", metavar="auto|on|off",
        help="run the ASGI lifespan protocol: auto skips it if the app does not support it")
    limit_request_line: int = option(non_negative_int, 8190, metavar="N",
        help="longest request line in bytes, else 414 (0: only the head size bound)")
    limit_request_fields: int = option(non_negative_int, 100, metavar="N",
        help="most header fields in a request, else 431 (0: no count limit)")
    limit_request_field_size: int = option(non_negative_int, 8190, metavar="N",
        help="longest header field (name: value) in bytes, else 431 (0: only the head size bound)")
    limit_request_body: int = option(non_negative_int, 0, metavar="BYTES",
        help="largest request body, else 413 (0: unlimited)")
    limit_concurrency: int = option(non_negative_int, 0, metavar="N",
        help="most requests in progress per worker; beyond it a 503 (0: unlimited)")
    header_timeout: float = option(non_negative_float, 10.0, metavar="S",
        help="seconds a client has to send a complete request head, from connecting or from the "
             "previous response (0: no limit)")
    send_timeout: float = option(non_negative_float, 60.0, metavar="S",
        help="seconds a response write may make no progress before the connection is closed (0: "
             "no limit)")
    response_header: list[str] = option(header_spec, [], metavar="NAME:VALUE", repeatable=True,
        help="add this header to every HTTP response of the app that does not carry a header of "
             "that name (e.g. Strict-Transport-Security:max-age=31536000); repeat for several, "
             "added in the order given")
    http: str = option(one_of("auto", "httptools", "h11"), "auto", metavar="auto|httptools|h11",
        help="HTTP/1.1 parser: httptools (llhttp, in C) or h11 (pure Python); auto picks "
             "httptools when it is installed. Both answer every request alike")
    ws: str = option(one_of("auto", "wsproto", "none"), "auto", metavar="auto|wsproto|none",
        help="WebSocket support: auto and wsproto serve WebSockets with wsproto; none answers "
             "upgrade requests as plain HTTP (for WebSockets terminated elsewhere)")
    ws_max_size: int = option(non_negative_int, 16 * 1024 * 1024, metavar="BYTES",
        help="largest WebSocket message accepted, else the connection is closed with 1009 (0: no "
             "limit)")
    ws_ping_interval: float = option(non_negative_float, 20.0, metavar="S",
        help="seconds between keepalive pings on an idle WebSocket (0: no pings)")
    ws_ping_timeout: float = option(non_negative_float, 20.0, metavar="S",
        help="seconds a WebSocket peer has to answer a ping before it is dropped (0: wait "
             "forever)")
    ws_accept_timeout: float = option(non_negative_float, 10.0, metavar="S",
        help="seconds the app has to accept or refuse a WebSocket handshake, else it is answered "
             "500 (0: no limit)")
    ws_per_message_deflate: bool = option(boolean, True, metavar="true|false",
        help="compress WebSocket messages (permessage-deflate) when the client offers it")
    ws_http2: bool = option(boolean, True, metavar="true|false",
        help="WebSockets over HTTP/2 (RFC 8441 extended CONNECT) on HTTP/2 connections; false: "
             "not offered, clients open an HTTP/1.1 connection for their WebSockets")
    http2: bool = option(boolean, True, metavar="true|false",
        help="HTTP/2: offered by ALPN (h2, http/1.1) on TLS listeners, and spoken in cleartext "
             "(h2c, prior knowledge) with --forwarded-allow-ips peers only; false: HTTP/1.1 only")
    http2_max_concurrent_streams: int = option(positive_int, 100, metavar="N",
        help="most streams (requests) in progress at once on one HTTP/2 connection "
             "(SETTINGS_MAX_CONCURRENT_STREAMS); more are refused")
    http2_max_header_list_size: int = option(positive_int, 64 * 1024, metavar="BYTES",
        help="largest HTTP/2 header block, counted compressed as it arrives and decoded "
             "(SETTINGS_MAX_HEADER_LIST_SIZE); beyond it, GOAWAY")
    http2_max_continuation_frames: int = option(positive_int, 16, metavar="N",
        help="most CONTINUATION frames in one HTTP/2 header block; beyond it, GOAWAY")
    http2_max_resets: int = option(positive_int, 200, metavar="N",
        help="stream resets a second an HTTP/2 client may cause (its RST_STREAMs and the streams "
             "we refuse), as a burst too; beyond it, GOAWAY ENHANCE_YOUR_CALM (rapid reset)")
    http2_max_control_frames: int = option(positive_int, 100, metavar="N",
        help="PING and SETTINGS frames a second an HTTP/2 client may send, as a burst too; "
             "beyond it, GOAWAY ENHANCE_YOUR_CALM")
    http2_max_streams: int = option(non_negative_int, 10000, metavar="N",
        help="streams one HTTP/2 connection may open; then it is drained (GOAWAY) and the "
             "client opens another (0: no limit)")
    upstream: list[str] = option(upstream_spec, [], metavar="PREFIX=URL", repeatable=True,
        help="pass requests whose path is PREFIX or under it (whole segments; a PREFIX ending in "
             "/ matches any path starting with it) to an upstream HTTP/1.1 server instead of the "
             "app: URL is http://host:port, http://host:port/base (the base path replaces "
             "PREFIX, as nginx's proxy_pass) or unix:/path/to.sock, or app for the ASGI app; the "
             "longest matching prefix wins; repeat for several")
    upstream_max_connections: int = option(non_negative_int, 100, metavar="N",
        help="most connections a worker opens to one upstream; requests beyond wait for one (0: "
             "no limit)")
    upstream_timeout: float = option(non_negative_float, 60.0, metavar="S",
        help="seconds an upstream may take to accept a connection, to send the response head, "
             "and between reads after it: else 504, or the client connection closed mid-body "
             "(0: no limit)")
    upstream_tunnel_timeout: float = option(non_negative_float, 10.0, metavar="S",
        help="seconds a tunnel (an upstream's 101 Switching Protocols, e.g. a WebSocket) may "
             "carry nothing either way before both ends are closed (0: no limit)")
    forwarded_allow_ips: str = option(ip_list, "127.0.0.1,::1", metavar="LIST",
        help="peers (IPs or networks, comma separated; * for all) whose X-Forwarded-* and "
             "Forwarded headers are trusted")
    no_proxy_headers: bool = option(boolean, False, flag=True,
        help="ignore X-Forwarded-* and Forwarded headers from every peer")
    proxy_protocol: str = option(one_of("off", "v1", "v2", "any"), "off",
                                 metavar="off|v1|v2|any",
        help="TCP listeners require a PROXY protocol header (v1, v2, or either) from each "
             "connection, which must come from a --forwarded-allow-ips peer; else it is closed "
             "with no response")
    timeout: float = option(non_negative_float, 30.0, metavar="S",
        help="a worker whose event loop has not reported for S seconds is hung: its stack is "
             "dumped to the error log and it is replaced (0: off)")
    boot_timeout: float = option(non_negative_float, 60.0, metavar="S",
        help="a worker not ready (app imported, lifespan started) S seconds after its fork is "
             "killed (0: off)")
    max_requests: int = option(non_negative_int, 0, metavar="N",
        help="replace a worker gracefully after it has served N requests (0: never)")
    max_requests_jitter: int = option(non_negative_int, 0, metavar="J",
        help="add random(0..J) to --max-requests per worker, so they do not all recycle at once")
    max_worker_memory: int = option(non_negative_int, 0, metavar="MiB",
        help="replace a worker gracefully once its unique memory (USS, else RSS) passes this many"
             " MiB; checked every few seconds (0: off)")
    preload: bool = option(boolean, False, flag=True,
        help="import the app in the master before forking (shared memory, faster boots); HUP then"
             " restarts workers without importing it again (not with --reload)")
    reload: bool = option(boolean, False, flag=True,
        help="development: watch the source files (watchfiles, pip install 'duck-prefork[reload]')"
             " and on a change reload the workers as HUP does; a change that breaks the app keeps"
             " the old workers serving")
    reload_dir: list[str] = option(directory, [], metavar="DIR", repeatable=True,
        help="with --reload, watch DIR instead of the working directory; repeat for several")
    reload_include: list[str] = option(text, [], metavar="GLOB", repeatable=True,
        help="with --reload, also watch file names matching GLOB (*.py always is); repeat for "
             "several")
    reload_exclude: list[str] = option(text, [], metavar="GLOB", repeatable=True,
        help="with --reload, ignore paths matching GLOB (as well as .git, __pycache__, .venv and "
             "editor files); repeat for several")
    user: str = option(text, "", metavar="USER",
        help="run workers as USER (name or uid), after the master has bound its sockets")
    group: str = option(text, "", metavar="GROUP",
        help="run workers as GROUP (name or gid); default: USER's primary group")
    umask: int | None = option(octal, None, metavar="MASK",
        help="set the process umask, e.g. 027 (affects unix socket and log file modes)")
    pid: str = option(text, "", metavar="FILE",
        help="write the master's pid to FILE (refused if it names a running process), removed at "
             "exit")
    on_starting: str = option(hook_spec, "", metavar="MODULE:FUNCTION",
        help="call FUNCTION(config) in the master before the first fork")
    post_fork: str = option(hook_spec, "", metavar="MODULE:FUNCTION",
        help="call FUNCTION(config, worker_number) in each worker right after its fork")
    worker_exit: str = option(hook_spec, "", metavar="MODULE:FUNCTION",
        help="call FUNCTION(config, worker_number, pid, exit_code) in the master when a worker "
             "has exited")
    on_reload: str = option(hook_spec, "", metavar="MODULE:FUNCTION",
        help="call FUNCTION(config) in the master on HUP, with the new configuration")
    name: str = option(text, "", metavar="NAME",
        help="name shown in process titles")
    access_logfile: str = option(text, "", metavar="PATH|-",
        help="write one access log line per response to PATH, or - for stdout")
    access_logformat: str = option(access_log_format, "", metavar="FORMAT",
        help="access log line format with gunicorn's atoms, e.g. '%%(h)s %%(t)s \"%%(r)s\" "
             "%%(s)s %%(b)s %%(M)s' (default: the combined log format and the duration in ms)")
    access_log_json: bool = option(boolean, False, flag=True,
        help="write the access log as one JSON object a line (time, client, method, path, "
             "status, bytes, duration_ms, referrer, user_agent, ...)")
    error_logfile: str = option(text, "-", metavar="PATH|-",
        help="write the error log to PATH, or - for stderr")
    log_level: str = option(
        one_of("critical", "error", "warning", "info", "debug"), "info", metavar="LEVEL",
        help="error log level: critical, error, warning, info, debug")
    log_config: str = option(log_config_file, "", metavar="FILE",
        help="configure Python logging from FILE: a dictConfig in .json, .toml or .yaml, or an "
             "INI fileConfig; the loggers are duck_prefork.error and duck_prefork.access")
    capture_output: bool = option(boolean, False, flag=True,
        help="send the workers' stdout and stderr (the app's print() and unconfigured logging) "
             "to the error log")
    chdir: str = option(directory, "", metavar="DIR",
        help="change to DIR before loading the app")
    certfile: str = option(file_path, "", metavar="FILE",
        help="TLS certificate chain (PEM, leaf first); makes every TCP --bind TLS unless some "
             "--bind says https://, and is the certificate for names no --cert matches")
    keyfile: str = option(file_path, "", metavar="FILE",
        help="private key of --certfile (PEM; default: read from --certfile)")
    keyfile_password_file: str = option(text, "", metavar="FILE",
        help="file holding the password of an encrypted key (one trailing newline stripped); a "
             "bare name is also looked up in $CREDENTIALS_DIRECTORY (systemd LoadCredential=)")
    cert: list[str] = option(cert_spec, [], metavar="HOSTNAME=CERTFILE,KEYFILE", repeatable=True,
        help="serve this certificate to clients asking for HOSTNAME by SNI (*.example.com: any "
             "name one label below); repeat for several")
    tls_reject_unknown_sni: bool = option(boolean, False, flag=True,
        help="answer a TLS client asking for a name no certificate covers with the "
             "unrecognized_name alert instead of the default certificate")
    ca_certs: str = option(file_path, "", metavar="FILE",
        help="CA certificates (PEM) that client certificates are verified against (with "
             "--client-cert)")
    client_cert: str = option(one_of("none", "optional", "required"), "none",
        metavar="none|optional|required",
        help="ask TLS clients for a certificate: optional verifies one if sent, required refuses "
             "a client without one; needs --ca-certs")
    crl_file: str = option(file_path, "", metavar="FILE",
        help="certificate revocation list (PEM) checked against client certificates")
    tls_min_version: str = option(tls_version, "1.2", metavar="1.2|1.3",
        help="oldest TLS version accepted")
    ciphers: str = option(text, "", metavar="LIST",
        help="OpenSSL cipher list for TLS 1.2 (default: OpenSSL's); TLS 1.3 suites are always "
             "OpenSSL's")
    tls_handshake_timeout: float = option(non_negative_float, 10.0, metavar="S",
        help="seconds a TLS client has, from connecting, to complete its handshake (0: no limit)")
    tls_reload: str = option(one_of("hup", "watch"), "hup", metavar="hup|watch",
        help="when certificates are reloaded: on HUP only, or also when their files change "
             "(watch: checked every second, symlinks followed, applied once they are stable)")
    redirect_https: bool = option(boolean, False, flag=True,
        help="plain HTTP listeners answer every request with a 308 to the same URL on the TLS "
             "listener")
    metrics_bind: str = option(metrics_address, "", metavar="ADDR",
        help="serve whole-server metrics from the master: /metrics (Prometheus text, OpenMetrics "
             "on request) and /status (JSON, read by `duck-prefork status`) on unix:PATH (made "
             "mode 0600) or HOST:PORT (anything but loopback needs --metrics-token); never on "
             "the app's listeners. Off by default: the workers then count nothing")
    metrics_token: str = option(file_path, "", metavar="FILE",
        help="a file holding the bearer token scrapers of --metrics-bind must send "
             "(Authorization: Bearer TOKEN), else 401")


OPTIONS: tuple[Option, ...] = tuple(
    replace(item.metadata["option"], name=item.name) for item in fields(Config)
    if "option" in item.metadata)

OPTIONS_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}

DEMO_APP = ""  # APP left empty: serve the built-in demo page


def parse_value(option: Option, raw: str, source: str) -> Any:
    try:
        return option.parse(raw)
    except ValueError as exc:
        reason = str(exc)
        if not reason or reason.startswith(("invalid literal", "could not convert")):
            reason = "not a valid value"
        raise ConfigError(f"{source}: {reason}, got {raw!r}") from None


# DUCK_PREFORK_* variables that are ours but not options: the pure-Python build's switch
# (build.PURE_ENV) and what USR2 hands the new image (master/upgrade.py).
OTHER_ENV = ("DUCK_PREFORK_APP", "DUCK_PREFORK_NO_EXTENSIONS", "DUCK_PREFORK_INHERIT",
             "DUCK_PREFORK_CHECKED_CONFIG")


def closest_option(name: str) -> str | None:
    """The option whose name is closest to `name` (lowercase, underscores), if any is close."""
    match = difflib.get_close_matches(name, [option.name for option in OPTIONS] + ["app"], 1,
                                      0.6)
    return match[0] if match else None


def check_environment(environ: Mapping[str, str]) -> None:
    """A DUCK_PREFORK_* variable that is no option is a typo: an error naming the closest."""
    known = {option.env for option in OPTIONS}.union(OTHER_ENV)
    for key in sorted(environ):
        if key.startswith(ENV_PREFIX) and key not in known:
            guess = closest_option(key[len(ENV_PREFIX):].lower())
            hint = f"; did you mean {ENV_PREFIX}{guess.upper()}?" if guess else ""
            raise ConfigError(f"{key}: no such option{hint} (every option is "
                              f"{ENV_PREFIX}<OPTION>, see --help)")


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    check_environment(environ)
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = environ.get(option.env)
        if raw is None:
            continue
        if option.repeatable:
            items = [item.strip() for item in raw.split(",") if item.strip()]
            if not items:
                raise ConfigError(f"{option.env}: needs at least one value, got {raw!r}")
            values[option.name] = [parse_value(option, item, option.env) for item in items]
        else:
            values[option.name] = parse_value(option, raw, option.env)
    return values


def from_file(path: str) -> tuple[str | None, dict[str, Any]]:
    """The APP and option values of a TOML file; errors name the file and the key or line."""
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None  # the message gives line and column
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): TOML files are "
                          "UTF-8") from None
    return from_table(table, path)


def from_table(table: dict[str, Any], source: str) -> tuple[str | None, dict[str, Any]]:
    """The APP and option values of a parsed TOML table; errors name `source` and the key."""
    app = table.pop("app", None)
    if app is not None and not isinstance(app, str):
        raise ConfigError(f"{source}: app: expected a string like \"module:attribute\"")
    values: dict[str, Any] = {}
    for key, value in table.items():
        option = OPTIONS_BY_NAME.get(key.replace("-", "_"))
        if option is None or option.name in ("config", "check_config"):
            guess = closest_option(key.replace("-", "_"))
            hint = f"; did you mean {guess.replace('_', '-')!r}?" if guess else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")
        where = f"{source}: {key}"
        if option.repeatable:
            items = value if isinstance(value, list) else [value]
            if not items and option.default_value():
                raise ConfigError(f"{where}: needs at least one value")
            values[option.name] = [parse_value(option, _toml_text(item), where)
                                   for item in items]
        elif isinstance(value, (list, dict)):
            raise ConfigError(f"{where}: expected a single value, got {value!r}")
        else:
            values[option.name] = parse_value(option, _toml_text(value), where)
    return app, values


def from_toml_text(text: str, source: str) -> Config:
    """A whole configuration from TOML text, such as --check-config prints."""
    try:
        app, values = from_table(tomllib.loads(text), source)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return check_combinations(Config(app=app or DEMO_APP, **values))


def check_combinations(config: Config) -> Config:
    """Options that only make sense together (TLS) or contradict each other; raises ConfigError
    naming them."""
    from .net.listeners import parse_bind

    if config.reload and config.preload:
        raise ConfigError("--reload cannot be combined with --preload: --preload keeps the "
                          "master's copy of the app, which a reload would not re-import; drop "
                          "--preload in development")
    if config.health_path and config.health_path == config.ready_path:
        raise ConfigError(f"--health-path and --ready-path are both {config.health_path}: the "
                          "liveness and the readiness answers need a path each")
    if config.access_log_json and config.access_logformat:
        raise ConfigError("--access-log-json and --access-logformat exclude each other: pick "
                          "one")

    binds = [parse_bind(value) for value in config.bind]
    has_certificate = bool(config.certfile or config.cert)
    tls_binds = [value for value, address in zip(config.bind, binds, strict=True) if address.tls]
    if tls_binds and not has_certificate:
        raise ConfigError(f"--bind {tls_binds[0]}: a TLS listener needs --certfile (or --cert)")
    if config.keyfile and not config.certfile:
        raise ConfigError("--keyfile: needs --certfile")
    if config.keyfile_password_file and not has_certificate:
        raise ConfigError("--keyfile-password-file: needs --certfile (or --cert)")
    if config.client_cert != "none" and not config.ca_certs:
        raise ConfigError(f"--client-cert {config.client_cert}: needs --ca-certs, the CAs that "
                          "client certificates are verified against")
    if config.crl_file and config.client_cert == "none":
        raise ConfigError("--crl-file: revocation is checked on client certificates: needs "
                          "--client-cert optional or required")
    if config.proxy_protocol != "off" and all(address.kind == "unix" for address in binds):
        raise ConfigError(f"--proxy-protocol {config.proxy_protocol}: applies to TCP listeners, "
                          "and every --bind is a unix socket")
    if config.redirect_https:
        tcp_tls = [address for address in binds if address.tls and address.kind == "tcp"]
        if not tcp_tls and not (has_certificate and not tls_binds):
            raise ConfigError("--redirect-https: needs a TLS TCP listener (--bind "
                              "https://HOST:PORT) to redirect to")
        if not tls_binds:
            raise ConfigError("--redirect-https: every TCP listener speaks TLS (--certfile "
                              "without https:// binds): say which are TLS with --bind "
                              "https://HOST:PORT")
    if config.metrics_token and not config.metrics_bind:
        raise ConfigError("--metrics-token: needs --metrics-bind")
    if config.metrics_bind and not config.metrics_token:
        from .metrics.server import needs_token

        if needs_token(config.metrics_bind):
            raise ConfigError(f"--metrics-bind {config.metrics_bind}: an address other hosts "
                              "can reach needs --metrics-token FILE (or bind 127.0.0.1 or a "
                              "unix socket)")
    return config


def _toml_text(value: Any) -> str:
    """A TOML scalar as the command line would have given it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build_config(app: str | None, cli_values: Mapping[str, Any],
                 environ: Mapping[str, str] = os.environ) -> Config:
    """Merge command line values over the environment over the file over the defaults."""
    values: dict[str, Any] = {}
    path = cli_values.get("config") or environ.get(OPTIONS_BY_NAME["config"].env, "")
    file_app = None
    if path:
        file_app, file_values = from_file(path)
        values.update(file_values)
    values.update(from_environment(environ))
    values.update(cli_values)
    if app is None:
        app = environ.get(ENV_PREFIX + "APP", file_app or DEMO_APP)
    if app and ":" not in app:
        raise ConfigError(f"APP: expected module:attribute, got {app!r}")
    return check_combinations(Config(app=app, **values))
