"""bench/http2_compare.py: HTTP/2 req/s with h2load, duck-prefork against hypercorn and granian
in one run, over TLS (ALPN h2) and over h2c (prior knowledge), plus our HTTP/2 against our
HTTP/1.1 over TLS.

Usage: /work/benchvenv/bin/python bench/http2_compare.py   (a python with hypercorn, granian and h2;
duck-prefork is this checkout: its compiled build if built, `setup.py build_ext --inplace`)

Method: each run starts a fresh server (one worker, bench/hello.py, pinned to CPU 1 with
taskset); h2load pinned to CPU 0 sends WARMUP requests, then REQUESTS measured ones (`h2load
-t1 -c CONNECTIONS -m STREAMS`: CONNECTIONS x STREAMS requests in flight); HTTP/1.1 runs use as
many connections as HTTP/2 has streams in flight (`--h1 -c C*M -m 1`). REPS rounds
run the servers interleaved. Prints a markdown table of median req/s, errors, and the ratios
the issue names. Only processes started here are signalled, by PID.

Knobs: REPS=3 REQUESTS=30000 WARMUP=2000 CONNECTIONS=4 STREAMS=16 SERVERS="duck hypercorn granian"
"""

from __future__ import annotations

import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
REPS = int(os.environ.get("REPS", "3"))
REQUESTS = int(os.environ.get("REQUESTS", "30000"))
WARMUP = int(os.environ.get("WARMUP", "2000"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "4"))
STREAMS = int(os.environ.get("STREAMS", "16"))
SERVERS = os.environ.get("SERVERS", "duck hypercorn granian").split()
SERVER_CPU, CLIENT_CPU = 1, 0
HYPERCORN_CONFIG = Path(tempfile.gettempdir()) / "duck-h2bench-hypercorn.toml"


def server_argv(name: str, port: int, tls: tuple[str, str] | None) -> list[str]:
    cert, key = tls or ("", "")
    if name == "duck":  # this checkout, with the python running this script
        return [sys.executable, "-m", "duck_prefork", "hello:app", "--bind",
                f"127.0.0.1:{port}", "--workers", "1", "--log-level", "warning",
                *(["--certfile", cert, "--keyfile", key] if tls else [])]
    if name == "hypercorn":
        # keep_alive_max_requests (default 1000) would end each h2load connection early and
        # fail its remaining requests: raised as far as our --http2-max-streams.
        return [str(BIN / "hypercorn"), "hello:app", "--bind", f"127.0.0.1:{port}", "-w", "1",
                "-k", "uvloop", "--log-level", "warning", "--config",
                str(HYPERCORN_CONFIG),
                *(["--certfile", cert, "--keyfile", key] if tls else [])]
    if name == "granian":
        return [str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1", "--port",
                str(port), "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop",
                "--http", "auto", "--no-access-log", "--log-level", "warning",
                *(["--ssl-certificate", cert, "--ssl-keyfile", key] if tls else []),
                "hello:app"]
    raise SystemExit(f"unknown server {name!r}")


def certificate(work: Path) -> tuple[str, str]:
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "7", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return str(cert), str(key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not listen")


def wait_answer(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Until one HTTP/2 request succeeds (a worker that imports the app after the port is
    bound, as hypercorn's, would otherwise eat into the measurement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        out = subprocess.run(["h2load", "-n", "1", "-c", "1", url], capture_output=True,
                             text=True, timeout=30).stdout
        if "1 succeeded" in out:
            return
        time.sleep(0.2)
    raise RuntimeError(f"no answer from {url}")


def h2load(url: str, h1: bool) -> tuple[float, int]:
    load = ["--h1", "-c", str(CONNECTIONS * STREAMS), "-m", "1"] if h1 else \
        ["-c", str(CONNECTIONS), "-m", str(STREAMS)]
    argv = ["taskset", "-c", str(CLIENT_CPU), "h2load", "-t", "1", *load]
    # A warm-up run, then the measured one: a fixed count rather than -D/--warm-up-time, with
    # which hypercorn's runs end in errors and 0 req/s (h2load's timing mode and its streams).
    subprocess.run([*argv, "-n", str(WARMUP), url], capture_output=True, timeout=120)
    out = subprocess.run([*argv, "-n", str(REQUESTS), url], capture_output=True, text=True,
                         timeout=300).stdout
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed, "
                     r"(\d+) errored", out)
    if not rps or not done:
        raise RuntimeError(f"h2load: no result\n{out}")
    return float(rps[1]), int(done[1]) + int(done[2])


def measure(name: str, tls: tuple[str, str] | None, h1: bool, work: Path) -> tuple[float, int]:
    port = free_port()
    log = open(work / f"{name}.log", "ab")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DUCK_PREFORK_NO_EXTENSIONS", None)
    proc = subprocess.Popen(["taskset", "-c", str(SERVER_CPU),
                             *server_argv(name, port, tls)], cwd=HERE, env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)
    try:
        wait_port(port, proc)
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
        wait_answer(url, proc)
        return h2load(url, h1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="duck-h2bench-"))
    tls = certificate(work)
    HYPERCORN_CONFIG.write_text("keep_alive_max_requests = 10000\n")
    cases = [(name, "tls", False) for name in SERVERS] + \
        [(name, "h2c", False) for name in SERVERS] + [("duck", "tls", True)]
    results: dict[tuple, list[float]] = {case: [] for case in cases}
    errors: dict[tuple, int] = dict.fromkeys(cases, 0)
    load_before = os.getloadavg()
    for rep in range(REPS):
        order = cases[rep % len(cases):] + cases[:rep % len(cases)]
        for case in order:
            name, transport, h1 = case
            rps, errs = measure(name, tls if transport == "tls" else None, h1, work)
            results[case].append(rps)
            errors[case] += errs
            print(f"  {name} {transport} {'h1' if h1 else 'h2'}: {rps:.0f} req/s, {errs} errors",
                  file=sys.stderr)
    median = {case: statistics.median(values) for case, values in results.items()}
    print(f"h2load -t1 -c{CONNECTIONS} -m{STREAMS} (HTTP/1.1: -c{CONNECTIONS * STREAMS}), "
          f"-n {REQUESTS} after -n {WARMUP}, {REPS} reps, medians; load average before "
          f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; logs in {work}\n")
    print("| server | transport | protocol | req/s | errors |\n|---|---|---|---:|---:|")
    for case in cases:
        name, transport, h1 = case
        print(f"| {name} | {transport} | {'HTTP/1.1' if h1 else 'HTTP/2'} | "
              f"{median[case]:.0f} | {errors[case]} |")
    print()
    for transport in ("tls", "h2c"):
        for peer, target in (("hypercorn", 1.5), ("granian", 1.0)):
            if median.get(("duck", transport, False)) and median.get((peer, transport, False)):
                ratio = median[("duck", transport, False)] / median[(peer, transport, False)]
                print(f"- {transport}: duck / {peer} = {ratio:.2f} (target >= {target})")
    ratio = median[("duck", "tls", False)] / median[("duck", "tls", True)]
    print(f"- tls: duck HTTP/2 / duck HTTP/1.1 = {ratio:.2f}")


if __name__ == "__main__":
    main()
