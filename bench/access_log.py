"""What the access log costs in req/s, ours and uvicorn's, in one run (issue 16's figure).

    BENCH_VENV=/path/to/venv $BENCH_VENV/bin/python bench/access_log.py
    REPS=5 DURATION=5s DUCK_BIN=/path/to/duck-prefork ... bench/access_log.py

Servers, interleaved round by round as bench/run does (bench/compare.py: a fresh server per
run with 1 worker pinned to CPU 1, wrk pinned to CPU 0, `wrk -t1 -c64`, GET hello world):
duck (access log off, the default), duck-log (`--access-logfile -`, the default line),
duck-log-json (`--access-log-json` too), uvicorn-httptools (`--no-access-log`) and
uvicorn-httptools-log (`--access-log --log-level info`). Every server's stdout and stderr go
to a file (the run's log in the work directory), so the lines are really written. Prints the
medians and the ratios, of req/s and of the server's CPU time per request (user + system, all
its processes: on a busy machine it moves less than req/s); the target: the access log on
costs less than 10% of our req/s.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from compare import VENV_BIN, Summary, machine, run_once, server_argv, versions

SERVERS = ("duck", "duck-log", "duck-log-json", "uvicorn-httptools", "uvicorn-httptools-log")
RATIOS = (  # (what, numerator, denominator)
    ("ours, default line on / off", "duck-log", "duck"),
    ("ours, JSON on / off", "duck-log-json", "duck"),
    ("uvicorn-httptools, access log on / off", "uvicorn-httptools-log", "uvicorn-httptools"),
    ("ours / uvicorn-httptools, access log on (default line)", "duck-log",
     "uvicorn-httptools-log"),
    ("ours / uvicorn-httptools, access log off", "duck", "uvicorn-httptools"),
)


def main() -> int:
    servers = os.environ.get("SERVERS", " ".join(SERVERS)).split()
    reps = int(os.environ.get("REPS", "3"))
    work = Path(subprocess.check_output(["mktemp", "-d", "/tmp/duck-alog.XXXXXX"], text=True)
                .strip())
    print(f"bench/access_log.py: logs and wrk reports in {work}", file=sys.stderr)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results: dict[str, Summary] = {}
    for round_number in range(1, reps + 1):
        shift = (round_number - 1) % len(servers)
        for server in servers[shift:] + servers[:shift]:
            run = run_once(server, "get", work, f"{server}-{round_number}")
            print(f"bench/access_log.py: round {round_number}/{reps} {server:22} "
                  f"{run.rps:>9,.0f} req/s  {run.cpu_us:5.2f} us CPU/request  "
                  f"other CPU {run.other_cpu:3.0f}%", file=sys.stderr)
            results.setdefault(server, Summary()).runs.append(run)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    duration = os.environ.get("DURATION", "10s")
    lines = [
        "## The access log's cost in req/s, one run",
        "",
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; load average "
        f"before {load_before}, after {load_after}",
        f"- {versions()}",
        f"- method: bench/compare.py's run, {reps} rounds interleaved, GET hello world, "
        f"`wrk -t1 -c64 -d{duration}`; each server's stdout/stderr to a file",
        "- commands (from bench/):",
        "",
        "```",
        *(" ".join(shlex.quote(arg) for arg in server_argv(server, "hello", 0))
          .replace(str(VENV_BIN) + "/", "$BENCH_VENV/bin/") for server in servers),
        "```",
        "",
        "| server | req/s (median) | server CPU per request, us (median) | other CPU % "
        "(median) |",
        "|---|---:|---:|---:|",
        *(f"| {server} | {results[server].median('rps'):,.0f} | "
          f"{results[server].median('cpu_us'):.2f} | "
          f"{results[server].median('other_cpu'):.0f} |" for server in servers
          if server in results),
        "",
        "| ratio | req/s | CPU per request |",
        "|---|---:|---:|",
    ]
    for what, top, bottom in RATIOS:
        if top in results and bottom in results:
            rps = results[top].median("rps") / results[bottom].median("rps")
            cpu = results[top].median("cpu_us") / results[bottom].median("cpu_us")
            lines.append(f"| {what} | {rps:.3f} | {cpu:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    latest = Path(__file__).resolve().parent / "results" / "access-log-latest.md"
    latest.parent.mkdir(exist_ok=True)
    latest.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
