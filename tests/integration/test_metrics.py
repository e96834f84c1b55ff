"""Whole-server metrics against the real process tree: exact counts after known traffic, counts
that survive a SIGKILL, a --max-requests recycle, a HUP and a USR2; gauges (in flight, the
accept queue as `ss -lnt` shows it, loop lag, memory as /proc shows it); the socket's mode, the
token; scrapes during reloads; the status command; bad scrapers while supervision goes on."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ROOT, close_now, wait_for
from .h2wire import H2Wire

pytestmark = pytest.mark.timeout(120)

APP = "tests.apps.metrics_app:app"


@pytest.fixture
def short_dir():
    """A directory with a short path: a unix socket path has at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="dpm-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def get(where: str, path: str = "/metrics", headers: dict | None = None):
    """(status, headers, body) from the metrics endpoint: a unix socket path or HOST:PORT."""
    if where.startswith("/"):
        conn: http.client.HTTPConnection = UnixHTTPConnection(where)
    else:
        host, _, port = where.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def samples(where: str) -> dict:
    """{(name, sorted labels): value} of one scrape, read with prometheus_client's parser."""
    status, _, body = get(where)
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def total(found: dict, name: str, **labels: str) -> float:
    return sum(value for (sample, sample_labels), value in found.items() if sample == name
               and all((k, v) in sample_labels for k, v in labels.items()))


def requests_total(where: str) -> float:
    return total(samples(where), "duckprefork_http_requests_total")


def wait_requests(where: str, expected: int, timeout: float = 15.0) -> dict:
    """The scrape once every worker has published `expected` requests in all."""
    def published():
        found = samples(where)
        return found if total(found, "duckprefork_http_requests_total") == expected else None
    return wait_for(published, timeout, f"{expected} requests in the metrics")


def traffic(server, count: int, path: str = "/") -> None:
    for _ in range(count):
        assert server.request("GET", path)[0] == 200


def start(start_server, sock: str, *args: str, **kwargs):
    return start_server(APP, "--metrics-bind", f"unix:{sock}", *args, **kwargs)


def test_exact_counts_after_known_traffic_across_four_workers(start_server, short_dir):
    sock = str(short_dir / "m.sock")
    server = start(start_server, sock, "--workers", "4")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: traffic(server, 1), range(100)))
        statuses = list(pool.map(lambda _: server.request("POST", "/echo", body=b"0123456789")[0],
                                 range(20)))
        statuses += list(pool.map(lambda _: server.request("GET", "/raise-before")[0],
                                  range(10)))
    assert statuses == [200] * 20 + [500] * 10
    for _ in range(5):
        conn = server.connect()
        conn.sendall(b"GARBAGE\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.1 400")
        close_now(conn)
    found = wait_requests(sock, 130)
    assert total(found, "duckprefork_http_requests_total", http_request_method="GET",
                 http_response_status_class="2xx") == 100
    assert total(found, "duckprefork_http_requests_total", http_request_method="POST",
                 http_response_status_class="2xx") == 20
    assert total(found, "duckprefork_http_requests_total",
                 http_response_status_class="5xx") == 10
    assert total(found, "http_server_request_duration_seconds_count") == 130
    assert total(found, "http_server_request_duration_seconds_bucket", le="+Inf") == 130
    assert total(found, "duckprefork_http_request_body_bytes_total") == 200
    error_body = len(b"Internal Server Error\n")
    assert total(found, "duckprefork_http_response_body_bytes_total") == \
        100 * len(b"Hello, world!") + 20 * 10 + 10 * error_body
    assert wait_for(lambda: total(samples(sock), "duckprefork_refused_requests_total",
                                  reason="bad_request") == 5, what="5 refusals")
    assert total(found, "duckprefork_connections_total") >= 130
    workers = {dict(labels)["worker"] for (name, labels) in found
               if name == "duckprefork_http_requests_total"}
    assert workers <= {"1", "2", "3", "4"} and len(workers) >= 2
    assert total(found, "duckprefork_workers", state="ready") == 4
    assert total(found, "duckprefork_workers_wanted") == 4


