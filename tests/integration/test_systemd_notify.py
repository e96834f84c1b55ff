"""sd_notify against a real notify socket bound by the test: READY only once workers serve,
STATUS, RELOADING/READY around HUP, STOPPING, WATCHDOG pings at half the interval."""

import re
import signal
import socket
import time

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.timeout(60)


class NotifySocket:
    """The systemd side: a datagram socket collecting what the server sends."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict]] = []

    def poll(self) -> list[tuple[float, dict]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def wait(self, key: str, value: str | None = None, after: int = 0) -> int:
        """Index of the first message (from `after`) carrying key (=value)."""
        def found():
            for index, (_, fields) in enumerate(self.poll()[after:], after):
                if key in fields and (value is None or fields[key] == value):
                    return index + 1  # +1: never 0, so wait_for sees it as found
            return None
        return wait_for(found, what=f"{key}={value} on the notify socket") - 1


def test_notify_ready_status_reload_stopping(start_server, tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    server = start_server("tests.apps.basic:app", "--workers", "2", ready=False,
                          env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    ready = notify.wait("READY", "1")
    # READY=1 comes only when every worker serves: the log says so, and a request succeeds.
    assert "ready: 2 workers serving" in server.log()
    assert server.request("GET", "/")[0] == 200
    assert notify.messages[ready][1]["STATUS"].startswith("2/2 workers serving")

    server.send_signal(signal.SIGHUP)
    reloading = notify.wait("RELOADING", "1", after=ready + 1)
    assert int(notify.messages[reloading][1]["MONOTONIC_USEC"]) > 0
    ready_again = notify.wait("READY", "1", after=reloading + 1)
    assert "last reload" in notify.messages[ready_again][1]["STATUS"]
    assert server.log().count("to replace pid") == 2

    assert server.stop() == 0
    notify.wait("STOPPING", "1", after=ready_again + 1)


def test_hup_with_an_invalid_configuration_still_answers_reloading_then_ready(start_server,
                                                                              tmp_path):
    # Type=notify-reload: systemctl reload waits for RELOADING=1 and then READY=1, even when
    # the reload keeps the old configuration.
    config = tmp_path / "duck.toml"
    config.write_text('app = "tests.apps.basic:app"\nworkers = 1\n')
    notify = NotifySocket(tmp_path / "notify")
    server = start_server("--config", str(config), ready=False,
                          env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    ready = notify.wait("READY", "1")
    workers = server.worker_pids()
    config.write_text("workers = = 1\n")
    server.send_signal(signal.SIGHUP)
    reloading = notify.wait("RELOADING", "1", after=ready + 1)
    notify.wait("READY", "1", after=reloading + 1)
    server.wait_log("HUP: the configuration is invalid")
    assert server.worker_pids() == workers


def test_usr2_reports_reloading_mainpid_and_ready_from_the_same_pid(start_server, tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    server = start_server("tests.apps.basic:app", "--workers", "1", ready=False,
                          env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    ready = notify.wait("READY", "1")
    old = server.worker_pids()
    server.send_signal(signal.SIGUSR2)
    reloading = notify.wait("RELOADING", "1", after=ready + 1)
    mainpid = notify.wait("MAINPID", str(server.pid), after=reloading + 1)
    notify.wait("READY", "1", after=mainpid + 1)
    # READY=1 only once a worker of the new image serves (its "ready" line is logged first)
    ready_pids = re.findall(r"worker \d+ \(pid (\d+)\) ready", server.log())
    assert any(int(pid) not in old for pid in ready_pids), server.log()
    assert server.request("GET", "/")[0] == 200
    assert server.proc.poll() is None


def test_watchdog_pings_at_half_the_interval(start_server, tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    start_server("tests.apps.basic:app", "--workers", "1",
                 env={"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"})
    first = notify.wait("WATCHDOG", "1")
    wait_for(lambda: sum("WATCHDOG" in f for _, f in notify.poll()) >= 6, what="pings")
    pings = [t for t, f in notify.messages[first:] if "WATCHDOG" in f]
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert all(gap < 0.4 for gap in gaps[1:]), gaps  # well inside the 0.4 s interval


def test_abstract_namespace_socket(start_server):
    name = f"duck-test-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(20)
    start_server("tests.apps.basic:app", "--workers", "1", env={"NOTIFY_SOCKET": "@" + name})
    assert b"READY=1" in sock.recv(4096)
    sock.close()
