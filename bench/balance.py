"""bench/balance: how evenly duck-prefork's workers share the load.

For each socket mode (VARIANTS), worker count (WORKERS) and load (LOADS) it starts a fresh
server of bench/whoami.py, drives it with wrk for DURATION, stops it gracefully, and reads the
counts each worker wrote at lifespan shutdown: requests served and distinct client addresses
(= connections, under keep-alive). It prints a markdown table with every worker's share of
the requests and of the connections, and the busiest worker's; more than 60% is flagged. On a
small machine the request shares understate a skew: a worker that holds few connections gets a
CPU to itself and serves them faster, so read the connection shares too.

Knobs (environment): WORKERS="2 4"  DURATION=10s  REPS=1 (the busiest share is the median)
  LOADS="keepalive:64 keepalive:16 close:64 close:16"   (close: `-H "Connection: close"`,
                                                          a new connection per request)
  VARIANTS="shared reuse-port"  (reuse-port: `--reuse-port`; skipped if duck-prefork lacks it)
  DUCK_ARGS=""  more duck-prefork flags for every run
  DUCK_BIN      the duck-prefork to run (default: the bench venv's, i.e. this checkout)
Nothing is pinned: the workers and wrk (`-t1`) share the machine's CPUs as in production.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import DuckServer, duck_has_option, run_wrk, wrk_errors, wrk_requests_per_second

BUSIEST_LIMIT = 0.60
VARIANT_ARGS = {"shared": [], "reuse-port": ["--reuse-port"]}


def measure(variant: str, workers: int, load: str, duration: str) -> dict:
    mode, _, connections = load.partition(":")
    headers = ["Connection: close"] if mode == "close" else []
    args = VARIANT_ARGS[variant] + shlex.split(os.environ.get("DUCK_ARGS", ""))
    with tempfile.TemporaryDirectory(prefix="duck-balance-") as counts_dir:
        server = DuckServer("whoami:app", workers, args, env={"BENCH_COUNTS_DIR": counts_dir})
        try:
            report = run_wrk(server.url, int(connections), duration, headers)
        finally:
            code = server.stop()
        if code != 0:
            raise RuntimeError(f"duck-prefork exited with {code}; log: {server.log_path}")
        counts = [json.loads(path.read_text()) for path in Path(counts_dir).glob("*.json")]
    server.log_path.unlink()
    if len(counts) != workers:
        raise RuntimeError(f"expected counts from {workers} workers, got {len(counts)}")
    counts.sort(key=lambda c: -c["requests"])
    total = sum(c["requests"] for c in counts)
    if not total:
        raise RuntimeError(f"no request was served:\n{report}")
    connections_each = sorted((c["connections"] for c in counts), reverse=True)
    return {
        "rps": wrk_requests_per_second(report),
        "errors": wrk_errors(report),
        "shares": [c["requests"] / total for c in counts],
        # Under keep-alive: wrk's connections per worker (the busiest first).
        "connections": connections_each if mode == "keepalive" else None,
        "wrk": " ".join(["wrk -t1", f"-c{connections}", f"-d{duration}",
                         *(f'-H "{h}"' for h in headers)]),
    }


def busiest(result: dict) -> float:
    """The largest share of one worker: of the requests, or of the connections if larger."""
    share = result["shares"][0]
    if result["connections"]:
        share = max(share, result["connections"][0] / sum(result["connections"]))
    return share


def main() -> int:
    workers_list = [int(n) for n in os.environ.get("WORKERS", "2 4").split()]
    loads = os.environ.get("LOADS", "keepalive:64 keepalive:16 close:64 close:16").split()
    variants = os.environ.get("VARIANTS", "shared reuse-port").split()
    duration = os.environ.get("DURATION", "10s")
    reps = int(os.environ.get("REPS", "1"))
    for variant in list(variants):
        if variant not in VARIANT_ARGS:
            print(f"bench/balance: unknown variant {variant!r} (known: {', '.join(VARIANT_ARGS)})",
                  file=sys.stderr)
            return 2
        if VARIANT_ARGS[variant] and not duck_has_option(VARIANT_ARGS[variant][0]):
            print(f"bench/balance: duck-prefork has no {VARIANT_ARGS[variant][0]}: skipping "
                  f"the {variant} variant", file=sys.stderr)
            variants.remove(variant)

    rows = []
    for variant in variants:
        for workers in workers_list:
            for load in loads:
                runs = []
                for rep in range(1, reps + 1):
                    print(f"bench/balance: {variant}, {workers} workers, {load}, "
                          f"run {rep}/{reps} ...", end=" ", file=sys.stderr, flush=True)
                    result = measure(variant, workers, load, duration)
                    print(f"{result['rps']:,.0f} req/s, busiest {busiest(result):.0%}",
                          file=sys.stderr)
                    runs.append(result)
                    time.sleep(0.5)
                runs.sort(key=busiest)
                rows.append((variant, workers, load, runs[len(runs) // 2],
                             statistics.median(r["rps"] for r in runs)))

    print(f"## Accept balance: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs, load average before the report "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print("| socket | workers | load (wrk) | req/s | errors | requests per worker "
          "| connections per worker | busiest |")
    print("|---|---:|---|---:|---:|---|---|---:|")
    over = []
    for variant, workers, load, result, rps in rows:
        shares = " / ".join(f"{share:.0%}" for share in result["shares"])
        top = busiest(result)
        flag = " **>60%**" if top > BUSIEST_LIMIT else ""
        if flag:
            over.append(f"{variant} {workers} workers {load}")
        conns = " / ".join(map(str, result["connections"])) if result["connections"] else "-"
        print(f"| {variant} | {workers} | {load} (`{result['wrk']}`) | {rps:,.0f} "
              f"| {result['errors']} | {shares} | {conns} | {top:.0%}{flag} |")
    print()
    print(f"Busiest worker over {BUSIEST_LIMIT:.0%}: {', '.join(over) if over else 'none'}.")
    print("Server: `duck-prefork whoami:app --bind 127.0.0.1:0 --workers N` from bench/, plus "
          "`--reuse-port` for the reuse-port rows; wrk and the workers unpinned. busiest: the "
          "largest share of one worker, of the requests or (keep-alive) of the connections; "
          f"the row is the run with the median busiest share of {reps}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
