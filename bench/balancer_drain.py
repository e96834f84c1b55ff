"""bench/balancer_drain.py: one host stopped under load behind HAProxy, duck-prefork against
uvicorn: how many requests fail.

The scenario of tests/integration/test_balancers.py (docs/deploy.md's HAProxy configuration,
health checks on /ready every second, two hosts on 127.0.0.2 and 127.0.0.3 serving
tests/apps/balanced.py, four clients on keep-alive connections to HAProxy), run against:

  duck     duck-prefork with the guide's command line: --ready-path /ready --drain-delay 5,
           PROXY protocol v2 from HAProxy
  uvicorn  uvicorn --workers 2 on the same app; it has no readiness endpoint of its own, so
           HAProxy's check of /ready reaches the app, which answers 200 while uvicorn stops
           (what every balancer sees of a Python server today); plain HTTP from HAProxy

One TERM to the first host once both serve; the load goes on until the second host has served
200 more requests after the first has exited. Prints, for each, the requests sent and failed,
and why they failed. CI does not run this (uvicorn is not a test dependency).

    .venv/bin/python bench/balancer_drain.py                 # both, ROUNDS=1
    SERVERS=uvicorn ROUNDS=3 UVICORN=/path/to/uvicorn .venv/bin/python bench/balancer_drain.py

Needs /usr/sbin/haproxy (apt-get install haproxy) and, for uvicorn, UVICORN (default: the
`uvicorn` on PATH, else bench/.venv/bin/uvicorn). Signals only the processes it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration import balancers  # noqa: E402
from tests.integration.balancers import HOSTS  # noqa: E402


def uvicorn_binary() -> str:
    found = os.environ.get("UVICORN") or shutil.which("uvicorn")
    if found:
        return found
    return str(ROOT / "bench" / ".venv" / "bin" / "uvicorn")


def start(server: str, host: str, port: int, log: Path) -> subprocess.Popen:
    if server == "duck":
        argv = [sys.executable, "-m", "duck_prefork",
                *balancers.guide_command("haproxy", host, port)]
    else:
        argv = [uvicorn_binary(), balancers.APP, "--host", host, "--port", str(port),
                "--workers", "2", "--no-access-log"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BALANCED_HOST": host}
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    balancers.wait_port(host, port, proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is ours
            proc.wait(10)


def one_round(server: str, workdir: Path) -> balancers.Load:
    port = balancers.free_port(HOSTS)
    frontend = balancers.free_port()
    hosts = [start(server, host, port, workdir / f"{server}-{host}.log") for host in HOSTS]
    # uvicorn speaks no PROXY protocol: HAProxy sends it plain HTTP (the guide's one change).
    haproxy = balancers.start_haproxy(workdir, port, frontend, proxy_v2=server == "duck")
    try:
        return balancers.stop_one_under_load(
            frontend, lambda: os.kill(hosts[0].pid, signal.SIGTERM),
            lambda: hosts[0].wait(90))
    finally:
        haproxy.stop()
        for proc in hosts:
            stop(proc)


def main() -> None:
    servers = os.environ.get("SERVERS", "duck uvicorn").split()
    rounds = int(os.environ.get("ROUNDS", "1"))
    with tempfile.TemporaryDirectory(prefix="balancer-drain-") as tmp:
        for server in servers:
            for number in range(1, rounds + 1):
                workdir = Path(tmp) / f"{server}-{number}"
                workdir.mkdir()
                load = one_round(server, workdir)
                why = Counter(failure.split("(")[0] for failure in load.failures)
                print(f"{server} round {number}: {load.sent} requests, "
                      f"{len(load.failures)} failed {dict(why) or ''}, served {dict(load.served)}",
                      flush=True)


if __name__ == "__main__":
    main()
