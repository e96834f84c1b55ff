"""bench/run's driver: duck-prefork against its peers, one worker each, in one run.

Every run starts a fresh server pinned to CPU 1 (taskset), waits until it answers correctly,
warms it up with wrk (pinned to CPU 0) for WARMUP, lets it idle for a second and reads the
unique memory (USS) of its worker process, then measures with `wrk -t1 -c64 -dDURATION
--latency`. Rounds run every server once, in an order that rotates from round to round. The
report gives medians, the ratios of duck-prefork to every peer, and the issue's targets.

Besides wrk's numbers, each run records "other CPU %": the CPU that processes other than the
server and wrk used meanwhile (100 = one core). On a shared machine, runs where it is high are
noise; quote figures from a quiet machine.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil
from benchlib import DUCK, HERE, duck_has_option, wrk_errors, wrk_requests_per_second

SERVER_CPU, WRK_CPU = 1, 0
CONNECTIONS = 64
VENV_BIN = Path(sys.executable).parent
POST_BODY = b"x" * 4096  # what post4k.lua sends
MODES = {  # mode -> (app module in bench/, wrk script, what it measures)
    "get": ("hello", None, "GET hello world"),
    "post": ("echo", HERE / "post4k.lua", "POST 4 KiB echo"),
    "tls": ("hello", None, "GET hello world over TLS, keep-alive"),
    "tls-close": ("hello", None, "GET hello world over TLS, `Connection: close`: one TLS "
                                 "handshake per request"),
}
TLS_MODES = ("tls", "tls-close")
DEFAULT_SERVERS = ("duck duck-h11 uvicorn-h11 uvicorn-httptools gunicorn-asgi gunicorn-asgi-h1c "
                   "granian")
PEER_HELP = {
    "uvicorn-h11": "uvicorn --http h11 --loop uvloop",
    "uvicorn-httptools": "uvicorn --http httptools --loop uvloop",
    "gunicorn-asgi": "gunicorn -k asgi (its own ASGI worker), pure-Python parser",
    "gunicorn-asgi-h1c": "gunicorn -k asgi, gunicorn_h1c (picohttpparser) parser",
    "granian": "granian --interface asgi, 1 runtime thread",
}
VERSIONS = ("duck-prefork", "uvloop", "h11", "httptools", "uvicorn", "gunicorn", "gunicorn_h1c",
            "granian", "psutil")


def server_argv(name: str, app: str, port: int,
                tls: tuple[str, str] | None = None) -> list[str]:
    """The command line of server NAME serving bench/APP.py:app on 127.0.0.1:PORT, 1 worker;
    with `tls` (certificate, key), over TLS with that certificate."""
    duck_args = shlex.split(os.environ.get("DUCK_ARGS", ""))
    cert, key = tls or ("", "")
    if name == "duck":
        return [str(DUCK), f"{app}:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                *duck_args, *(["--certfile", cert, "--keyfile", key] if tls else [])]
    if name in ("duck-log", "duck-log-json"):  # the access log on, to stdout (the run's log)
        return [*server_argv("duck", app, port, tls), "--access-logfile", "-",
                *(["--access-log-json"] if name == "duck-log-json" else [])]
    if name == "uvicorn-httptools-log":  # its access log on (INFO: --log-level info)
        swap = {"--no-access-log": "--access-log", "warning": "info"}
        return [swap.get(arg, arg) for arg in server_argv("uvicorn-httptools", app, port, tls)]
    if name == "duck-h11":
        return [*server_argv("duck", app, port, tls),
                *shlex.split(os.environ.get("DUCK_H11_ARGS", "--http h11"))]
    if name.startswith("uvicorn-"):
        return [str(VENV_BIN / "uvicorn"), f"{app}:app", "--host", "127.0.0.1", "--port",
                str(port), "--http", name.removeprefix("uvicorn-"), "--loop", "uvloop",
                "--lifespan", "on", "--workers", "1", "--no-access-log", "--log-level",
                "warning", *(["--ssl-certfile", cert, "--ssl-keyfile", key] if tls else [])]
    if name.startswith("gunicorn-asgi"):
        parser = "fast" if name.endswith("-h1c") else "python"
        return [str(VENV_BIN / "gunicorn"), "-k", "asgi", "--asgi-loop", "uvloop",
                "--http-parser", parser, "-w", "1", "-b", f"127.0.0.1:{port}",
                "--no-control-socket", "--log-level", "warning",
                *(["--certfile", cert, "--keyfile", key] if tls else []), f"{app}:app"]
    if name == "granian":
        return [str(VENV_BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1", "--runtime-threads", "1", "--loop",
                "uvloop", "--no-access-log", "--log-level", "warning",
                *(["--ssl-certificate", cert, "--ssl-keyfile", key, "--ssl-protocol-min",
                   "tls1.2"] if tls else []), f"{app}:app"]
    raise SystemExit(f"bench/run: unknown server {name!r} (known: {DEFAULT_SERVERS})")


def certificate(work: Path) -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 (made once per run, with openssl;
    PKCS#8 key, which granian wants), for the TLS modes."""
    cert, key = work / "cert.pem", work / "key.pem"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "7", "-subj", "/CN=127.0.0.1", "-addext",
                        "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return str(cert), str(key)


