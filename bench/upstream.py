"""--upstream against nginx proxy_pass, same upstreams, same run.

    PYTHONPATH=. .venv/bin/python bench/upstream.py [--duration 10] [--rounds 3]
        [--compare OTHER_CHECKOUT]

Two upstreams: the test suite's legacy Django project under gunicorn (2 sync workers on a
unix socket: the upstream is the bottleneck), and tests/apps/raw_upstream.py (uvloop, a fixed
keep-alive 200: the proxy is the bottleneck). One duck-prefork worker and one nginx worker,
each pinned to CPU 1 (taskset -c 1), proxy the same two paths (/ to Django, /ok to the raw
upstream; nginx keeps a keep-alive pool to the raw upstream, as duck-prefork does; both set
X-Forwarded-For/-Proto). wrk runs on CPU 0 (taskset -c 0), and the upstreams run there too.
Rounds alternate duck / nginx; medians and the ratio are printed, with each proxy worker's
CPU time per request (user + system, from /proc: a figure that moves less than req/s when
other processes share the machine). With --compare, the duck-prefork of another checkout (an
earlier commit, built as it would be: `setup.py build_ext --inplace` there for its compiled
build) runs beside this one in every round, the same way, so before and after come from the
same run. Every process is started here and stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream raw {{ server 127.0.0.1:{raw_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        location / {{ proxy_pass http://unix:{sock}:; }}
        location /ok {{
            proxy_pass http://raw;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(argv: list[str], log: Path, root: Path = ROOT, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUCK_PREFORK_")}
    env["PYTHONPATH"] = str(root)
    env["DJANGO_SETTINGS_MODULE"] = "tests.apps.legacy_django.settings"
    return subprocess.Popen(argv, cwd=root, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def wait_log(log: Path, pattern: str, timeout: float = 30.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text(errors="replace"))
        if match:
            return match
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {pattern!r} in {log}:\n{log.read_text()}")


def wait_http(port: int, path: str, timeout: float = 30.0) -> None:
    import http.client
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"nothing answers 200 on :{port}{path}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_of(master: int) -> int:
    """The one worker process of a master (duck-prefork --workers 1, nginx worker_processes 1)."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    if len(children) != 1:
        raise SystemExit(f"expected one worker under pid {master}, found {children}")
    return int(children[0])


def wrk(url: str, duration: int, connections: int, worker: int) -> tuple[float, float]:
    """(requests per second, CPU microseconds of `worker` per request)."""
    cpu = cpu_seconds(worker)
    out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}",
                          f"-d{duration}s", url], capture_output=True, text=True).stdout
    cpu = cpu_seconds(worker) - cpu
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if match is None or requests is None:
        raise SystemExit(f"wrk failed:\n{out}")
    if errors:
        print(f"  ({url}: {errors.group(0)})")
    return float(match.group(1)), cpu / int(requests.group(1)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", type=Path, metavar="CHECKOUT",
                        help="another duck-prefork checkout to measure beside this one")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="duck-upstream-bench-"))
    tmp.chmod(0o755)  # nginx workers run as another user, and connect to the socket here
    sock = tmp / "django.sock"
    processes: list[subprocess.Popen] = []
    try:
        gunicorn = start(["taskset", "-c", "0", sys.executable, "-m", "gunicorn", "--workers",
                          "2", "--bind", f"unix:{sock}", "--log-level", "warning",
                          "tests.apps.legacy_django.wsgi:application"], tmp / "gunicorn.log")
        processes.append(gunicorn)
        raw = start(["taskset", "-c", "0", sys.executable, "-m", "tests.apps.raw_upstream",
                     "--port", "0"], tmp / "raw.log")
        processes.append(raw)
        raw_port = int(wait_log(tmp / "raw.log", r"ready (\d+)").group(1))
        ducks = {"duck": ROOT}
        if args.compare:
            ducks["duck-compared"] = args.compare.resolve()
        ports = {name: free_port() for name in (*ducks, "nginx")}
        masters = {}
        for name, root in ducks.items():
            masters[name] = start(["taskset", "-c", "1", sys.executable, "-m", "duck_prefork",
                                   "tests.apps.new_api:app", "--workers", "1", "--bind",
                                   f"127.0.0.1:{ports[name]}", "--upstream", f"/=unix:{sock}",
                                   "--upstream", f"/ok=http://127.0.0.1:{raw_port}"],
                                  tmp / f"{name}.log", root)
            processes.append(masters[name])
        nginx_port = ports["nginx"]
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=nginx_port,
                                                          raw_port=raw_port, sock=sock))
        nginx = start(["taskset", "-c", "1", shutil.which("nginx") or "/usr/sbin/nginx",
                       "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "nginx-error.log")],
                      tmp / "nginx.log")
        processes.append(nginx)
        masters["nginx"] = nginx
        for name in ducks:
            wait_log(tmp / f"{name}.log", r"ready: 1 workers? serving")
            build = subprocess.run([sys.executable, "-c", "import duck_prefork.build as b; "
                                    "print(b.DESCRIPTION)"], capture_output=True, text=True,
                                   env={**os.environ, "PYTHONPATH": str(ducks[name])},
                                   cwd=ducks[name]).stdout.strip()
            print(f"{name}: {ducks[name]} ({build})", flush=True)
        for port in ports.values():
            wait_http(port, "/")
            wait_http(port, "/ok")
        workers = {name: worker_of(master.pid) for name, master in masters.items()}
        proxies = (*ducks, "nginx")
        for name, path, connections in (("Django under gunicorn (sync, 2 workers, unix)",
                                         "/", 16),
                                        ("trivial uvloop upstream", "/ok", 64)):
            rates: dict[str, list[float]] = {proxy: [] for proxy in proxies}
            costs: dict[str, list[float]] = {proxy: [] for proxy in proxies}
            for proxy in proxies:  # warm-up
                wrk(f"http://127.0.0.1:{ports[proxy]}{path}", 2, connections, workers[proxy])
            for _ in range(args.rounds):
                for proxy in proxies:
                    rate, cost = wrk(f"http://127.0.0.1:{ports[proxy]}{path}", args.duration,
                                     connections, workers[proxy])
                    rates[proxy].append(rate)
                    costs[proxy].append(cost)
            print(f"{name}: wrk -t1 -c{connections} -d{args.duration}s, {args.rounds} rounds")
            for proxy in proxies:
                label = "nginx proxy_pass" if proxy == "nginx" else f"{proxy} --upstream"
                print(f"  {label:28}: median {statistics.median(rates[proxy]):,.0f} req/s "
                      f"{[round(x) for x in rates[proxy]]}, its worker's CPU per request "
                      f"{statistics.median(costs[proxy]):.0f} us")
            nginx_rate = statistics.median(rates["nginx"])
            for proxy in ducks:
                print(f"  ratio {proxy}/nginx: "
                      f"{statistics.median(rates[proxy]) / nginx_rate:.2f}x req/s", flush=True)
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)  # (masters stop their own workers)
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
        if os.environ.get("KEEP"):
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
