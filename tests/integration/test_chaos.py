"""Chaos: under steady keep-alive load, every signal to the workers and every operator's signal
to the master, in a seeded random order and timing; afterwards the master is the same process,
serves with the worker count its signals asked for, and no request was lost except on a worker
that died.

Replay or extend: DUCK_CHAOS_SEED=7 (one seed) or DUCK_CHAOS_SEEDS=1,2,10-20, e.g.
    DUCK_CHAOS_SEED=7 bin/test tests/integration/test_chaos.py -s
(DUCK_CHAOS_VERBOSE=1 prints the action log of a run that passed too.)
The seed is in the test id and in every failure, which also prints the action log (time since
the start, action, target pid, what came of it), the failed requests and the server's log tail.

What a run does (the order, the gaps of 0-300 ms, the targets and the variants come from the seed):

- Workers get every signal number below SIGRTMIN (the standard ones and glibc's reserved 32
  and 33), a third of the realtime ones (SIGRTMIN+k for k = seed mod 3, so that the default
  seeds 1, 2, 3, like any three consecutive seeds, send every one of them: each kill costs the
  run a worker boot, and the crash back-off paces them) and SIGKILL a few more times.
  SIGSTOP and SIGTSTP are followed by
  SIGCONT 50-300 ms later (a worker stopped for longer is the --timeout machinery's business,
  tested elsewhere, and would only slow the run). Nothing here says which signals are fatal:
  a worker "died" if the master reaped it killed by a signal (its log says so), which is what
  actually happened. The target is a ready worker; one younger than the master's young-death
  age (5 s) is only picked while its slot has had fewer than YOUNG_BUDGET quick deaths in a
  row, so that the master's crash back-off (designed for crash loops) stays in its first steps
  and the run stays bounded.
- The master gets what an operator or supervisor sends: HUP with a good config (2 or 3
  workers) or a broken one (invalid UTF-8, a TOML syntax error, an unknown key, a bad value,
  a missing file; restored once the master has answered), USR2 with good code (a new version
  of the app module), broken code (raises on import) or a broken config (both restored once
  the master has answered), TTIN and TTOU (the count kept within 1..4), USR1, CHLD, WINCH,
  URG, CONT, and STOP followed by CONT. Never TERM, INT or QUIT during the chaos: those stop
  it. A signal that changes the worker count (HUP, USR2, TTIN, TTOU) is sent once the master
  has answered the previous one (its log line), so the expected count follows from the plan;
  everything else, worker signals included, keeps coming meanwhile, also into USR2's exec.
  Except STOP and CONT to the master: the kernel discards pending TTIN/TTOU on SIGCONT
  (POSIX), so those wait for the answer, and counting signals wait for the master's SIGCONT.
- Load: CLIENTS threads, each on one keep-alive connection at a time, sending GET with a
  unique id (a few ask the app to take up to 40 ms). The app writes "id pid" to a record
  before answering, and answers with its pid.

What counts as lost: every request must get its 200, except
- on a connection whose worker was killed by a signal around then (it died with it);
- the standard retry of an idempotent request on a stale keep-alive connection (what HTTP
  clients do): no byte of a response came back, the app never ran the request (so the close
  came before the request), and that connection's worker left (retired gracefully by HUP,
  TTOU, USR2, or killed); the client then retries once on a new connection. Before reusing a
  connection the client looks whether the server closed it already (EOF) and reconnects
  without a failure; the retry covers the close that crossed the request;
- a new connection closed unanswered before the app ran its request, while a worker was
  killed by a signal (the worker that had accepted it is not known in that case).
A refused connection, an error status, a response cut short or lost by a worker that was not
killed (a graceful retirement must finish what it started), or a timeout is lost.

Throughout: the master stays alive, answers every counting signal, and logs no bug (its guard's
"bug while ...", a worker's "worker crashed"); a USR2 refused (bad code or config) changes
nothing, a good one re-executes and the new image says so ("re-executed master pid N").
At the end: the master answers to the same pid, the expected number of workers is running
(ready, no zombies), the load goes on, fresh requests succeed, TERM exits 0, and no process of
the master's session is left.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from .conftest import Server

DEFAULT_SEEDS = (1, 2, 3)
CLIENTS = 4
CLIENT_TIMEOUT = 15.0  # a socket operation slower than this is a lost request
GAP_MAX = 0.3  # random pause before each action
EXTRA_KILLS = 2  # SIGKILL is in the 1..SIGRTMAX sweep; these are more of it
MAX_WORKERS = 4  # TTIN at this count becomes TTOU
YOUNG_DEATH = 5.0  # master/slots.py: a worker dying sooner counts toward the crash back-off
YOUNG_BUDGET = 3  # quick deaths in a row per slot (back-off 0.5, 1, 2 s; the 4th would be 4 s)
ACK_TIMEOUT = 30.0  # the master must log its answer to HUP/USR2/TTIN/TTOU within this
TARGET_TIMEOUT = 40.0  # a ready worker to signal must turn up within this
SETTLE_TIMEOUT = 45.0  # the expected workers must be serving within this after the chaos
KILLED_SLACK = 0.5  # a failure is noticed after the kill that caused it; this is clock slack
RETIRE_SLACK = 12.0  # a retiring worker leaves within --graceful-timeout (10) of closing
MODULE = "chaos_deployed"  # the app module the test writes (and breaks) in tmp_path

BAD_CONFIGS = {
    "invalid UTF-8": b'app = "chaos_deployed:app"\n# caf\xe9 \xff\xfe\nworkers = 2\n',
    "a TOML syntax error": b"workers = = 2\n",
    "an unknown key": b'app = "chaos_deployed:app"\nwrokers = 2\n',
    "a bad value": b'app = "chaos_deployed:app"\nworkers = 0\n',
    "a missing file": None,
}

# Every master signal an operator or a supervisor sends, except those that stop it.
MASTER_PLAN = (["HUP good"] * 4 + ["HUP bad"] * 5 + ["USR2 good"] * 2 + ["USR2 broken code"] * 2
               + ["USR2 bad config"] + ["TTIN"] * 4 + ["TTOU"] * 4 + ["USR1"] * 2
               + ["CHLD", "WINCH", "URG", "CONT", "STOP"])
COUNTING = ("HUP", "USR2", "TTIN", "TTOU")  # answered by the master before the next of them
JOB_CONTROL = ("STOP", "CONT")  # sent to the master only when no counting signal is pending
ACK_PATTERNS = {
    "HUP": r"master: [^\n]*\bHUP\b[^\n]*",
    "TTIN": r"master: [^\n]*\bTTIN\b[^\n]*",
    "TTOU": r"master: [^\n]*\bTTOU\b[^\n]*",
    # The outcome, not "checking the new image": the next signal may then fall into the exec.
    "USR2": r"master: USR2: (?:re-executing|not re-executing|exec failed|cannot)[^\n]*",
}
STALE_KINDS = ("eof", "reset", "broken pipe")
# The master's guard logs a bug it survived ("bug while handling HUP"); a worker logs its own.
BUG_PATTERN = r"[^\n]*(?:bug while|worker crashed)[^\n]*"


def chaos_seeds() -> list[int]:
    one = os.environ.get("DUCK_CHAOS_SEED", "").strip()
    if one:
        return [int(one)]
    seeds = []
    for part in os.environ.get("DUCK_CHAOS_SEEDS", "").replace(" ", "").split(","):
        if "-" in part:
            first, last = part.split("-")
            seeds += range(int(first), int(last) + 1)
        elif part:
            seeds.append(int(part))
    return seeds or list(DEFAULT_SEEDS)


def signal_name(signum: int) -> str:
    if signum in (32, 33):
        return f"signal {signum} (reserved by glibc)"
    if signal.SIGRTMIN < signum < signal.SIGRTMAX:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
    return signal.Signals(signum).name


class ChaosFailure(AssertionError):
    pass


# --- the plan --------------------------------------------------------------------------------

@dataclass
class Action:
    what: str  # "worker" (signal a worker) or a MASTER_PLAN entry
    signum: int = 0  # for "worker"
    gap: float = 0.0  # pause before it
    pick: float = 0.0  # which of the eligible workers, or which variant
    hold: float = 0.0  # SIGSTOP: how long until SIGCONT

    def describe(self) -> str:
        return f"{signal_name(self.signum)} to a worker" if self.what == "worker" else self.what


def make_plan(seed: int) -> tuple[list[Action], random.Random]:
    """Everything the seed decides up front; the run draws nothing else at random."""
    rng = random.Random(seed)
    actions = [Action("worker", signum) for signum in range(1, signal.SIGRTMAX + 1)
               if signum < signal.SIGRTMIN or (signum - signal.SIGRTMIN) % 3 == seed % 3]
    actions += [Action("worker", signal.SIGKILL) for _ in range(EXTRA_KILLS)]
    actions += [Action(what) for what in MASTER_PLAN]
    rng.shuffle(actions)
    for action in actions:
        action.gap = rng.uniform(0.0, GAP_MAX)
        action.pick = rng.random()
        action.hold = rng.uniform(0.05, 0.3)
    return actions, rng


# --- the load --------------------------------------------------------------------------------

@dataclass
class Failure:
    """One request that did not get its 200."""

    request_id: str
    client: int
    connection: int  # the client's connection number
    fresh: bool  # the request was the first on its connection
    conn_pid: int | None  # the worker that answered earlier requests on this connection
    t_connect: float
    t_send: float
    t_fail: float
    kind: str  # eof, reset, broken pipe, timeout, connect: ..., status N, garbage: ...
    received: int  # bytes of a response received before it ended
    resp_pid: int | None = None  # from a response head that did arrive
    retried: bool = False
    verdict: str = ""

    def describe(self, t0: float) -> str:
        where = "new" if self.fresh else f"keep-alive (worker {self.conn_pid})"
        return (f"{self.t_send - t0:7.3f}-{self.t_fail - t0:7.3f} client {self.client} "
                f"conn {self.connection} {where} id {self.request_id}: {self.kind}, "
                f"{self.received} bytes{', retried' if self.retried else ''} -> {self.verdict}")


class ResponseCut(Exception):
    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


class Connection:
    def __init__(self, sock: socket.socket, number: int, t_connect: float):
        self.sock, self.number, self.t_connect = sock, number, t_connect
        self.pid: int | None = None
        self.served = 0
        self.received = 0  # bytes of the response being read
        self.resp_pid: int | None = None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def closed_by_server(self) -> bool | None:
        """Before reusing it: True if the server closed it while idle, False if it is open,
        None if the server sent something unasked for."""
        try:
            if not select.select([self.sock], [], [], 0)[0]:
                return False
            data = self.sock.recv(1, socket.MSG_PEEK)
        except OSError:
            return True
        return True if not data else None

    def exchange(self, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        """Send one request and read its response (Content-Length framing, which the app
        and the server's own error responses always use)."""
        self.received, self.resp_pid = 0, None
        self.sock.sendall(request)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += self._recv()
        head, _, body = buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers[b"content-length"])
            if b"x-pid" in headers:
                self.resp_pid = int(headers[b"x-pid"])
        except (IndexError, KeyError, ValueError):
            raise ResponseCut(f"garbage: {head[:80]!r}") from None
        while len(body) < length:
            body += self._recv()
        if len(body) > length:
            raise ResponseCut(f"garbage: {len(body) - length} bytes after the response")
        return status, headers, body

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ResponseCut("eof")
        self.received += len(data)
        return data