# --- one run ---------------------------------------------------------------------------------

@dataclass
class Run:
    server: str
    mode: str
    rps: float
    p50: float  # ms
    p99: float  # ms
    errors: int
    uss_mib: float  # per worker, idle after the warm-up
    other_cpu: float  # % of one core used by everything else during the measured run
    # The server's CPU time (user + system, all its processes) per request, in microseconds:
    # what a loaded machine moves least (bench/access_log.py reports it).
    cpu_us: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str, mode: str) -> bool:
    body = POST_BODY if mode == "post" else None
    request = urllib.request.Request(url, data=body, headers={
        "content-type": "application/octet-stream"} if body else {})
    context = ssl._create_unverified_context() if url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            data = response.read()
    except OSError:
        return False
    return data == (POST_BODY if mode == "post" else b"Hello, world!")


HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.semaphore_tracker")


def worker_processes(root: psutil.Process) -> list[psutil.Process]:
    """The processes that serve: the descendants other than multiprocessing's helpers, or the
    root itself where it serves alone (uvicorn with 1 worker)."""
    workers = []
    for child in root.children(recursive=True):
        try:
            if not any(helper in " ".join(child.cmdline()) for helper in HELPERS):
                workers.append(child)
        except psutil.Error:
            pass
    return workers or [root]


def tree_cpu(root: psutil.Process) -> float:
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def machine_busy() -> float:
    """CPU seconds all CPUs spent busy since boot (user nice system irq softirq: loopback
    traffic's softirq work is accounted to the processes it runs in)."""
    with open("/proc/stat") as stat:
        ticks = [int(n) for n in stat.readline().split()[1:]]
    return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, duration: str, script: Path | None, log: Path,
        extra: tuple[str, ...] = ()) -> tuple[str, float]:
    """wrk pinned to its CPU; returns its report and the CPU seconds it used."""
    argv = ["taskset", "-c", str(WRK_CPU), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}",
            "--latency", *(["-s", str(script)] if script else []), *extra, url]
    with open(log, "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    report = log.read_text()
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {report.strip()}")
    return report, usage.ru_utime + usage.ru_stime


def wrk_requests(report: str) -> int:
    match = re.search(r"^\s*(\d+) requests in", report, re.M)
    if not match:
        raise RuntimeError(f"no request count in the wrk report:\n{report}")
    return int(match[1])


def latency_ms(report: str, percentile: int) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\b", report, re.M)
    if not match:
        raise RuntimeError(f"no {percentile}% latency in the wrk report:\n{report}")
    return float(match[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]


def stop_tree(root: psutil.Process, timeout: float = 10.0) -> None:
    """TERM the server; SIGKILL what is left of its tree after `timeout`. psutil checks each
    process's start time, so a PID reused by someone else is never signalled."""
    try:
        tree = [root, *root.children(recursive=True)]
        root.send_signal(signal.SIGTERM)
    except psutil.NoSuchProcess:
        return
    _, alive = psutil.wait_procs(tree, timeout)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, 5)


def run_once(server: str, mode: str, work: Path, tag: str) -> Run:
    app, script, _ = MODES[mode]
    port = free_port()
    tls = certificate(work) if mode in TLS_MODES else None
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
    extra = ("-H", "Connection: close") if mode == "tls-close" else ()
    argv = ["taskset", "-c", str(SERVER_CPU), *server_argv(server, app, port, tls)]
    log = work / f"{tag}.log"
    with open(log, "w") as out:
        popen = subprocess.Popen(argv, cwd=HERE, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    root = psutil.Process(popen.pid)
    try:
        deadline = time.monotonic() + float(os.environ.get("READY_TIMEOUT", "30"))
        while not answers(url, mode):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server} did not start (log: {log}):\n"
                                   f"{log.read_text()[-2000:]}")
            time.sleep(0.1)
        wrk(url, os.environ.get("WARMUP", "2s"), script, work / f"{tag}.warmup", extra)
        time.sleep(1.0)
        uss = statistics.mean(p.memory_full_info().uss for p in worker_processes(root))
        busy0, server0 = machine_busy(), tree_cpu(root)
        start = time.monotonic()
        report, wrk_cpu = wrk(url, os.environ.get("DURATION", "10s"), script,
                              work / f"{tag}.wrk", extra)
        elapsed = time.monotonic() - start
        server_cpu = tree_cpu(root) - server0
        other = (machine_busy() - busy0) - server_cpu - wrk_cpu
    finally:
        stop_tree(root)
        popen.wait()
    return Run(server, mode, wrk_requests_per_second(report), latency_ms(report, 50),
               latency_ms(report, 99), wrk_errors(report), uss / 2**20,
               max(0.0, other / elapsed * 100), server_cpu / wrk_requests(report) * 1e6)