def test_counts_survive_sigkill_recycle_hup_and_usr2(start_server, short_dir):
    sock = str(short_dir / "m.sock")
    server = start(start_server, sock, "--workers", "2", "--max-requests", "40",
                   "--max-requests-jitter", "0")
    sent = 0
    seen: list[float] = []

    def check(what: str) -> None:
        found = wait_requests(sock, sent)
        seen.append(total(found, "duckprefork_http_requests_total"))
        assert seen == sorted(seen), f"a counter went backwards after {what}: {seen}"

    traffic(server, 30)
    sent += 30
    check("traffic")
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    server.wait_log(rf"\(pid {victim}\) killed by SIGKILL")
    wait_for(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(),
             what="the killed worker replaced")
    check("SIGKILL")
    assert wait_for(lambda: total(samples(sock), "duckprefork_worker_restarts_total",
                                  reason="signal") == 1, what="the kill counted")

    # 80 after the kill, over the two workers serving now: one of them serves at least 40
    # (the kernel chooses how to spread the connections; at times it alternates).
    traffic(server, 80)
    sent += 80
    server.wait_log("served its --max-requests")
    check("a --max-requests recycle")
    wait_for(lambda: total(samples(sock), "duckprefork_worker_restarts_total",
                           reason="max_requests") >= 1, what="the recycle counted")

    # A HUP and a USR2 each replace both workers: two exits each, counted as "reload" and
    # "upgrade" (or "max_requests", for a worker already being recycled at that moment).
    def restarts() -> float:
        return total(samples(sock), "duckprefork_worker_restarts_total")

    before = restarts()
    server.send_signal(signal.SIGHUP)
    server.wait_log("HUP: reloading")
    traffic(server, 10)
    sent += 10
    wait_for(lambda: restarts() >= before + 2, what="the HUP's retirements counted")
    check("HUP")

    before = restarts()
    server.send_signal(signal.SIGUSR2)
    server.wait_log("re-executed master pid")
    traffic(server, 10)
    sent += 10
    wait_for(lambda: restarts() >= before + 2, what="the upgrade's retirements counted")
    check("USR2")
    found = samples(sock)
    assert total(found, "duckprefork_worker_restarts_total", reason="signal") == 1
    assert total(found, "duckprefork_worker_restarts_total", reason="reload") >= 1
    assert total(found, "duckprefork_worker_restarts_total", reason="upgrade") >= 1
    assert {dict(labels)["worker"] for (name, labels) in found
            if name == "http_server_active_requests"} == {"1", "2"}  # slots, never pids


def test_in_flight_rises_and_falls_with_held_requests(start_server, short_dir):
    sock = str(short_dir / "m.sock")
    server = start(start_server, sock, "--workers", "2")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        held = [pool.submit(server.request, "GET", "/slow?delay=4") for _ in range(3)]
        wait_for(lambda: total(samples(sock), "http_server_active_requests") == 3,
                 what="3 requests in flight")
        assert [future.result()[0] for future in held] == [200] * 3
    wait_for(lambda: total(samples(sock), "http_server_active_requests") == 0,
             what="no request in flight")


