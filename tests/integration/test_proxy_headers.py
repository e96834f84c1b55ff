"""Behind a proxy, against a real server: forwarded headers count only from trusted peers."""

import json
import os
import subprocess
import sys

import pytest

from duck_prefork import build

from .conftest import ROOT

pytestmark = pytest.mark.timeout(60)

APP = "tests.apps.basic:app"
FORWARDED = {
    "Host": "internal:8000",
    "X-Forwarded-For": "1.1.1.1, 203.0.113.7",  # 1.1.1.1: what a client wrote, not believed
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "example.com",
}


def scope_seen(server, headers=FORWARDED) -> dict:
    status, _, body = server.request("GET", "/scope", headers=headers)
    assert status == 200
    return json.loads(body)


def host_of(scope: dict) -> list[str]:
    return [value for name, value in scope["headers"] if name == "host"]


def assert_rewritten(scope: dict) -> None:
    assert scope["client"] == ["203.0.113.7", 0]
    assert scope["scheme"] == "https"
    assert host_of(scope) == ["example.com"]


def assert_untouched(scope: dict) -> None:
    assert scope["client"][0] == "127.0.0.1"
    assert scope["client"][1] > 0  # the real peer port
    assert scope["scheme"] == "http"
    assert host_of(scope) == ["internal:8000"]


def test_trusted_loopback_peer_rewrites_client_scheme_and_host(start_server):
    server = start_server(APP, "--workers", "1")
    assert_rewritten(scope_seen(server))


def test_forwarded_header_from_trusted_peer(start_server):
    server = start_server(APP, "--workers", "1")
    scope = scope_seen(server, {
        "Host": "internal:8000",
        "Forwarded": 'for=1.1.1.1;proto=http, for="[2001:db8::7]:4711";proto=https;'
                     'host="example.com"',
        "X-Forwarded-For": "198.51.100.1",  # Forwarded wins
    })
    assert scope["client"] == ["2001:db8::7", 4711]
    assert scope["scheme"] == "https"
    assert host_of(scope) == ["example.com"]


def test_untrusted_peer_is_left_untouched(start_server):
    server = start_server(APP, "--workers", "1", "--forwarded-allow-ips", "10.0.0.1")
    assert_untouched(scope_seen(server))


def test_no_proxy_headers_leaves_them_untouched(start_server):
    server = start_server(APP, "--workers", "1", "--no-proxy-headers")
    assert_untouched(scope_seen(server))


def test_environment_sets_the_trusted_peers(start_server):
    server = start_server(APP, "--workers", "1",
                          env={"DUCK_PREFORK_FORWARDED_ALLOW_IPS": "10.0.0.0/8"})
    assert_untouched(scope_seen(server))


def test_command_line_wins_over_the_environment(start_server):
    server = start_server(APP, "--workers", "1", "--forwarded-allow-ips", "127.0.0.0/8",
                          env={"DUCK_PREFORK_FORWARDED_ALLOW_IPS": "10.0.0.0/8"})
    assert_rewritten(scope_seen(server))


def test_malformed_headers_are_ignored_and_the_worker_keeps_serving(start_server):
    server = start_server(APP, "--workers", "1")
    pid = scope_seen(server)["pid"]
    scope = scope_seen(server, {"Host": "internal:8000", "Forwarded": 'for="[::1;proto=ftp',
                                "X-Forwarded-Host": "a b"})
    assert_untouched(scope)
    scope = scope_seen(server, {"Host": "internal:8000", "X-Forwarded-For": "not-an-ip",
                                "X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "x/y"})
    assert_untouched(scope)
    assert scope["pid"] == pid


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith("DUCK_PREFORK_") or k == build.PURE_ENV}  # the build stays
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "duck_prefork", *args, "--bind", "127.0.0.1:0"],
                          cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args, env, names", [
    (["--forwarded-allow-ips", "nonsense"], {}, "--forwarded-allow-ips"),
    (["--forwarded-allow-ips", "10.0.0.1,10.0.0.0/99"], {}, "--forwarded-allow-ips"),
    ([], {"DUCK_PREFORK_FORWARDED_ALLOW_IPS": "nonsense"}, "DUCK_PREFORK_FORWARDED_ALLOW_IPS"),
])
def test_bad_forwarded_allow_ips_is_one_line_and_exit_1(args, env, names):
    result = run_cli(APP, *args, env=env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("duck-prefork: error:")
    assert names in lines[0]
    assert "nonsense" in lines[0] or "10.0.0.0/99" in lines[0]
