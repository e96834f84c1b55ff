"""A worker process: after fork, load the app, run lifespan, serve, drain on TERM/INT, exit.

It reports to the master over its channel (see channel.py): ready or failed at boot, then a
heartbeat a second from inside its event loop, and "recycle" after --max-requests.
Signals: TERM and INT stop accepting, drain and exit. TERM leaves what is queued on the
listening sockets to the other workers (this one is retired, the sockets stay open); INT first
accepts what is queued, to serve it in the drain (the sockets are about to close, and the
kernel resets the connections queued on a socket at its last close). The master dying sends
INT (the parent-death signal). USR1 reopens the log files; USR2 dumps every thread's stack to
the error log (faulthandler, works even when the event loop is blocked); HUP, TTIN, TTOU and
QUIT are the master's and ignored here.
"""

from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import functools
import gc
import grp
import os
import pwd
import random
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import setproctitle
import uvloop

from .. import logs
from ..access_log import ACCESS_LOG_CLOSE_WAIT, AccessLog, access_formatter
from ..asgi.forwarded import ProxyHeaders
from ..asgi.lifespan import Lifespan, LifespanFailure
from ..asgi.pipeline import ASGI, ResponseHeaders
from ..asgi.websocket import WebSocketUpgrade
from ..config import Config
from ..demo import create_demo_app
from ..hooks import run_hook
from ..http1.connection import HttpConnection, ServerState
from ..http1.parser_h11 import H11Parser
from ..http1.request_head import Limits
from ..http2.connection import Tunnels, connection_factory
from ..http2.limits import Http2Limits
from ..loader import AppLoadError, load_app
from ..logs import log
from ..metrics.counters import RequestCounts
from ..metrics.layout import CellWriter
from ..net.listeners import Listener
from ..net.proxy_stage import ProxyProtocol
from ..net.stages import H2, HTTP_1_1, ConnectionPlan, StageFactory
from ..tls.context import Certificates
from ..tls.handshake import TlsServer
from ..tls.redirect import RedirectToHttps
from ..upstream.exchange import UpstreamASGI
from ..upstream.routes import RouteTable
from . import channel
from .acceptor import Acceptor
from .channel import Sender, read_views
from .probes import MasterView, Probes

EXIT_BOOT_FAILED = 3

# What a worker's stop takes after its TERM or INT, part by part. The drain: up to
# --graceful-timeout for in-flight work, then what is left is cancelled and gets CANCEL_WAIT to
# unwind. Lifespan shutdown: up to LIFESPAN_SHUTDOWN_TIMEOUT for the app's reply, then up to
# LIFESPAN_TASK_WAIT for its lifespan task to end (lifespan.py). Then tasks the app left running
# are cancelled, and they, async generators and the default executor's threads get EXIT_WAIT;
# the access log's last lines get ACCESS_LOG_CLOSE_WAIT. STOP_MARGIN is for a busy machine
# and the process's exit.
CANCEL_WAIT = 1.0
LIFESPAN_SHUTDOWN_TIMEOUT = 5.0
LIFESPAN_TASK_WAIT = 1.0
EXIT_WAIT = 1.0
STOP_MARGIN = 1.0
# The most a worker's stop takes past --graceful-timeout: the master kills a worker that is
# still running graceful_timeout + STOP_ALLOWANCE seconds after its TERM or INT.
STOP_ALLOWANCE = (CANCEL_WAIT + LIFESPAN_SHUTDOWN_TIMEOUT + LIFESPAN_TASK_WAIT + EXIT_WAIT
                  + ACCESS_LOG_CLOSE_WAIT + STOP_MARGIN)

MALLOC_TRIM_EVERY = 30  # ticks (seconds) between two malloc_trim calls (_tick)
LAG_WINDOW = 10  # ticks: the loop lag published is the worst of the last LAG_WINDOW
_PR_SET_PDEATHSIG = 1


class BootFailure(Exception):
    """The worker cannot start serving; str() is the cause for the operator."""


