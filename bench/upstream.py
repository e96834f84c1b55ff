"""--upstream against nginx proxy_pass, same upstreams, same run.

    PYTHONPATH=. .venv/bin/python bench/upstream.py [--duration 10] [--rounds 3]

Two upstreams: the test suite's legacy Django project under gunicorn (2 sync workers on a
unix socket: the upstream is the bottleneck), and tests/apps/raw_upstream.py (uvloop, a fixed
keep-alive 200: the proxy is the bottleneck). One duck-prefork worker and one nginx worker,
each pinned to CPU 1 (taskset -c 1), proxy the same two paths (/ to Django, /ok to the raw
upstream; nginx keeps a keep-alive pool to the raw upstream, as duck-prefork does; both set
X-Forwarded-For/-Proto). wrk runs on CPU 0 (taskset -c 0), and the upstreams run there too.
Rounds alternate duck / nginx; medians and the ratio are printed. Every process is started
here and stopped by its PID.
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


def start(argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUCK_PREFORK_")}
    env["PYTHONPATH"] = str(ROOT)
    env["DJANGO_SETTINGS_MODULE"] = "tests.apps.legacy_django.settings"
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=open(log, "wb"),
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


def wrk(url: str, duration: int, connections: int) -> float:
    out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}",
                          f"-d{duration}s", url], capture_output=True, text=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if match is None:
        raise SystemExit(f"wrk failed:\n{out}")
    if errors:
        print(f"  ({url}: {errors.group(0)})")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
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
        duck_port, nginx_port = free_port(), free_port()
        duck = start(["taskset", "-c", "1", sys.executable, "-m", "duck_prefork",
                      "tests.apps.new_api:app", "--workers", "1", "--bind",
                      f"127.0.0.1:{duck_port}", "--upstream", f"/=unix:{sock}",
                      "--upstream", f"/ok=http://127.0.0.1:{raw_port}"], tmp / "duck.log")
        processes.append(duck)
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=nginx_port,
                                                          raw_port=raw_port, sock=sock))
        nginx = start(["taskset", "-c", "1", shutil.which("nginx") or "/usr/sbin/nginx",
                       "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "nginx-error.log")],
                      tmp / "nginx.log")
        processes.append(nginx)
        wait_log(tmp / "duck.log", r"ready: 1 workers serving")
        for port in (duck_port, nginx_port):
            wait_http(port, "/")
            wait_http(port, "/ok")
        for name, path, connections in (("Django under gunicorn (sync, 2 workers, unix)",
                                         "/", 16),
                                        ("trivial uvloop upstream", "/ok", 64)):
            results: dict[str, list[float]] = {"duck": [], "nginx": []}
            for port in (duck_port, nginx_port):
                wrk(f"http://127.0.0.1:{port}{path}", 2, connections)  # warm-up
            for _ in range(args.rounds):
                results["duck"].append(wrk(f"http://127.0.0.1:{duck_port}{path}",
                                           args.duration, connections))
                results["nginx"].append(wrk(f"http://127.0.0.1:{nginx_port}{path}",
                                            args.duration, connections))
            duck_median = statistics.median(results["duck"])
            nginx_median = statistics.median(results["nginx"])
            print(f"{name}: wrk -t1 -c{connections} -d{args.duration}s, {args.rounds} rounds")
            print(f"  duck-prefork --upstream: median {duck_median:,.0f} req/s "
                  f"{[round(x) for x in results['duck']]}")
            print(f"  nginx proxy_pass:        median {nginx_median:,.0f} req/s "
                  f"{[round(x) for x in results['nginx']]}")
            print(f"  ratio duck/nginx: {duck_median / nginx_median:.2f}x", flush=True)
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