def ss_queue(port: int) -> tuple[int, int] | None:
    """(Recv-Q, Send-Q) of the listening socket on `port` as `ss -lnt` shows them."""
    out = subprocess.run(["ss", "-lntH", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        return int(fields[1]), int(fields[2])
    return None


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_queue_depth_equals_ss_while_workers_are_stopped(start_server, short_dir):
    sock = str(short_dir / "m.sock")
    server = start(start_server, sock, "--workers", "2", "--backlog", "64")
    workers = server.worker_pids()
    clients = []
    try:
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        clients = [server.connect() for _ in range(5)]
        listener = f"http://127.0.0.1:{server.port}"

        def same_as_ss():
            found = samples(sock)
            ours = (total(found, "duckprefork_listen_queue_length", listener=listener),
                    total(found, "duckprefork_listen_queue_limit", listener=listener))
            return ours if ours == ss_queue(server.port) and ours[0] == 5 else None

        assert wait_for(same_as_ss, what="the queue as ss shows it") == (5, 64)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        for client in clients:
            close_now(client)


def test_loop_lag_after_a_blocking_handler(start_server, short_dir):
    sock = str(short_dir / "m.sock")
    server = start(start_server, sock, "--workers", "1")
    assert server.request("GET", "/block?s=1.5")[0] == 200
    # The lag is how late the once-a-second tick ran: a loop blocked for 1.5 s delays the
    # tick due during the block by 0.5 to 1.5 s, depending on where the block began.
    lag = wait_for(lambda: total(samples(sock), "duckprefork_event_loop_lag_seconds") >= 0.45,
                   what="a loop lag of 0.5 s at least")
    assert lag
    assert total(samples(sock), "duckprefork_event_loop_lag_seconds") <= 2.0


def proc_memory(pid: int) -> tuple[int, int]:
    """(USS, RSS) from /proc: private pages of smaps_rollup, VmRSS of status."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    private = sum(int(line.split()[1]) for line in rollup
                  if line.startswith(("Private_Clean:", "Private_Dirty:", "Private_Hugetlb:")))
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:"))
    return private * 1024, rss * 1024


def test_memory_within_five_percent_of_proc(start_server, short_dir):
    sock = str(short_dir / "m.sock")
    server = start(start_server, sock, "--workers", "2")
    traffic(server, 20)
    by_slot = {}
    status, _, body = get(sock, "/status")
    for row in json.loads(body)["workers"]:
        by_slot[str(row["slot"])] = row["pid"]

    def close_enough():
        found = samples(sock)
        for slot, pid in by_slot.items():
            uss, rss = proc_memory(pid)
            ours_uss = total(found, "duckprefork_worker_memory_bytes", worker=slot, kind="uss")
            ours_rss = total(found, "duckprefork_worker_memory_bytes", worker=slot, kind="rss")
            if abs(ours_uss - uss) > 0.05 * uss or abs(ours_rss - rss) > 0.05 * rss:
                return False
        return True

    wait_for(close_enough, timeout=20, what="memory within 5% of /proc")


def test_socket_mode_and_start_errors(start_server, short_dir):
    sock = short_dir / "m.sock"
    server = start(start_server, str(sock), "--workers", "1")
    assert sock.stat().st_mode & 0o777 == 0o600
    # Another server on the same path: refused at start, the live one untouched.
    other = start(start_server, str(sock), "--workers", "1", ready=False)
    assert other.wait_exit() == 1
    assert "--metrics-bind" in other.log() and "live process" in other.log()
    assert get(str(sock))[0] == 200
    missing = start(start_server, str(short_dir / "nowhere" / "m.sock"), ready=False)
    assert missing.wait_exit() == 1
    assert "does not exist" in missing.log()
    assert server.stop() == 0
    assert not sock.exists()  # removed at the stop


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_tcp_with_a_token(start_server, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    where = f"127.0.0.1:{free_port()}"
    start_server(APP, "--workers", "1", "--metrics-bind", where, "--metrics-token", str(token))
    assert get(where)[0] == 401
    status, headers, _ = get(where, headers={"Authorization": "Bearer wrong-token!"})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    status, headers, body = get(where, headers={"Authorization": "Bearer s3cret-token"})
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    status, headers, body = get(where, headers={"Authorization": "Bearer s3cret-token",
                                                "Accept": "application/openmetrics-text"})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    result = status_command(where, "--json", "--metrics-token", str(token))
    assert result.returncode == 0 and json.loads(result.stdout)["workers_wanted"] == 1
    refused = status_command(where)
    assert refused.returncode == 1 and "401" in refused.stderr
    exposed = start_server(APP, "--metrics-bind", "0.0.0.0:0", ready=False)
    assert exposed.wait_exit() == 1 and "--metrics-token" in exposed.log()


def test_scrapes_during_reloads_never_fail(start_server, short_dir):
    sock = str(short_dir / "m.sock")
    server = start(start_server, sock, "--workers", "2")
    errors = []
    scraped = 0
    for round_ in range(4):
        server.send_signal(signal.SIGUSR2 if round_ == 2 else signal.SIGHUP)
        for _ in range(50):
            try:
                status, _, body = get(sock)
                if status != 200 or not body.startswith(b"# HELP"):
                    errors.append(status)
            except OSError as exc:
                errors.append(repr(exc))
            scraped += 1
        server.wait_log(r"worker \d \(pid \d+\) ready", count=2 * (round_ + 2))
    assert scraped == 200 and errors == []


def status_command(sock: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUCK_PREFORK_")
           or k == "DUCK_PREFORK_NO_EXTENSIONS"}
    env["PYTHONPATH"] = str(ROOT)
    where = f"unix:{sock}" if sock.startswith("/") else sock
    return subprocess.run([sys.executable, "-m", "duck_prefork", "status", *args,
                           "--metrics-bind", where], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=30)


def test_status_command_shows_the_masters_children(start_server, short_dir):
    sock = str(short_dir / "m.sock")
    server = start(start_server, sock, "--workers", "3")
    traffic(server, 5)
    children = {child.pid for child in psutil.Process(server.pid).children()}
    result = status_command(sock, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert {row["pid"] for row in document["workers"]} == children
    assert document["pid"] == server.pid
    table = status_command(sock)
    assert table.returncode == 0
    rows = [line.split() for line in table.stdout.splitlines()[2:] if line[:1].isdigit()]
    assert {int(row[1]) for row in rows} == children
    assert "total" in table.stdout
    gone = status_command(str(short_dir / "none.sock"))
    assert gone.returncode == 1 and "cannot reach the master" in gone.stderr


def test_bad_scrapers_do_not_stall_supervision(start_server, short_dir):
    sock = str(short_dir / "m.sock")
    server = start(start_server, sock, "--workers", "2")
    silent = [socket.socket(socket.AF_UNIX) for _ in range(5)]
    for client in silent:
        client.connect(sock)  # and says nothing
    flood = socket.socket(socket.AF_UNIX)
    flood.connect(sock)
    flood.settimeout(10)
    crowd = []
    try:
        try:  # 1 MiB of headers: cut after the size limit
            flood.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * (1 << 20))
        except OSError:
            pass  # cut while sending: fine
        for _ in range(1000):
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            try:
                client.connect(sock)
            except BlockingIOError:
                pass
            except OSError:
                client.close()
                continue
            crowd.append(client)
        # Meanwhile a worker dies: it is replaced promptly, as without the scrapers.
        victim = server.worker_pids()[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(),
                 timeout=5, what="the killed worker replaced")
        assert time.monotonic() - killed_at < 5
        server.wait_log(r"worker \d \(pid \d+\) ready", count=3, timeout=10)
    finally:
        for client in [*silent, *crowd, flood]:
            client.close()
    # And scraping works again once the master has seen them go (until then a scrape may be
    # one over the cap of connections, and closed at once).
    def served() -> bool:
        try:
            return get(sock)[0] == 200
        except OSError:
            return False

    assert wait_for(served, what="a scrape served")
    assert server.proc.poll() is None


def test_systemd_status_line_carries_the_summary(start_server, short_dir, tmp_path):
    from .test_systemd_notify import NotifySocket

    notify = NotifySocket(short_dir / "notify")
    sock = str(short_dir / "m.sock")
    server = start(start_server, sock, "--workers", "2",
                   env={"NOTIFY_SOCKET": str(short_dir / "notify")})
    ready = notify.wait("READY", "1")
    assert notify.messages[ready][1]["STATUS"].startswith("2/2 workers ready, 0 in flight")
    traffic(server, 10)

    def summary_with_traffic():
        for _, fields in notify.poll()[ready + 1:]:
            line = fields.get("STATUS", "")
            if "req/s" in line and not line.startswith("2/2 workers ready, 0 in flight, 0.0"):
                return line
        return None

    line = wait_for(summary_with_traffic, timeout=20, what="a STATUS= line with traffic")
    assert "5xx" in line and "accept queue" in line and "restarts" in line


def test_usr2_keeps_the_counts_and_follows_a_new_metrics_address(start_server, short_dir):
    config = short_dir / "duck.toml"
    first, second = short_dir / "a.sock", short_dir / "b.sock"
    config.write_text(f'metrics-bind = "unix:{first}"\n')
    server = start_server(APP, "--workers", "1", "--config", str(config))
    traffic(server, 7)
    wait_requests(str(first), 7)
    config.write_text(f'metrics-bind = "unix:{second}"\n')
    server.send_signal(signal.SIGUSR2)
    server.wait_log("re-executed master pid")
    assert wait_requests(str(second), 7)
    assert not first.exists()


def test_http2_streams_count_as_requests(start_server, short_dir):
    """Each HTTP/2 stream (h2c from a trusted peer, the raw frames of h2wire.py) lands in the
    same counters as an HTTP/1.1 request: method and status class, duration, body bytes both
    ways, refusals by reason, in flight back to 0."""
    sock = str(short_dir / "m.sock")
    server = start(start_server, sock, "--workers", "1", "--limit-request-body", "100",
                   bind="127.0.0.1:0")
    wire = H2Wire(server.port)
    streams = iter(range(1, 1000, 2))
    expected = []  # (stream id, status)
    for _ in range(10):
        expected.append((next(streams), 200))
        wire.request(expected[-1][0], "/")
    for _ in range(3):
        expected.append((next(streams), 200))
        wire.request(expected[-1][0], "/echo", "POST", b"0123456789")
    for _ in range(2):
        expected.append((next(streams), 500))
        wire.request(expected[-1][0], "/raise-before")
    too_large = next(streams)
    wire.request(too_large, "/echo", "POST", b"x" * 200)  # past --limit-request-body
    assert [wire.response(stream_id)[0] for stream_id, _ in expected] == \
        [status for _, status in expected]
    assert wire.response(too_large)[0] == 413
    assert wait_for(lambda: total(samples(sock), "duckprefork_open_connections") == 1,
                    what="the HTTP/2 connection open")
    wire.close()
    found = wait_requests(sock, 15)
    assert total(found, "duckprefork_http_requests_total", http_request_method="GET",
                 http_response_status_class="2xx") == 10
    assert total(found, "duckprefork_http_requests_total", http_request_method="POST",
                 http_response_status_class="2xx") == 3
    assert total(found, "duckprefork_http_requests_total", http_request_method="GET",
                 http_response_status_class="5xx") == 2
    assert total(found, "http_server_request_duration_seconds_count") == 15
    assert total(found, "http_server_request_duration_seconds_bucket", le="+Inf") == 15
    assert total(found, "http_server_request_duration_seconds_sum") > 0
    assert total(found, "duckprefork_http_request_body_bytes_total") == 30
    assert total(found, "duckprefork_http_response_body_bytes_total") == \
        10 * len(b"Hello, world!") + 3 * 10 + 2 * len(b"Internal Server Error\n")
    assert total(found, "duckprefork_connections_total") >= 1
    assert wait_for(lambda: total(samples(sock), "duckprefork_refused_requests_total",
                                  reason="too_large") == 1, what="the 413 refusal")
    assert wait_for(lambda: total(samples(sock), "http_server_active_requests") == 0,
                    what="no request in flight")
