"""bench/run's helper: parse `wrk --latency` reports and tabulate them.

  wrk_parse.py record SERVER WRK_REPORT  -> one TSV line: server, req/s, p50 ms, p99 ms, errors
  wrk_parse.py table RUNS_TSV BASELINE   -> markdown table of the medians across each server's
                                            runs, then each server's median req/s / BASELINE's
"""

import re
import statistics
import sys

MS_PER_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(text):
    """A wrk duration such as "812.00us", "1.52ms" or "2.01s", in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * MS_PER_UNIT[match[2]]


def parse(report):
    """(req/s, p50 ms, p99 ms, errors) from the text wrk prints with --latency."""
    rps = re.search(r"^Requests/sec:\s*([\d.]+)", report, re.M)
    p50 = re.search(r"^\s*50%\s+(\S+)", report, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", report, re.M)
    if not (rps and p50 and p99):
        raise ValueError("no Requests/sec or latency distribution in the wrk report")
    errors = 0
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       report)
    if socket:
        errors += sum(int(n) for n in socket.groups())
    bad_status = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    if bad_status:
        errors += int(bad_status[1])
    return float(rps[1]), to_ms(p50[1]), to_ms(p99[1]), errors


def record(server, report_path):
    with open(report_path) as f:
        rps, p50, p99, errors = parse(f.read())
    print(f"{server}\t{rps:.2f}\t{p50:.3f}\t{p99:.3f}\t{errors}")


def table(runs_path, baseline):
    runs = {}  # server -> [(req/s, p50, p99, errors), ...] in run order
    with open(runs_path) as f:
        for line in f:
            server, *values = line.split("\t")
            runs.setdefault(server, []).append([float(v) for v in values])

    def median(server, column):
        return statistics.median(run[column] for run in runs[server])

    print("| server | req/s (median) | p50 ms | p99 ms | errors | req/s of each run |")
    print("|---|---:|---:|---:|---:|---|")
    for server, server_runs in runs.items():
        each = ", ".join(f"{run[0]:,.0f}" for run in server_runs)
        print(f"| {server} | {median(server, 0):,.0f} | {median(server, 1):.2f} "
              f"| {median(server, 2):.2f} | {sum(run[3] for run in server_runs):.0f} | {each} |")
    print()
    for server in runs:
        if server != baseline and baseline in runs:
            ratio = median(server, 0) / median(baseline, 0)
            print(f"**{server} / {baseline}, median req/s: {ratio:.2f}**")


def main(argv):
    commands = {"record": (record, 2), "table": (table, 2)}
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        commands[argv[1]][0](*argv[2:])
    except (OSError, ValueError) as exc:
        print(f"wrk_parse.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
