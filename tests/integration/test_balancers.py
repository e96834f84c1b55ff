"""docs/deploy.md's configurations, started for real: HAProxy (health checks on --ready-path,
PROXY protocol v2 to the servers) in front of two duck-prefork hosts on 127.0.0.2 and
127.0.0.3, one of them drained under steady load: no request fails. nginx with upstream
keep-alive, requests spaced around the idle timeout: no 502. The Kubernetes manifest's command
line is a valid configuration whose grace period covers the drain. (bench/balancer_drain.py
runs the HAProxy scenario against uvicorn.)"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from . import balancers
from .balancers import HOSTS, guide_block, guide_command

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not os.path.exists(balancers.HAPROXY) or
                       not os.path.exists(balancers.NGINX),
                       reason="haproxy and nginx (the OS packages; .ci/run installs them)"),
]


def test_haproxy_drains_one_host_under_load_with_no_failed_request(start_server, tmp_path):
    port = balancers.free_port(HOSTS)
    frontend = balancers.free_port()
    args = guide_command("haproxy", HOSTS[0], port)
    assert "--proxy-protocol" in args  # every connection, checks included, starts with PROXY v2
    servers = [start_server(*guide_command("haproxy", host, port), bind=None,
                            env={"BALANCED_HOST": host}) for host in HOSTS]
    haproxy = balancers.start_haproxy(tmp_path, port, frontend)
    try:
        draining = servers[0]
        load = balancers.stop_one_under_load(
            frontend, lambda: draining.send_signal(signal.SIGTERM),
            lambda: draining.wait_exit(timeout=60))
    finally:
        haproxy.stop()
    print(f"HAProxy, duck-prefork: {load.sent} requests, {len(load.failures)} failed, "
          f"served {dict(load.served)}")
    assert load.failures == [], load.failures[:10]
    assert draining.wait_exit() == 0
    assert "--drain-delay over: graceful stop" in draining.log()


def test_haproxy_with_the_agent_check_drains_with_no_failed_request(start_server, tmp_path):
    port = balancers.free_port(HOSTS)
    agent_port = balancers.free_port(HOSTS)
    frontend = balancers.free_port()
    servers = [start_server(*guide_command("haproxy", host, port),
                            "--agent-bind", f"{host}:{agent_port}", bind=None,
                            env={"BALANCED_HOST": host}) for host in HOSTS]
    haproxy = balancers.start_haproxy(tmp_path, port, frontend, agent_port=agent_port)
    try:
        draining = servers[0]
        load = balancers.stop_one_under_load(
            frontend, lambda: draining.send_signal(signal.SIGTERM),
            lambda: draining.wait_exit(timeout=60))
    finally:
        haproxy.stop()
    assert load.failures == [], load.failures[:10]
    assert draining.wait_exit() == 0
    assert "Server app/app1 enters drain state" in haproxy.log()  # the agent said so


def test_nginx_upstream_keep_alive_gives_no_502_around_the_idle_timeout(start_server,
                                                                       tmp_path):
    """The guide's ratio, scaled down 30 times so that the test waits seconds, not minutes:
    nginx's upstream keepalive_timeout 60 s -> 2 s, the server's --keep-alive 75 s -> 2.5 s.
    POSTs, which nginx does not retry on another connection: a connection closed by the server
    as nginx reuses it would be a 502."""
    port = balancers.free_port(HOSTS)
    frontend = balancers.free_port()
    for host in HOSTS:
        args = guide_command("nginx", host, port, workers=1)
        assert "--keep-alive" not in args  # the default, 75 s, scaled here:
        start_server(*args, "--keep-alive", "2.5", bind=None, env={"BALANCED_HOST": host})
    nginx = balancers.start_nginx(
        tmp_path, port, frontend,
        edit=lambda text: text.replace("keepalive_timeout 60s;", "keepalive_timeout 2s;"))
    statuses = []
    try:
        conn = http.client.HTTPConnection("127.0.0.1", frontend, timeout=20)
        # Gaps below, at and past both idle timeouts; each POST is on the client's same
        # connection, and nginx picks one of its idle upstream connections for it.
        for gap in (0.0, 1.8, 1.95, 2.0, 2.05, 2.2, 2.45, 2.5, 2.55, 2.7, 3.0, 0.5, 2.5):
            time.sleep(gap)  # the scenario: requests spaced around the idle timeouts
            for _ in range(2):
                conn.request("POST", "/work", body=b"x" * 100)
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
        conn.close()
    finally:
        nginx.stop()
    assert statuses == [200] * len(statuses), (statuses, nginx.log())
    error_log = (tmp_path / "nginx-error.log").read_text()
    assert "upstream prematurely closed" not in error_log


def test_kubernetes_manifest_runs_and_its_grace_period_covers_the_drain(tmp_path):
    manifest = guide_block("config", "kubernetes")
    args = json.loads(re.search(r"^\s*args: (\[.*\])$", manifest, re.M).group(1))
    args[0] = balancers.APP
    result = subprocess.run([sys.executable, "-m", "duck_prefork", *args, "--check-config"],
                            cwd=balancers.ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config = dict(line.split(" = ", 1) for line in result.stdout.splitlines()
                  if " = " in line)
    grace = int(re.search(r"terminationGracePeriodSeconds: (\d+)", manifest).group(1))
    from duck_prefork.worker.process import STOP_ALLOWANCE

    assert float(config["drain-delay"]) + float(config["graceful-timeout"]) + STOP_ALLOWANCE \
        <= grace
    for probe in ("ready-path", "health-path"):
        assert f"path: {json.loads(config[probe])}," in manifest