def process_title(role: str, name: str) -> str:
    return f"duck-prefork: {role} [{name}]"


class Worker:
    """One worker process; `run()` is called in the child right after fork."""

    stopping: asyncio.Event  # set by serve(), before the signal handlers that use it
    _ticker: asyncio.TimerHandle  # the next _tick(); the first is called by serve()

    def __init__(self, config: Config, listeners: list[Listener], number: int, channel: int,
                 title_name: str):
        self.config = config
        self.listeners = listeners
        self.number = number
        self.channel_fd = channel
        self.channel = Sender(channel)  # to the master; never blocks the event loop
        self.view = MasterView()  # what the master last told us (read_master)
        self._from_master = b""
        self.state: ServerState | None = None
        self.title_name = title_name
        self.preloaded_app: Any = None  # the app imported by the master (--preload)
        self.certificates: Certificates | None = None  # TLS: built by the master, inherited
        self.tls: TlsServer | None = None
        self.proxy_protocol: ProxyProtocol | None = None  # --proxy-protocol
        # Whether the stop accepts what is queued on the listening sockets first: INT (they
        # are about to close) or TERM (they stay open for the other workers).
        self.sweep_on_stop = False
        self.access_log: AccessLog | None = None
        self.recycle_after = 0  # requests served before asking to be replaced; 0: never
        self.failures = logs.FailureLog()  # what went wrong in _tick(), logged once each
        self._ticks = 0
        self.metrics: CellWriter | None = None  # --metrics-bind: this worker's cell
        self.counts: RequestCounts | None = None
        self._tick_due = 0.0  # loop time the next tick is scheduled for (its lag: how late)
        self._lags = [0.0] * LAG_WINDOW
        # glibc's malloc_trim (None elsewhere, musl say): see _tick.
        self._malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)

    def run(self) -> NoReturn:
        master_pid = os.getppid()
        setproctitle.setproctitle(process_title(f"worker {self.number}", self.title_name))
        logs.set_role(f"worker {self.number}")
        # Signals for the master that can reach a worker too (Ctrl-\ goes to the whole process
        # group, `systemctl kill` without --kill-whom=main to the whole cgroup): by default HUP
        # would kill the worker with its requests, TTIN/TTOU would stop it until --timeout.
        for signum in (signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, signal.SIG_IGN)
        faulthandler.register(signal.SIGUSR2, file=logs.error_stream(), all_threads=True)
        if self.config.user or self.config.group:
            drop_privileges(self.config.user, self.config.group)
        # Die with the master: the kernel sends INT (a graceful stop that first accepts what
        # is queued: no master keeps the sockets open now) if it goes away. Asked for after the
        # privilege drop, which clears it (prctl(2)); and if the master died before, the
        # kernel has already re-parented us.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
        if os.getppid() != master_pid:
            os._exit(0)
        if self.config.capture_output:
            logs.capture_output()
        run_hook("post-fork", self.config.post_fork, self.config, self.number)
        code = 0
        try:
            run_bounded(self.serve())
        except BootFailure as exc:
            self.channel.send_failure(str(exc))
            code = EXIT_BOOT_FAILED
        except BaseException:
            log.exception("worker crashed")
            code = 1
        finally:
            if self.access_log is not None:
                self.access_log.close(ACCESS_LOG_CLOSE_WAIT)
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    def load_application(self) -> Any:
        if self.preloaded_app is not None:
            return self.preloaded_app
        return load_application(self.config)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self.stop, False)
        loop.add_signal_handler(signal.SIGINT, self.stop, True)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        loop.add_reader(self.channel_fd, self.read_master)
        config = self.config
        app = self.load_application()

        lifespan_state: dict = {}
        lifespan = Lifespan(app, config.lifespan, lifespan_state)
        try:
            await lifespan.startup()
        except LifespanFailure as exc:
            cause = exc.__cause__
            detail = "".join(traceback.format_exception(cause)).rstrip() if cause else ""
            raise BootFailure(f"{exc}\n{detail}".rstrip()) from None

        access_log = make_access_log(config)
        self.access_log = access_log
        if access_log is not None and access_log.shares_file_with(logs.error_stream()):
            logs.before_each_line(access_log.drain)  # one file, read in order
        proxy = None if config.no_proxy_headers else ProxyHeaders(config.forwarded_allow_ips)
        pipeline = build_pipeline(config, root_path=config.root_path, state=lifespan_state,
                                  access_log=access_log, middlewares=response_middlewares(config),
                                  proxy=proxy, clock=loop.time)
        websocket = websocket_upgrade(config)
        upgrade: Callable[[Any, Any], bool] | None = websocket
        # WebSockets over HTTP/2 (RFC 8441), unless --ws-http2 false; not with upstream
        # routes either, whose WebSockets are their upstream's over HTTP/1.1 (a client told
        # it may use extended CONNECT would send those that way too).
        tunnels: Tunnels | None = {b"websocket": websocket.over_http2} \
            if websocket is not None and config.ws_http2 and not config.upstream else None
        if isinstance(pipeline, UpstreamASGI):
            pipeline.start()
            if upgrade is not None:
                upgrade = pipeline.upgrade_hook(upgrade)
        limits = Limits(request_line=config.limit_request_line,
                        fields=config.limit_request_fields,
                        field_size=config.limit_request_field_size,
                        body=config.limit_request_body)
        handler: Any = pipeline
        if config.health_path or config.ready_path:
            handler = Probes(pipeline, self.view, lambda: state.lame_duck, config.health_path,
                             config.ready_path, config.min_ready, config.log_health)
        state = ServerState(app, handler, functools.partial(parser_class(config.http), limits),
                            config.keep_alive,
                            timing=access_log is not None or self.metrics is not None,
                            limits=limits,
                            concurrency=config.limit_concurrency,
                            header_timeout=config.header_timeout,
                            send_timeout=config.send_timeout,
                            upgrade=upgrade,
                            max_requests_per_connection=config.max_requests_per_connection)
        state.lame_duck = self.view.stopping
        self.state = state
        if self.metrics is not None:
            state.counts = self.counts = RequestCounts()
        # What each listener's connections go through before HTTP/1.1: with --proxy-protocol a
        # TCP listener's, the PROXY header first; a TLS listener's, the TLS handshake; with
        # --redirect-https a plain one's, the redirect (and no HTTP/1.1).
        if config.proxy_protocol != "off":
            # One allow-list for the PROXY header and for the forwarded headers.
            self.proxy_protocol = ProxyProtocol(
                config.proxy_protocol, ProxyHeaders(config.forwarded_allow_ips).trusts)
        plan_for = connection_plans(config, self.listeners, state, self._tls_server(loop),
                                    self.proxy_protocol, tunnels)
        acceptors = [Acceptor(listener.socket, plan_for(listener).protocol_factory(), state)
                     for listener in self.listeners]
        for acceptor in acceptors:
            acceptor.start()
        self.recycle_after = config.max_requests and \
            config.max_requests + random.randint(0, config.max_requests_jitter)
        self._tick_due = loop.time()
        self._tick(loop, state)
        # Everything allocated so far (the app, its imports, lifespan state) lives as long as
        # the worker: move it out of the cyclic collector's way, so that its full passes only
        # walk what requests allocate. Measured: see the project's bench notes.
        gc.freeze()
        self.channel.send(channel.READY)
        log.debug("serving (pid %d): app %s, parser %s, websockets %s, lifespan %s, access log "
                  "%s, listening on %s", os.getpid(), config.app or "demo",
                  parser_class(config.http).__name__, config.ws,
                  "on" if lifespan.supported else "off",
                  "on" if access_log is not None else "off",
                  ", ".join(listener.describe() for listener in self.listeners
                            if listener.serves(self.number)))

        await self.stopping.wait()
        log.info("draining: %s open, %s in flight",
                 logs.plural(len(state.connections) + len(state.staging)
                             + len(state.http2_connections), "connection"),
                 logs.plural(len(state.tasks), "request"))
        for acceptor in acceptors:
            acceptor.stop(sweep=self.sweep_on_stop)
        state.start_draining()
        try:
            await asyncio.wait_for(state.drained.wait(), config.graceful_timeout)
        except TimeoutError:
            log.warning("graceful timeout (%.0f s): cancelling %s, closing %s",
                        config.graceful_timeout, logs.plural(len(state.tasks), "request"),
                        logs.plural(len(state.connections) + len(state.staging), "connection"))
            for task in list(state.tasks):
                task.cancel()
            for connection in [*state.staging, *state.connections, *state.websockets,
                               *state.http2_connections]:
                connection.abort()
            if state.tasks:
                await asyncio.wait(list(state.tasks), timeout=CANCEL_WAIT)
        if isinstance(pipeline, UpstreamASGI):
            pipeline.close()
        await lifespan.shutdown(LIFESPAN_SHUTDOWN_TIMEOUT)
        self._ticker.cancel()
        self.publish(state, 0.0)  # the last counts, for the master to fold once we are gone
        log.info("stopped after serving %s", logs.plural(state.requests_served, "request"))

    def _tls_server(self, loop: asyncio.AbstractEventLoop) -> TlsServer | None:
        if not any(listener.tls for listener in self.listeners):
            return None
        if self.certificates is None:  # never serve a TLS listener in plaintext
            raise BootFailure("a TLS listener and no certificate: --certfile or --cert")
        self.tls = TlsServer(self.certificates, self.config.tls_handshake_timeout, loop)
        return self.tls

    def read_master(self) -> None:
        """The master's view arrived (channel.py): the serving count for --ready-path, and the
        start of a stop, from which every response carries Connection: close."""
        try:
            data = os.read(self.channel_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the master is gone (the parent-death signal stops us)
            asyncio.get_running_loop().remove_reader(self.channel_fd)
            return
        view, self._from_master = read_views(self._from_master + data)
        if view is not None:
            self.view.serving, self.view.stopping = view
            if self.view.stopping and self.state is not None and not self.state.lame_duck:
                self.state.lame_duck = True  # (the master logs the lame duck, once)
                log.debug("the master is stopping: every response now carries Connection: "
                          "close")

    def stop(self, sweep: bool) -> None:
        """TERM (sweep False) or INT (sweep True): stop gracefully. The first signal decides;
        a later one changes nothing (the listening sockets are closed by then)."""
        if not self.stopping.is_set():
            self.sweep_on_stop = sweep
            self.stopping.set()

    def reopen_logs(self) -> None:
        logs.reopen()
        faulthandler.register(signal.SIGUSR2, file=logs.error_stream(), all_threads=True)
        if self.access_log is not None:
            self.access_log.reopen()

    def _tick(self, loop: asyncio.AbstractEventLoop, state: ServerState) -> None:
        # The next tick first, on the next whole second of loop time (so ticks do not drift):
        # whatever fails below, the heartbeat goes on, or the master would kill this worker.
        now = loop.time()
        lag = max(0.0, now - self._tick_due)  # how late this tick runs: the loop was busy
        self._tick_due = int(now) + 1.0
        self._ticker = loop.call_at(self._tick_due, self._tick, loop, state)
        try:
            state.tick(now)
        except Exception as exc:  # a bug: logged, and the worker goes on serving
            self.failures("the once-a-second tick failed", exc)
        if self.metrics is not None:
            self._lags[self._ticks % LAG_WINDOW] = lag
            try:
                self.publish(state, max(self._lags))
            except Exception as exc:
                self.failures("publishing the metrics failed", exc)
        if self.tls is not None:
            self.tls.failures.flush(loop.time())
        if self.proxy_protocol is not None:
            self.proxy_protocol.flush(loop.time())
        self.channel.beat(len(state.tasks))  # from inside the loop: a blocked loop stops beating
        self._ticks += 1
        if self._malloc_trim is not None and self._ticks % MALLOC_TRIM_EVERY == 0:
            # Give freed heap back to the system: a burst (TLS handshakes above all, OpenSSL's
            # buffers) leaves glibc's arenas holding tens of MiB a worker no longer uses, which
            # --max-worker-memory and the operator would count. A millisecond or so.
            self._malloc_trim(0)
        if self.recycle_after and state.requests_served >= self.recycle_after:
            self.recycle_after = 0  # asked once; the master replaces us, then sends TERM
            self.channel.send(channel.RECYCLE)


    def publish(self, state: ServerState, loop_lag: float) -> None:
        """Copy the counts into this worker's cell, with the gauges read now."""
        if self.metrics is None or self.counts is None:
            return
        websockets = len(state.websockets)
        self.metrics.publish(self.counts, max(0, len(state.tasks) - websockets),
                             len(state.connections) + len(state.http2_connections)
                             + len(state.staging), websockets, loop_lag)


def make_access_log(config: Config) -> AccessLog | None:
    """The access log, when --access-logfile is set or a --log-config gives duck_prefork.access
    a handler (the lines then go through that logger); None (the default) costs nothing per
    request."""
    logger = logs.access_logger if logs.access_logger_configured() else None
    if not config.access_logfile and logger is None:
        return None
    formatter = access_formatter(config.access_logformat, config.access_log_json)
    return AccessLog(config.access_logfile, formatter=formatter, logger=logger)


def connection_plans(config: Config, listeners: list[Listener], state: ServerState,
                     tls: TlsServer | None, proxy: ProxyProtocol | None = None,
                     tunnels: Tunnels | None = None) -> Callable[[Listener], ConnectionPlan]:
    """Which ConnectionPlan a listener's connections follow: with --proxy-protocol a TCP
    listener's starts with the PROXY header; then a TLS listener's has the handshake (ALPN
    then picks HTTP/2 or HTTP/1.1); with --redirect-https a plain TCP listener's has the
    redirect (and no HTTP/1.1 request reaches the app). A listener with none of these goes
    straight to HTTP/1.1; with --http2, its HTTP/1.1 connections from trusted peers switch to
    HTTP/2 when their first bytes are the prior-knowledge preface (ServerState.h2c). `tunnels`:
    what HTTP/2 connections take extended CONNECT streams over for (WebSockets, RFC 8441)."""
    protocols: dict[str, Callable[[], Any]] = {HTTP_1_1: lambda: HttpConnection(state)}
    if config.http2:
        protocols[H2] = state.h2c = connection_factory(state, http2_limits(config), tunnels)
        # (after a PROXY header the client it names is judged: a TCP proxy relays its bytes)
        state.h2c_trusts = ProxyHeaders(config.forwarded_allow_ips).trusts
    tls_ports = [listener.socket.getsockname()[1] for listener in listeners
                 if listener.tls and listener.address.kind == "tcp"]
    redirect: StageFactory | None = None
    if config.redirect_https and tls_ports:
        redirect = functools.partial(RedirectToHttps, tls_ports[0], config.header_timeout)
    plans: dict[tuple, ConnectionPlan] = {}  # one plan per sequence of stages

    def plan_for(listener: Listener) -> ConnectionPlan:
        tcp = listener.socket.family in (socket.AF_INET, socket.AF_INET6)
        stages: list[StageFactory] = []
        if proxy is not None and tcp:
            stages.append(proxy.stage)
        if listener.tls:
            assert tls is not None  # _tls_server() refused to boot without certificates
            stages.append(tls.stage)
        elif redirect is not None and listener.address.kind == "tcp":
            stages.append(redirect)
        key = tuple(stages)
        if key not in plans:
            plans[key] = ConnectionPlan(stages, protocols, state)
        return plans[key]

    return plan_for


def http2_limits(config: Config) -> Http2Limits:
    return Http2Limits(max_concurrent_streams=config.http2_max_concurrent_streams,
                       max_header_list_size=config.http2_max_header_list_size,
                       max_continuation_frames=config.http2_max_continuation_frames,
                       max_resets=config.http2_max_resets,
                       max_control_frames=config.http2_max_control_frames,
                       max_streams=config.http2_max_streams)


def parser_class(choice: str) -> type:
    """The parser adapter --http names: auto is httptools when it can be imported, else h11."""
    if choice != "h11":
        try:
            from ..http1.parser_httptools import HttptoolsParser
        except ImportError as exc:
            if choice == "httptools":
                raise BootFailure(f"--http httptools: cannot import httptools ({exc}); "
                                  "install it, or use --http h11") from None
        else:
            return HttptoolsParser
    return H11Parser


def response_middlewares(config: Config) -> list[ResponseHeaders]:
    """The server-level response middlewares: --response-header's, when given."""
    if not config.response_header:
        return []
    headers = []
    for spec in config.response_header:  # "NAME: VALUE", checked by config.header_spec
        name, _, value = spec.partition(":")
        headers.append((name.strip().encode("ascii"), value.strip().encode("ascii")))
    return [ResponseHeaders(headers)]


def build_pipeline(config: Config, **settings: Any) -> ASGI | UpstreamASGI:
    """The worker's request handler: the ASGI pipeline, wrapped with --upstream in the handler
    that also passes requests to the upstreams (chosen once here, so that a worker without
    upstreams does no routing at all)."""
    pipeline = ASGI(**settings)
    if not config.upstream:
        return pipeline
    return UpstreamASGI(pipeline, RouteTable.parse(config.upstream),
                        max_connections=config.upstream_max_connections,
                        timeout=config.upstream_timeout,
                        tunnel_timeout=config.upstream_tunnel_timeout)


def websocket_upgrade(config: Config) -> WebSocketUpgrade | None:
    if config.ws == "none":
        return None
    return WebSocketUpgrade(max_size=config.ws_max_size, ping_interval=config.ws_ping_interval,
                            ping_timeout=config.ws_ping_timeout,
                            per_message_deflate=config.ws_per_message_deflate,
                            accept_timeout=config.ws_accept_timeout)


def run_bounded(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on a new uvloop loop, as uvloop.run() does, but with the clean-up after it
    bounded: asyncio's waits, unbounded, for every task left, async generator and executor
    thread; here they get EXIT_WAIT together, and what still runs then ends with the process."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    finally:
        loop.run_until_complete(_clean_up(loop))


async def _clean_up(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.wait([*tasks, loop.create_task(loop.shutdown_asyncgens()),
                        loop.create_task(loop.shutdown_default_executor())], timeout=EXIT_WAIT)


def drop_privileges(user: str, group: str) -> None:
    """Become USER/GROUP (names or ids, checked by run_master before any fork), with USER's
    supplementary groups as login sets them (initgroups); with only GROUP, no other group."""
    uid, gid = resolve_user(user, group)
    if gid is not None:
        if uid is not None:
            os.initgroups(pwd.getpwuid(uid).pw_name, gid)
        else:
            os.setgroups([gid])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)


def resolve_user(user: str, group: str) -> tuple[int | None, int | None]:
    """(uid, gid) for --user/--group; the group defaults to the user's. Raises KeyError."""
    uid = gid = None
    if user:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    if group:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    return uid, gid


def load_application(config: Config) -> Any:
    """The ASGI app to serve (the demo without APP); raises BootFailure with the cause."""
    if not config.app:
        return create_demo_app(config.workers)
    try:
        return load_app(config.app, config.factory)
    except AppLoadError as exc:
        raise BootFailure(f"cannot load app: {exc}") from None
    except BaseException:
        raise BootFailure(f"cannot load app {config.app}: importing it raised\n"
                          f"{traceback.format_exc().rstrip()}") from None
