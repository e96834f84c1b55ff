"""Socket activation through the real systemd-socket-activate: the passed socket is served
(not --bind), its name is logged, and a connection made before the server ran is answered."""

import os
import shutil
import socket
import subprocess
import sys

import psutil
import pytest

from .conftest import ROOT, wait_for

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                                 reason="systemd-socket-activate is not installed")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=30)
    except ConnectionRefusedError:
        return None


def test_serves_the_socket_systemd_passes(tmp_path):
    port, unused = free_port(), free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=web",
             sys.executable, "-m", "duck_prefork", "tests.apps.basic:app", "--workers", "1",
             "--bind", f"127.0.0.1:{unused}"], cwd=ROOT, env=env, stderr=stderr)
    try:
        # The first connection is what starts the server: it waits in the passed socket.
        client = wait_for(lambda: connect(port), what="systemd-socket-activate listening")
        client.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := client.recv(4096):
            data += chunk
        client.close()
        assert data.startswith(b"HTTP/1.1 200")
        text = log.read_text()
        assert f"listening on http://127.0.0.1:{port} (web)" in text  # LISTEN_FDNAMES
        with pytest.raises(ConnectionRefusedError):  # --bind was not used
            socket.create_connection(("127.0.0.1", unused), timeout=5)
        # LISTEN_* were removed before the workers were forked.
        worker = psutil.Process(proc.pid).children()[0]
        assert "LISTEN_FDS" not in worker.environ()
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
    wait_for(lambda: "stopped (exit code 0)" in log.read_text(), what="a clean stop")
