"""bench/instr_h2.py: instructions per HTTP/2 request (valgrind), duck-prefork and its peers.

Usage: /work/benchvenv/bin/python bench/instr_h2.py   (a python with granian/hypercorn; duck-prefork
is this checkout, its compiled build if built)

Method (as ../shared/bench/instr.sh does for HTTP/1.1): each server starts fresh with one worker
under valgrind (cachegrind, no cache or branch simulation, children traced, one output file per
process, PYTHONHASHSEED=0), bench/hello.py as the app; h2load sends WARMUP requests, then N
requests over h2c (prior knowledge; TRANSPORT=tls for ALPN h2) on CONNECTIONS connections with
STREAMS in flight each; the server gets TERM and every traced process exits. Run for N1 and N2:
(Ir(N2) - Ir(N1)) / (N2 - N1) per process is its instructions per request; start-up, warm-up
and shutdown cancel out. "root" is the process started (duck-prefork's master, granian's main
process); "workers" is every other process summed (threads are summed into their process by
valgrind). Only user-space instructions count.

Knobs: N1=2000 N2=6000 WARMUP=500 CONNECTIONS=1 STREAMS=16 SERVERS="duck granian hypercorn"
TRANSPORT=h2c|tls DUCK_ARGS="" (more duck-prefork options)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import http2_compare as h2bench  # noqa: E402  (server command lines, certificate, waits)

N1 = int(os.environ.get("N1", "2000"))
N2 = int(os.environ.get("N2", "6000"))
WARMUP = int(os.environ.get("WARMUP", "500"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "1"))
STREAMS = int(os.environ.get("STREAMS", "16"))
SERVERS = os.environ.get("SERVERS", "duck granian hypercorn").split()
TRANSPORT = os.environ.get("TRANSPORT", "h2c")
DUCK_ARGS = os.environ.get("DUCK_ARGS", "").split()


def run(name: str, n: int, work: Path, tls: tuple[str, str] | None) -> dict[str, int]:
    """Ir per process role for one run of `n` measured requests."""
    out = work / f"{name}-{n}"
    out.mkdir()
    port = h2bench.free_port()
    argv = h2bench.server_argv(name, port, tls)
    if name == "duck":
        argv += DUCK_ARGS
    env = {**os.environ, "PYTHONPATH": str(h2bench.ROOT), "PYTHONHASHSEED": "0"}
    env.pop("DUCK_PREFORK_NO_EXTENSIONS", None)
    proc = subprocess.Popen(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--branch-sim=no",
         "--trace-children=yes", f"--cachegrind-out-file={out}/cg.%p",
         f"--log-file={out}/vg.%p", *argv],
        cwd=h2bench.HERE, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        h2bench.wait_port(port, proc, timeout=300)
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
        h2bench.wait_answer(url, proc, timeout=300)
        load = ["h2load", "-t", "1", "-c", str(CONNECTIONS), "-m", str(STREAMS)]
        subprocess.run([*load, "-n", str(WARMUP), url], capture_output=True, timeout=600)
        done = subprocess.run([*load, "-n", str(n), url], capture_output=True, text=True,
                              timeout=1200).stdout
        if f"{n} succeeded" not in done:
            raise RuntimeError(f"{name}: h2load did not succeed:\n{done}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    # valgrind writes each process's file at its exit: wait for the whole group to be gone.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    roles = {"root": 0, "workers": 0}
    for path in out.glob("cg.*"):
        pid = int(path.name.split(".")[1])
        summary = re.search(r"^summary:\s+(\d+)", path.read_text(), re.M)
        if summary:
            roles["root" if pid == proc.pid else "workers"] += int(summary[1])
    return roles


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="duck-instr-h2-"))
    tls = h2bench.certificate(work) if TRANSPORT == "tls" else None
    h2bench.HYPERCORN_CONFIG.write_text("keep_alive_max_requests = 100000\n")
    print(f"{TRANSPORT}, h2load -c{CONNECTIONS} -m{STREAMS}, N1={N1} N2={N2} "
          f"WARMUP={WARMUP}; output in {work}\n")
    print("| server | workers Ir/request | root Ir/request |\n|---|---:|---:|")
    for name in SERVERS:
        first, second = run(name, N1, work, tls), run(name, N2, work, tls)
        per = {role: (second[role] - first[role]) / (N2 - N1) for role in first}
        print(f"| {name} | {per['workers']:,.0f} | {per['root']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
