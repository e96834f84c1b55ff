"""TLS over a server's life: certificates swapped by HUP and by the file watch under steady
keep-alive load with no failed request, a broken swap that changes nothing, session resumption
whichever worker takes the connection (and across worker restarts), USR2."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import threading
from collections import Counter
from pathlib import Path

import pytest

from .conftest import wait_for
from .test_operations import replacements, wait_replaced
from .test_tls import BASIC, served_serial, tls_port
from .tls_certs import Certs, Issued

pytestmark = pytest.mark.timeout(300)

RACE_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
               ssl.SSLEOFError, ssl.SSLZeroReturnError)


def install(issued: Issued, cert: Path, key: Path) -> None:
    """Put `issued` in place as a deploy does: each file written aside, then renamed over."""
    for source, target in ((issued.key, key), (issued.cert, cert)):
        aside = target.with_suffix(".new")
        aside.write_bytes(source.read_bytes())
        os.replace(aside, target)


def live_files(certs: Certs, tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "live-cert.pem", tmp_path / "live-key.pem"
    install(certs.server, cert, key)
    return cert, key


class TlsLoad:
    """Keep-alive HTTPS clients sending GET /pid until stopped. A request on a reused
    connection that the server closed (a retired worker's drain) before any answer is
    retried on a new connection, as HTTP clients do; anything else is a failure."""

    def __init__(self, port: int, context: ssl.SSLContext, clients: int = 4):
        self.port, self.context = port, context
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.ok = self.retried = 0
        self.failures: list[str] = []
        self.pids: Counter = Counter()
        self.threads = [threading.Thread(target=self._client, daemon=True)
                        for _ in range(clients)]

    def __enter__(self) -> TlsLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in self.threads), "a load client hangs"

    def _client(self) -> None:
        conn = http.client.HTTPSConnection("localhost", self.port, context=self.context,
                                           timeout=20)
        while not self.stopping.is_set():
            reused = conn.sock is not None
            try:
                conn.request("GET", "/pid")
                response = conn.getresponse()
                body = response.read()
            except RACE_ERRORS as exc:
                conn.close()
                with self.lock:
                    if reused:
                        self.retried += 1
                    else:
                        self.failures.append(f"new connection: {exc!r}")
                continue
            except Exception as exc:
                conn.close()
                with self.lock:
                    self.failures.append(repr(exc))
                continue
            with self.lock:
                if response.status == 200 and body.isdigit():
                    self.ok += 1
                    self.pids[int(body)] += 1
                else:
                    self.failures.append(f"{response.status} {body[:80]!r}")
            if response.getheader("connection", "").lower() == "close":
                conn.close()
        conn.close()

    def served(self) -> int:
        with self.lock:
            return self.ok


@pytest.mark.parametrize("workers", [1, 4])
def test_ten_certificate_swaps_under_keep_alive_load_fail_nothing(start_server, certs,
                                                                  tmp_path, workers):
    cert, key = live_files(certs, tmp_path)
    server = start_server(BASIC, "--workers", str(workers), "--certfile", str(cert),
                          "--keyfile", str(key), bind="https://127.0.0.1:0")
    port = tls_port(server)
    swaps = [certs.server2, certs.server] * 5
    with TlsLoad(port, certs.client_context()) as load:
        wait_for(lambda: load.served() >= 50, timeout=30, what="load before the swaps")
        for number, issued in enumerate(swaps, 1):
            install(issued, cert, key)
            server.send_signal(signal.SIGHUP)
            server.wait_log(rf"HUP: reloading {workers} workers?", count=number, timeout=30)
            wait_replaced(server, replacements(server, workers * number, timeout=60)
                          [workers * (number - 1):], timeout=60)
            assert served_serial(port, certs) == issued.certificate.serial_number
            served = load.served()
            wait_for(lambda: load.served() >= served + 20, timeout=30,  # noqa: B023
                     what="load after a swap")
    print(f"\n10 swaps, {workers} workers: {load.ok} requests ok, {load.retried} retried after "
          f"a keep-alive close, {len(load.failures)} failed, served by {len(load.pids)} pids")
    assert load.failures == [], load.failures[:10]
    assert len(load.pids) > workers  # the load ran across the swaps
    assert "Traceback" not in server.log()


def test_a_garbage_swap_changes_nothing(start_server, certs, tmp_path):
    cert, key = live_files(certs, tmp_path)
    server = start_server(BASIC, "--workers", "2", "--certfile", str(cert), "--keyfile",
                          str(key), bind="https://127.0.0.1:0")
    port = tls_port(server)
    workers = set(server.worker_pids())
    # garbage, an expired certificate, a certificate that does not match the key
    for number, broken in enumerate((certs.garbage, certs.expired.cert, certs.server2.cert), 1):
        cert.write_bytes(broken.read_bytes())
        server.send_signal(signal.SIGHUP)
        server.wait_log(r"HUP: .*keeping the running certificates, configuration and workers",
                        count=number)
    assert "cannot read the certificate" in server.log()
    assert "the certificate expired on" in server.log()
    assert "the key does not match the certificate" in server.log()
    assert "HUP: reloading" not in server.log()
    assert set(server.worker_pids()) == workers
    assert served_serial(port, certs) == certs.server.certificate.serial_number


def test_a_hup_that_changes_no_certificate_keeps_sessions_resumable(start_server, certs,
                                                                    tmp_path):
    """Session tickets are made with keys in the master's context: workers forked later (a
    HUP, a crash) accept the tickets of the workers before them."""
    server = start_server(BASIC, "--workers", "2", "--certfile", str(certs.server.cert),
                          "--keyfile", str(certs.server.key), bind="https://127.0.0.1:0")
    port = tls_port(server)
    context = certs.client_context()
    sessions = [first_visit(port, context)[0] for _ in range(20)]
    old = set(server.worker_pids())
    server.send_signal(signal.SIGHUP)
    wait_replaced(server, replacements(server, 2))
    assert not old & set(server.worker_pids())
    resumed = sum(revisit(port, context, session)[0] for session in sessions)
    assert resumed >= 19, f"{resumed} of 20 sessions resumed on the new workers"


def first_visit(port: int, context: ssl.SSLContext) -> tuple[ssl.SSLSession, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            pid = _get_pid(sock)
            return sock.session, pid  # type: ignore[return-value]


def revisit(port: int, context: ssl.SSLContext, session: ssl.SSLSession) -> tuple[bool, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost", session=session) as sock:
            pid = _get_pid(sock)
            return sock.session_reused, pid


def _get_pid(sock: ssl.SSLSocket) -> int:
    sock.sendall(b"GET /pid HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := sock.recv(65536):  # the session ticket arrives after the handshake
        data += chunk
    return int(data.partition(b"\r\n\r\n")[2])


def test_sessions_resume_whichever_worker_takes_the_connection(start_server, certs):
    server = start_server(BASIC, "--workers", "2", "--reuse-port", "--certfile",
                          str(certs.server.cert), "--keyfile", str(certs.server.key),
                          bind="https://127.0.0.1:0")
    port = tls_port(server)
    context = certs.client_context()
    clients = 60
    resumed = crossed = 0
    for _ in range(clients):
        session, first_pid = first_visit(port, context)
        reused, second_pid = revisit(port, context, session)
        resumed += reused
        crossed += first_pid != second_pid and reused
    print(f"\nsession resumption, 2 workers, --reuse-port: {resumed}/{clients} resumed, "
          f"{crossed} on the other worker")
    assert resumed >= 0.95 * clients
    assert crossed >= 5  # the kernel spread the revisits over both workers


def test_watch_reloads_certbot_style_symlinks(start_server, certs, tmp_path):
    """live/ symlinks into archive/, re-pointed by a renewal, as certbot does; a broken
    renewal is logged once and the running certificates kept."""
    archive, live = tmp_path / "archive", tmp_path / "live"
    archive.mkdir()
    live.mkdir()

    def renew(number: int, issued: Issued) -> None:
        (archive / f"cert{number}.pem").write_bytes(issued.cert.read_bytes())
        (archive / f"privkey{number}.pem").write_bytes(issued.key.read_bytes())
        for name in ("cert", "privkey"):
            link = live / f"{name}.pem"
            aside = live / f"{name}.pem.new"
            aside.symlink_to(f"../archive/{name}{number}.pem")
            os.replace(aside, link)

    renew(1, certs.server)
    server = start_server(BASIC, "--workers", "2", "--certfile", str(live / "cert.pem"),
                          "--keyfile", str(live / "privkey.pem"), "--tls-reload", "watch",
                          bind="https://127.0.0.1:0")
    port = tls_port(server)
    old = set(server.worker_pids())
    with TlsLoad(port, certs.client_context(), clients=2) as load:
        wait_for(lambda: load.served() >= 20, what="load before the renewal")
        renew(2, certs.server2)
        server.wait_log(r"TLS: new certificates: reloading 2 workers", timeout=30)
        wait_replaced(server, replacements(server, 2, timeout=30))
        assert served_serial(port, certs) == certs.server2.certificate.serial_number
        served = load.served()
        wait_for(lambda: load.served() >= served + 20, what="load after the renewal")
    assert load.failures == [], load.failures[:10]
    assert not old & set(server.worker_pids())
    # four writes (two files, two symlinks), one reload
    assert server.log().count("TLS: new certificates") == 1
    workers = set(server.worker_pids())
    # a broken renewal: garbage in the new archive file
    (archive / "cert3.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    (archive / "privkey3.pem").write_bytes(certs.server.key.read_bytes())
    for name in ("cert", "privkey"):
        aside = live / f"{name}.pem.new"
        aside.symlink_to(f"../archive/{name}3.pem")
        os.replace(aside, live / f"{name}.pem")
    server.wait_log(r"TLS: the certificate files changed but cannot be used, keeping the "
                    r"running certificates", timeout=30)
    assert set(server.worker_pids()) == workers
    assert served_serial(port, certs) == certs.server2.certificate.serial_number
    assert server.log().count("cannot be used") == 1


def test_usr2_revalidates_the_certificates(start_server, certs, tmp_path):
    cert, key = live_files(certs, tmp_path)
    server = start_server(BASIC, "--workers", "1", "--certfile", str(cert), "--keyfile",
                          str(key), bind="https://127.0.0.1:0")
    port = tls_port(server)
    workers = server.worker_pids()
    cert.write_bytes(certs.expired.cert.read_bytes())
    server.send_signal(signal.SIGUSR2)
    server.wait_log("USR2: not re-executing, the new image would fail", timeout=60)
    assert "expired" in server.log()
    assert server.worker_pids() == workers
    assert served_serial(port, certs) == certs.server.certificate.serial_number
    install(certs.server2, cert, key)
    server.send_signal(signal.SIGUSR2)
    server.wait_log(rf"re-executed master pid {server.pid}", timeout=60)
    wait_for(lambda: not set(workers) & set(server.worker_pids())
             and len(server.worker_pids()) == 1, timeout=60, what="old worker retired")
    assert served_serial(port, certs) == certs.server2.certificate.serial_number
    assert "listening on https://" in server.log()