# --- the report ------------------------------------------------------------------------------

@dataclass
class Summary:
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(run, attr) for run in self.runs)


def ratio(results: dict, mode: str, ours: str, peer: str, attr: str = "rps") -> float | None:
    if (ours, mode) not in results or (peer, mode) not in results:
        return None
    return results[ours, mode].median(attr) / results[peer, mode].median(attr)


def report(results: dict[tuple[str, str], Summary], servers: list[str], modes: list[str],
           h11_server: str, header: list[str], notes: list[str]) -> str:
    lines = ["## duck-prefork and its peers, 1 worker each", "", *header, ""]
    for mode in modes:
        lines += [f"### {MODES[mode][2]} (`wrk -t1 -c{CONNECTIONS}`, medians)", "",
                  "| server | req/s | p50 ms | p99 ms | errors | idle USS/worker MiB "
                  "| other CPU % | req/s of each run |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for server in servers:
            summary = results.get((server, mode))
            if summary is None:
                continue
            each = ", ".join(f"{run.rps:,.0f}" for run in summary.runs)
            lines.append(
                f"| {server} | {summary.median('rps'):,.0f} | {summary.median('p50'):.2f} "
                f"| {summary.median('p99'):.2f} | {sum(r.errors for r in summary.runs)} "
                f"| {summary.median('uss_mib'):.1f} | {summary.median('other_cpu'):.0f} "
                f"| {each} |")
        lines.append("")

    ours = [s for s in ("duck", "duck-h11") if s in servers]
    peers = [s for s in servers if s not in ours]
    rows = []
    for mode in modes:
        for server in ours:
            cells = [ratio(results, mode, server, peer) for peer in peers]
            if any(cell is not None for cell in cells):
                rows.append(f"| {server} {mode.upper()} | " + " | ".join(
                    "n/a" if cell is None else f"{cell:.2f}x" for cell in cells) + " |")
    if rows:
        lines += ["### duck-prefork / peer, median req/s", "",
                  "| | " + " | ".join(peers) + " |", "|---|" + "---:|" * len(peers), *rows, ""]

    lines += ["### Targets (issue 7)", "", "| target | measured | met |", "|---|---:|---|"]

    def target(text: str, value: float | None, goal: float, unit: str = "x",
               higher_is_better: bool = True) -> None:
        if value is None:
            lines.append(f"| {text} | not measured | |")
            return
        met = value >= goal if higher_is_better else value <= goal
        lines.append(f"| {text} | {value:.2f}{unit} | {'yes' if met else '**no**'} |")

    target("GET: duck (default parser) >= 1.0x granian", ratio(results, "get", "duck", "granian"),
           1.0)
    target("GET: duck >= 1.25x uvicorn-httptools",
           ratio(results, "get", "duck", "uvicorn-httptools"), 1.25)
    target("GET: duck p99 / uvicorn-httptools p99 <= 1.0",
           ratio(results, "get", "duck", "uvicorn-httptools", "p99"), 1.0,
           higher_is_better=False)
    target(f"GET: {h11_server} (h11) >= 1.3x uvicorn-h11",
           ratio(results, "get", h11_server, "uvicorn-h11"), 1.3)
    target("POST 4 KiB: duck >= 1.0x uvicorn-httptools",
           ratio(results, "post", "duck", "uvicorn-httptools"), 1.0)
    uss = results.get(("duck", "get")) or results.get(("duck", "post"))
    target("idle USS per duck worker <= 10 MiB", uss.median("uss_mib") if uss else None, 10.0,
           " MiB", higher_is_better=False)
    if any(mode in TLS_MODES for mode in modes):
        lines += ["", "### Targets (issue 15, TLS)", "", "| target | measured | met |",
                  "|---|---:|---|"]
        tls_over_plain = None
        if ("duck", "tls") in results and ("duck", "get") in results:
            tls_over_plain = results["duck", "tls"].median("rps") / \
                results["duck", "get"].median("rps")
        target("TLS keep-alive: duck >= 0.6x duck plaintext GET", tls_over_plain, 0.6)
        target("TLS keep-alive: duck >= 1.2x uvicorn-httptools TLS",
               ratio(results, "tls", "duck", "uvicorn-httptools"), 1.2)
        target("TLS keep-alive: duck >= 1.0x granian TLS",
               ratio(results, "tls", "duck", "granian"), 1.0)
        for peer in ("uvicorn-httptools", "granian"):
            value = ratio(results, "tls-close", "duck", peer)
            lines.append(f"| TLS handshakes/s (Connection: close): duck / {peer} | "
                         f"{'not measured' if value is None else f'{value:.2f}x'} | |")
    lines += ["", "A SIGKILLed worker replaced and accepting in < 100 ms: `bench/respawn`.", ""]
    return "\n".join(lines + notes) + "\n"


def versions() -> str:
    found = [f"python {sys.version.split()[0]}"]
    for name in VERSIONS:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()
    return ", ".join(found + [f"wrk {wrk_version[1] if len(wrk_version) > 1 else '?'}"])


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs, {model}, {os.uname().sysname} {os.uname().release}"


def main() -> int:
    servers = os.environ.get("SERVERS", DEFAULT_SERVERS).split()
    modes = os.environ.get("MODES", "get post").split()
    reps = int(os.environ.get("REPS", "3"))
    for mode in modes:
        if mode not in MODES:
            raise SystemExit(f"bench/run: unknown mode {mode!r} (known: {', '.join(MODES)})")
    notes = []
    h11_server = "duck-h11"
    if "duck-h11" in servers and not duck_has_option("--http"):
        servers.remove("duck-h11")
        h11_server = "duck"
        notes.append("- This duck-prefork has no `--http` option: h11 is its only parser, so the "
                     "duck rows are h11 and the duck-h11 runs were skipped.")
        print("bench/run: duck-prefork has no --http: h11 is its only parser; skipping "
              "duck-h11", file=sys.stderr)
    work = Path(os.environ.get("WORK") or
                subprocess.check_output(["mktemp", "-d", "/tmp/duck-bench.XXXXXX"], text=True)
                .strip())
    print(f"bench/run: logs and wrk reports in {work}", file=sys.stderr)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results: dict[tuple[str, str], Summary] = {}
    for round_number in range(1, reps + 1):
        shift = (round_number - 1) % len(servers)
        order = servers[shift:] + servers[:shift]
        for mode in modes:
            for server in order:
                tag = f"{mode}-{server}-{round_number}"
                print(f"bench/run: round {round_number}/{reps} {mode:4} {server:18} ",
                      end="", file=sys.stderr, flush=True)
                try:
                    run = run_once(server, mode, work, tag)
                except RuntimeError as exc:
                    print(f"FAILED: {exc}", file=sys.stderr)
                    notes.append(f"- {mode} {server} round {round_number} failed: "
                                 f"{str(exc).splitlines()[0]} (logs: {work})")
                    continue
                print(f"{run.rps:>9,.0f} req/s  p99 {run.p99:6.2f} ms  USS {run.uss_mib:5.1f} "
                      f"MiB  other CPU {run.other_cpu:3.0f}%", file=sys.stderr)
                results.setdefault((server, mode), Summary()).runs.append(run)

    duration, warmup = os.environ.get("DURATION", "10s"), os.environ.get("WARMUP", "2s")
    header = [
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; load average "
        f"before {load_before}, after {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- {versions()}",
        f"- method: rounds: {reps}, servers interleaved (the order rotates each round); a fresh "
        f"server per run, `taskset -c {SERVER_CPU}`; wrk `taskset -c {WRK_CPU}`, {warmup} "
        f"warm-up, then `wrk -t1 -c{CONNECTIONS} -d{duration} --latency`; USS of the worker "
        f"process (psutil) 1 s after the warm-up; p50/p99: median across rounds of each run's "
        f"percentile; other CPU %: what the rest of the machine used during the run (noise)",
        "- commands (from bench/, PORT and APP filled in):",
        "",
        "```",
        *(" ".join(shlex.quote(arg) for arg in server_argv(server, "APP", 0)).replace(
            " 127.0.0.1:0 ", " 127.0.0.1:PORT ").replace("--port 0 ", "--port PORT ")
          .replace(str(VENV_BIN) + "/", "$BENCH_VENV/bin/") for server in servers),
        "```",
    ]
    text = report(results, servers, modes, h11_server, header, notes)
    print(text)
    latest = HERE / "results" / "latest.md"
    latest.parent.mkdir(exist_ok=True)
    latest.write_text(text)
    print(f"bench/run: wrote {latest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