class LoadClient(threading.Thread):
    """Keep-alive GETs on one connection at a time, until stopped."""

    def __init__(self, chaos: Chaos, index: int):
        super().__init__(daemon=True, name=f"chaos-client-{index}")
        self.chaos, self.index = chaos, index
        self.rng = random.Random(f"{chaos.seed}:{index}")  # the request mix, not the timing
        self.sent = self.ok = self.stale_closes = 0
        self.failures: list[Failure] = []
        self.pids: set[int] = set()
        self._numbers = itertools.count(1)
        self._ids = itertools.count(1)

    def run(self) -> None:
        connection = None
        stopping = self.chaos.load_stopping
        while not stopping.is_set():
            if connection is not None:
                closed = connection.closed_by_server()
                if closed is None:
                    self.failures.append(self._failure(connection, "x", time.monotonic(),
                                                       "garbage: bytes nobody asked for"))
                if closed is not False:
                    self.stale_closes += closed is True
                    connection.close()
                    connection = None
            connection, failure = self.attempt(connection)
            if failure is not None and failure.received == 0 and failure.kind in STALE_KINDS:
                failure.retried = True  # what HTTP clients do for an idempotent request
                connection, _ = self.attempt(None)

    def attempt(self, connection: Connection | None) -> tuple[Connection | None, Failure | None]:
        """One request; returns the connection to go on with (None: closed) and the failure."""
        request_id = f"{self.index}-{next(self._ids)}"
        delay = self.rng.choice((0,) * 17 + (1, 5, 40))
        request = (f"GET /?id={request_id}&delay={delay} HTTP/1.1\r\nHost: chaos\r\n"
                   f"User-Agent: chaos-client\r\n\r\n").encode()
        t_send = time.monotonic()
        self.sent += 1
        if connection is None:
            try:
                sock = socket.create_connection(("127.0.0.1", self.chaos.port),
                                                timeout=CLIENT_TIMEOUT)
            except OSError as exc:
                failure = Failure(request_id, self.index, 0, True, None, t_send, t_send,
                                  time.monotonic(), f"connect: {exc!r}", 0)
                self.failures.append(failure)
                return None, failure
            connection = Connection(sock, next(self._numbers), t_send)
        try:
            status, headers, body = connection.exchange(request)
        except ResponseCut as exc:
            kind = exc.kind
        except BrokenPipeError:
            kind = "broken pipe"
        except ConnectionResetError:
            kind = "reset"
        except TimeoutError:
            kind = "timeout"
        except OSError as exc:
            kind = repr(exc)
        else:
            if status == 200 and connection.resp_pid is not None:
                self.ok += 1
                self.pids.add(connection.resp_pid)
                connection.pid = connection.resp_pid
                connection.served += 1
                if headers.get(b"connection", b"").lower() == b"close":
                    connection.close()  # a retiring worker's last response
                    return None, None
                return connection, None
            kind = f"status {status}: {body[:60]!r}"
        failure = self._failure(connection, request_id, t_send, kind)
        connection.close()
        return None, failure

    def _failure(self, connection: Connection, request_id: str, t_send: float,
                 kind: str) -> Failure:
        failure = Failure(request_id, self.index, connection.number, connection.served == 0,
                          connection.pid, connection.t_connect, t_send, time.monotonic(), kind,
                          connection.received, connection.resp_pid)
        self.failures.append(failure)
        return failure


# --- the run ---------------------------------------------------------------------------------

@dataclass
class WorkerView:
    pid: int
    slot: int
    started: float  # monotonic


@dataclass
class Pending:
    """A counting signal sent to the master, waiting for its answer in the log."""

    name: str
    pattern: re.Pattern
    offset: int
    sent: float
    on_answer: Callable[[str], None] | None = None


@dataclass
class Chaos:
    """One seeded run: the server, the load, what was done and what the server said."""

    seed: int
    tmp_path: Path
    config_workers: int
    server: Server | None = None
    t0: float = field(default_factory=time.monotonic)
    log_text: str = ""
    log_offset: int = 0  # bytes of the log file read so far
    booted: set[int] = field(default_factory=set)
    ready: set[int] = field(default_factory=set)
    workers: dict[int, WorkerView] = field(default_factory=dict)  # the live ones, by pid
    vanished_at: dict[int, float] = field(default_factory=dict)
    stopped: set[int] = field(default_factory=set)  # SIGSTOPped by us, until our SIGCONT
    watched: dict[int, tuple[int, float, float]] = field(default_factory=dict)  # signalled
    sent: dict[int, list[tuple[float, int]]] = field(default_factory=dict)  # (when, signum)
    quick_deaths: dict[int, int] = field(default_factory=dict)  # by slot
    deferred: list[tuple[float, str, Callable[[], None]]] = field(default_factory=list)
    pending: Pending | None = None
    journal: list[str] = field(default_factory=list)
    expected: int = 0
    version: int = 1
    upgrades: int = 0  # USR2 that re-executed
    worker_signals: int = 0
    load_stopping: threading.Event = field(default_factory=threading.Event)
    clients: list[LoadClient] = field(default_factory=list)
    _last_view: float = 0.0

    @property
    def port(self) -> int:
        return self.server.port

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, text: str, pid: int | None = None) -> None:
        target = f" [pid {pid}]" if pid else ""
        self.journal.append(f"{self.now():8.3f}  {text}{target}")

    # --- files the master reads ---

    @property
    def config_path(self) -> Path:
        return self.tmp_path / "duck.toml"

    @property
    def record_path(self) -> Path:
        return self.tmp_path / "requests.record"

    def write(self, path: Path, data: bytes | None) -> None:
        """Replace the file atomically, as a deploy tool does (None: remove it)."""
        if data is None:
            path.unlink(missing_ok=True)
            return
        staging = path.with_name(f".{path.name}.tmp")
        staging.write_bytes(data)
        os.replace(staging, path)

    def good_config(self, workers: int) -> bytes:
        return (f'app = "{MODULE}:app"\nworkers = {workers}\nkeep-alive = 60\n'
                f"graceful-timeout = 10\n").encode()

    def write_code(self, broken: bool = False) -> None:
        source = (f'raise RuntimeError("chaos seed {self.seed}: a broken release")\n' if broken
                  else f"from tests.apps.chaos_app import make_app\n\n"
                       f'app = make_app("v{self.version}")\n')
        self.write(self.tmp_path / f"{MODULE}.py", source.encode())

    # --- observing ---

    def poll(self) -> None:
        """Read the log, look at the process tree, run what is due; fail if the master died."""
        self.read_log()
        now = time.monotonic()
        for item in sorted(self.deferred, key=lambda item: item[0]):
            if item[0] <= now:
                self.deferred.remove(item)
                item[2]()
        if now - self._last_view >= 0.05:
            self._last_view = now
            self.view_workers()
        if self.server.proc.poll() is not None:
            raise ChaosFailure(f"the master died (exit code {self.server.proc.returncode})")
        pending = self.pending
        if pending is not None:
            match = pending.pattern.search(self.log_text, pending.offset)
            if match:
                self.pending = None
                self.note(f"  master answered {pending.name} after "
                          f"{now - pending.sent:.2f} s: {match.group(0)[8:]}")
                if pending.on_answer is not None:
                    pending.on_answer(match.group(0))
            elif now - pending.sent > ACK_TIMEOUT:
                raise ChaosFailure(f"the master did not answer {pending.name} (sent at "
                                   f"{pending.sent - self.t0:.3f}) within {ACK_TIMEOUT:g} s")

    def read_log(self) -> None:
        with open(self.server.log_path, "rb") as file:
            file.seek(self.log_offset)
            data = file.read()
        complete = data.rfind(b"\n") + 1  # whole lines only
        if not complete:
            return
        self.log_offset += complete
        new = data[:complete].decode("utf-8", "replace")
        self.log_text += new
        for pid in re.findall(r"booting worker \d+ \(pid (\d+)\)", new):
            self.booted.add(int(pid))
            self.server.known_pids.add(int(pid))
        self.ready.update(int(pid) for pid in re.findall(r"worker \d+ \(pid (\d+)\) ready", new))
        bug = re.search(BUG_PATTERN, new)
        if bug:
            raise ChaosFailure(f"the server logged a bug: {new[bug.start():][:3000]}")

    def view_workers(self) -> None:
        now = time.monotonic()
        live = {}
        try:
            children = psutil.Process(self.server.pid).children()
        except psutil.NoSuchProcess:
            children = []
        for child in children:
            known = self.workers.get(child.pid)
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                if known is None:
                    title = " ".join(child.cmdline())
                    match = re.match(r"duck-prefork: worker (\d+)", title)
                    if not match:
                        continue  # just forked (the master's title still), or USR2's check
                    known = WorkerView(child.pid, int(match.group(1)),
                                       now - max(0.0, time.time() - child.create_time()))
                    self.server.known_pids.add(child.pid)
            except psutil.Error:
                continue
            live[child.pid] = known
        for pid in self.workers:
            if pid not in live:
                self.vanished_at[pid] = now
                self.stopped.discard(pid)
                if pid in self.watched:
                    slot, age, sent = self.watched.pop(pid)
                    if now - sent < 3.0:  # our signal ended it: the master counts this death
                        quick = age < YOUNG_DEATH + 0.5
                        self.quick_deaths[slot] = self.quick_deaths.get(slot, 0) + 1 if quick \
                            else 0
        self.workers = live

    def pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            self.poll()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.01, left))

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise ChaosFailure(f"timed out after {timeout:g} s waiting for {what}")
            self.pause(0.02)

    def serving(self) -> list[WorkerView]:
        return sorted((w for w in self.workers.values() if w.pid in self.ready),
                      key=lambda w: (w.slot, w.pid))

    # --- acting ---

    def signal_worker(self, action: Action) -> None:
        def eligible() -> list[WorkerView]:
            # An old worker's death resets its slot's back-off: those first.
            now = time.monotonic()
            ready = [w for w in self.serving() if w.pid not in self.stopped]
            return [w for w in ready if now - w.started >= YOUNG_DEATH + 0.5] or \
                [w for w in ready if self.quick_deaths.get(w.slot, 0) < YOUNG_BUDGET]

        while True:
            self.wait(lambda: eligible(), TARGET_TIMEOUT, "a ready worker to signal")
            candidates = eligible()
            target = candidates[int(action.pick * len(candidates))]
            age = time.monotonic() - target.started
            try:
                os.kill(target.pid, action.signum)
            except ProcessLookupError:
                self.pause(0.02)  # it left meanwhile: pick again
                continue
            break
        self.worker_signals += 1
        self.watched[target.pid] = (target.slot, age, time.monotonic())
        self.sent.setdefault(target.pid, []).append((time.monotonic(), action.signum))
        self.note(f"{signal_name(action.signum)} to worker {target.slot} (age {age:.1f} s)",
                  target.pid)
        if action.signum in (signal.SIGSTOP, signal.SIGTSTP):
            self.stopped.add(target.pid)
            self.defer(action.hold, f"SIGCONT to worker {target.slot}", target.pid)

    def defer(self, delay: float, text: str, pid: int) -> None:
        def cont() -> None:
            try:
                os.kill(pid, signal.SIGCONT)
                self.note(text, pid)
            except ProcessLookupError:
                self.note(f"{text}: already gone", pid)
            self.stopped.discard(pid)

        self.deferred.append((time.monotonic() + delay, text, cont))

    def signal_master(self, action: Action, bad_configs: itertools.cycle) -> None:
        what = action.what
        name = what.split()[0]
        if name in COUNTING + JOB_CONTROL:
            # SIGCONT discards the stop-class signals (TTIN, TTOU) still pending on the
            # process (POSIX): a TTOU sent to a stopped master, or delivered after a STOP and
            # before a CONT, is lost by the kernel, not by the master. So the two don't mix.
            self.wait(lambda: self.pending is None and self.server.pid not in self.stopped,
                      ACK_TIMEOUT + 1, "the master's answer")
        if name == "TTIN" and self.expected >= MAX_WORKERS:
            what = name = "TTOU"  # keep the count within 1..MAX_WORKERS
        on_answer = None
        detail = ""
        if what == "HUP good":
            self.config_workers = 2 + int(action.pick * 2)
            self.write(self.config_path, self.good_config(self.config_workers))
            self.expected = self.config_workers
            detail = f" ({self.config_workers} workers)"
        elif what == "HUP bad":
            bad = next(bad_configs)
            self.write(self.config_path, BAD_CONFIGS[bad])
            on_answer = self.restore_config
            detail = f" ({bad})"
        elif what == "USR2 good":
            self.version += 1
            self.write_code()
            self.expected = self.config_workers

            def on_answer(line: str) -> None:
                if "USR2: re-executing" not in line:
                    raise ChaosFailure(f"USR2 with good code and config was refused: {line}")
                self.upgrades += 1
                self.quick_deaths.clear()  # the new image starts its slots' back-off afresh

            detail = f" (v{self.version})"
        elif what == "USR2 broken code":
            self.write_code(broken=True)

            def on_answer(line: str) -> None:
                self.write_code()
                self.note(f"  good code v{self.version} back")
                if "USR2: re-executing" in line:
                    raise ChaosFailure(f"USR2 re-executed with code that does not import: {line}")
        elif what == "USR2 bad config":
            bad = next(bad_configs)
            self.write(self.config_path, BAD_CONFIGS[bad])

            def on_answer(line: str) -> None:
                self.restore_config(line)
                if "USR2: re-executing" in line:
                    raise ChaosFailure(f"USR2 re-executed with a broken config: {line}")

            detail = f" ({bad})"
        elif name == "TTIN":
            self.expected += 1
        elif name == "TTOU":
            self.expected = max(1, self.expected - 1)
        signum = signal.SIGSTOP if name == "STOP" else getattr(signal, f"SIG{name}")
        offset = len(self.log_text)
        os.kill(self.server.pid, signum)
        self.note(f"{what}{detail} to the master; expecting {self.expected} workers",
                  self.server.pid)
        if name == "STOP":
            self.stopped.add(self.server.pid)
            self.defer(action.hold, "SIGCONT to the master", self.server.pid)
        if name in COUNTING:
            self.pending = Pending(name, re.compile(ACK_PATTERNS[name]), offset, time.monotonic(),
                                   on_answer)

    def restore_config(self, line: str = "") -> None:
        if "HUP: reloading" in line:
            raise ChaosFailure(f"HUP applied a broken config: {line}")
        self.write(self.config_path, self.good_config(self.config_workers))
        self.note("  good config back")

    # --- the story ---

    def run(self, plan: list[Action], rng: random.Random) -> None:
        order = list(BAD_CONFIGS)
        rng.shuffle(order)
        bad_configs = itertools.cycle(order)
        self.note(f"start: {len(plan)} actions; master pid {self.server.pid}; "
                  f"{self.expected} workers", self.server.pid)
        for action in plan:
            self.pause(action.gap)
            if action.what == "worker":
                self.signal_worker(action)
            else:
                self.signal_master(action, bad_configs)
        self.wait(lambda: self.pending is None and not self.deferred, ACK_TIMEOUT + 1,
                  "the last answer and SIGCONT")
        self.note(f"chaos over; expecting {self.expected} workers")
        self.pause(1.0)  # the last signals take effect

    def settle(self) -> None:
        since = [0.0, frozenset()]  # the same settled workers since when

        def settled() -> bool:
            try:
                children = psutil.Process(self.server.pid).children()
                zombies = [c for c in children if c.status() == psutil.STATUS_ZOMBIE]
            except psutil.Error:
                return False
            pids = frozenset(self.workers)
            if zombies or len(pids) != self.expected or not pids <= self.ready:
                since[1] = frozenset()
                return False
            if pids != since[1]:
                since[:] = [time.monotonic(), pids]
            return time.monotonic() - since[0] >= 1.0

        try:
            self.wait(settled, SETTLE_TIMEOUT, f"{self.expected} ready workers")
        except ChaosFailure as exc:
            found = ", ".join(f"worker {w.slot} pid {w.pid}"
                              f"{'' if w.pid in self.ready else ' (not ready)'}"
                              for w in sorted(self.workers.values(), key=lambda w: w.slot))
            raise ChaosFailure(f"{exc}; running: {found or 'none'}") from None
        self.note(f"settled: {self.expected} workers ready", self.server.pid)
        served = sum(client.ok for client in self.clients)
        self.wait(lambda: sum(client.ok for client in self.clients) >= served + 50, 20,
                  "50 more requests answered after settling")

    def stop_load(self) -> None:
        self.load_stopping.set()
        for client in self.clients:
            client.join(CLIENT_TIMEOUT * 2 + 5)

    def fates(self) -> dict[int, str]:
        """How the master says each worker ended: "killed by SIG..." or "exited with code N"."""
        fates = {}
        for match in re.finditer(r"\(pid (\d+)\)[^\n]*?\b(killed by (?:signal \d+|[^\s;,]+)"
                                 r"|exited with code -?\d+)", self.log_text):
            fates.setdefault(int(match.group(1)), match.group(2))
        return fates

    def killed_at(self, pid: int | None, fates: dict[int, str]) -> float | None:
        """When we sent the signal that the master says killed `pid` (None: not killed by one
        of ours). Our clock at os.kill, not when we noticed: a busy box delays the noticing."""
        name = fates.get(pid, "").removeprefix("killed by ")
        if not name or name.startswith("exited"):
            return None
        if name.startswith("signal "):
            signum = int(name.split()[1])
        elif name.startswith("SIGRTMIN+"):
            signum = signal.SIGRTMIN + int(name[len("SIGRTMIN+"):])
        else:
            signum = getattr(signal, name, None)
        times = [t for t, sent in self.sent.get(pid, ()) if sent == signum]
        return times[0] if times else None

    def judge(self, failures: list[Failure]) -> list[Failure]:
        """Give each failure its verdict; returns the lost ones."""
        ran = {}
        if self.record_path.exists():
            for line in self.record_path.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit():
                    ran[parts[0]] = int(parts[1])
        fates = self.fates()
        kills = {pid: t for pid in self.sent if (t := self.killed_at(pid, fates)) is not None}

        def killed_between(pid: int | None, t_from: float, t_to: float) -> bool:
            return pid in kills and t_from <= kills[pid] <= t_to + KILLED_SLACK

        lost = []
        for failure in failures:
            ran_on = ran.get(failure.request_id)
            pid = failure.resp_pid or ran_on or failure.conn_pid
            left = self.vanished_at.get(pid)
            if failure.kind.startswith(("connect", "status", "garbage", "timeout")):
                failure.verdict = "LOST"
            elif killed_between(pid, failure.t_connect, failure.t_fail):
                failure.verdict = f"ok: worker {pid} {fates[pid]}"
            elif failure.received == 0 and ran_on is None and failure.kind in STALE_KINDS \
                    and left is not None \
                    and failure.t_connect <= left <= failure.t_fail + RETIRE_SLACK:
                failure.verdict = f"ok: stale keep-alive, worker {pid} {fates.get(pid, 'left')}"
            elif failure.received == 0 and ran_on is None and pid is None and any(
                    killed_between(other, failure.t_connect - 0.2, failure.t_fail)
                    for other in kills):
                failure.verdict = "ok: new connection dropped while a worker was killed"
            else:
                failure.verdict = "LOST" + (f" (the app ran it in pid {ran_on})" if ran_on else "")
            if failure.verdict.startswith("LOST"):
                lost.append(failure)
        return lost

    def play(self, plan: list[Action], rng: random.Random) -> str:
        """The whole test; returns its one-line summary, raises AssertionError."""
        server = self.server
        started = time.monotonic()
        self.expected = self.config_workers
        server.wait_ready()
        self.t0 = time.monotonic()
        self.clients = [LoadClient(self, index) for index in range(CLIENTS)]
        for client in self.clients:
            client.start()
        self.run(plan, rng)
        chaos_time = time.monotonic() - self.t0
        self.settle()
        self.stop_load()
        self.pause(0.1)
        for _ in range(10):
            status, headers, body = server.request("GET", "/?id=final")
            assert status == 200 and int(headers["x-pid"]) in self.workers, (status, body)
        assert server.proc.poll() is None and "duck-prefork: master" in " ".join(
            psutil.Process(server.pid).cmdline()), "the master is not the process we started"
        self.read_log()
        upgrades = len(re.findall(rf"re-executed master pid {server.pid}\b", self.log_text))
        assert upgrades == self.upgrades, (
            f"USR2 re-executed the master {self.upgrades} times, but the new image logged "
            f"'re-executed master pid {server.pid}' {upgrades} times (it did not adopt the "
            f"running workers as an upgrade: a fresh start instead?)")
        self.note("TERM to the master", server.pid)
        code = server.stop(signal.SIGTERM, timeout=60)
        self.read_log()
        assert code == 0, f"TERM: exit code {code}"
        deadline = time.monotonic() + 10
        while (left := session_pids(server.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"processes of the master's session outlived it: {left}"
        failures = [f for client in self.clients for f in client.failures]
        lost = self.judge(failures)
        assert not lost, f"{len(lost)} requests lost"
        killed = sum(1 for fate in self.fates().values() if fate.startswith("killed"))
        return (f"chaos seed={self.seed}: {time.monotonic() - started:.1f} s (chaos "
                f"{chaos_time:.1f} s), {len(plan)} actions, {self.worker_signals} worker "
                f"signals, {killed} workers killed, {self.upgrades} USR2 upgrades, "
                f"{self.expected} workers at the end; requests: "
                f"{sum(c.sent for c in self.clients)} sent, {sum(c.ok for c in self.clients)} "
                f"ok, {len(failures)} failed ({sum(f.retried for f in failures)} retried), "
                f"0 lost")

    def report(self, problem: BaseException) -> str:
        self.load_stopping.set()
        for pid in list(self.stopped):
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        self.stop_load()
        try:
            self.read_log()
        except OSError:
            pass
        failures = [f for client in self.clients for f in client.failures]
        if not any(f.verdict for f in failures):
            self.judge(failures)
        lost = [f for f in failures if f.verdict.startswith("LOST")]
        return "\n".join([
            f"chaos seed={self.seed} FAILED at {self.now():.3f} s: {problem}",
            f"replay: DUCK_CHAOS_SEED={self.seed} bin/test tests/integration/test_chaos.py -s",
            f"requests: {sum(c.sent for c in self.clients)} sent, "
            f"{sum(c.ok for c in self.clients)} ok, {len(failures)} failed, {len(lost)} lost",
            "--- actions (seconds since the load started) ---", *self.journal,
            "--- failed requests (the lost ones first) ---",
            *(f.describe(self.t0) for f in (lost + [f for f in failures if f not in lost])[:60]),
            "--- server log (tail) ---", *self.log_text.splitlines()[-80:]])

    def kill_session(self) -> None:
        """After a failure: nothing of the tree may outlive the test."""
        for pid in session_pids(self.server.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.server.proc.poll() is None:
            self.server.proc.wait(10)
        deadline = time.monotonic() + 10
        while session_pids(self.server.pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def session_pids(sid: int) -> list[int]:
    """Every process of the master's session: the master, its workers, USR2's checks, and
    whatever they left behind (workers keep the session when their master is gone)."""
    pids = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == sid:
                pids.append(pid)
        except OSError:
            pass
    return pids


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", chaos_seeds(), ids=lambda seed: f"seed={seed}")
def test_chaos(seed, tmp_path, start_server):
    plan, rng = make_plan(seed)
    chaos = Chaos(seed, tmp_path, config_workers=rng.choice((2, 3)))
    chaos.write(chaos.config_path, chaos.good_config(chaos.config_workers))
    chaos.write_code()
    chaos.server = start_server("--config", str(chaos.config_path), "--chdir", str(tmp_path),
                                env={"DUCK_CHAOS_RECORD": str(chaos.record_path),
                                     "PYTHONDONTWRITEBYTECODE": "1"}, ready=False)
    try:
        summary = chaos.play(plan, rng)
    except AssertionError as exc:
        report = chaos.report(exc)
        chaos.kill_session()
        pytest.fail(report, pytrace=False)
    if os.environ.get("DUCK_CHAOS_VERBOSE"):
        print("\n".join(chaos.journal))
    print(summary)
