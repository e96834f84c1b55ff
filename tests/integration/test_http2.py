"""HTTP/2 end to end: real servers on loopback, real clients (h2load, curl, httpx) and scripted
frames (h2wire.py) for the well-formed cases, the trust rule of cleartext HTTP/2, and drain."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess

import httpx
import pytest
from hyperframe.frame import GoAwayFrame, RstStreamFrame

from .conftest import wait_for
from .h2wire import H2Wire
from .test_tls import tls_args, tls_port

pytestmark = pytest.mark.timeout(120)

APP = "tests.apps.http2:app"
PROTOCOL_ERROR = 1
needs_h2load = pytest.mark.skipif(shutil.which("h2load") is None,
                                  reason="h2load (nghttp2-client) is not installed")
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def h2load(url: str, *args: str) -> str:
    done = subprocess.run(["h2load", *args, url], capture_output=True, text=True, timeout=90)
    return done.stdout + done.stderr


def succeeded(output: str, total: int) -> bool:
    line = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored", output)
    assert line, output
    return line.group(2, 3, 4, 5) == (str(total), str(total), "0", "0")


@needs_h2load
def test_h2load_over_tls_and_over_h2c_from_a_trusted_peer(start_server, certs):
    server = start_server(APP, "--workers", "2", *tls_args(certs), "--bind",
                          "https://127.0.0.1:0", bind="127.0.0.1:0")
    output = h2load(f"https://127.0.0.1:{tls_port(server)}/", "-n", "3000", "-c", "6", "-m",
                    "20")
    assert "Application protocol: h2" in output and succeeded(output, 3000), output
    output = h2load(f"http://127.0.0.1:{server.port}/", "-n", "3000", "-c", "6", "-m", "20")
    assert "Application protocol: h2c" in output and succeeded(output, 3000), output
    # 1 MiB down per request, many at once: the windows, the frames, the drain of a transport
    output = h2load(f"http://127.0.0.1:{server.port}/big?size=1048576", "-n", "60", "-c", "2",
                    "-m", "10")
    assert succeeded(output, 60), output


@needs_curl
def test_h2c_is_only_for_trusted_peers(start_server):
    """127.0.0.2 is trusted, 127.0.0.1 is not: the same preface gets HTTP/2 from one and an
    HTTP/1.1 refusal from the other."""
    server = start_server(APP, "--workers", "1", "--forwarded-allow-ips", "127.0.0.2",
                          bind="127.0.0.1:0")
    url = f"http://127.0.0.1:{server.port}/"

    def curl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-s", "-S", "-m", "10", "--http2-prior-knowledge",
                               "-o", "-", "-w", "\\n%{http_version} %{http_code}", *args, url],
                              capture_output=True, text=True, timeout=30)

    trusted = curl("--interface", "127.0.0.2")
    assert trusted.stdout.startswith("2 ") and trusted.stdout.endswith("\n2 200"), trusted
    untrusted = curl()
    assert not untrusted.stdout.endswith(" 200") and "\n2 " not in untrusted.stdout, untrusted
    # The raw preface from the untrusted peer: HTTP/1.1's answer and a close, no frames.
    wire = H2Wire(server.port)
    wire.closed_within(10, keep=True)
    assert wire.closed and wire.buffer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")
    wire.close()
    raw = subprocess.run(["curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_version}",
                          url], capture_output=True, text=True)
    assert raw.stdout == "1.1"  # plain HTTP/1.1 is still served to everyone


def test_http2_off_means_http_1_1_only(start_server, certs):
    server = start_server(APP, "--workers", "1", "--http2", "false", *tls_args(certs),
                          bind="https://127.0.0.1:0")
    with httpx.Client(http2=True, verify=certs.client_context()) as client:
        response = client.get(f"https://localhost:{tls_port(server)}/")
    assert response.http_version == "HTTP/1.1" and response.text.startswith("1.1 ")


def test_httpx_one_mebibyte_both_ways_and_many_streams(start_server, certs):
    server = start_server(APP, "--workers", "1", *tls_args(certs), bind="https://127.0.0.1:0")
    base = f"https://localhost:{tls_port(server)}"
    body = bytes(range(256)) * 4096  # 1 MiB

    async def run():
        async with httpx.AsyncClient(http2=True, verify=certs.client_context(),
                                     timeout=30) as client:
            up = await client.post(f"{base}/echo", content=body)
            down = await client.get(f"{base}/big?size={1 << 20}")
            many = await asyncio.gather(*(client.post(f"{base}/echo", content=b"%d" % i * 1000)
                                          for i in range(200)))
            return up, down, many

    up, down, many = asyncio.run(run())
    assert up.http_version == "HTTP/2" and up.status_code == 200 and up.content == body
    assert down.status_code == 200 and len(down.content) == 1 << 20
    assert [r.content for r in many] == [b"%d" % i * 1000 for i in range(200)]
    assert {r.http_version for r in many} == {"HTTP/2"}


def test_scope_access_log_and_proxy_headers_per_stream(start_server, tmp_path):
    log_path = tmp_path / "access.log"
    server = start_server("tests.apps.basic:app", "--workers", "1", "--access-logfile",
                          str(log_path), "--access-log-json", bind="127.0.0.1:0")
    wire = H2Wire(server.port)
    wire.request(1, "/scope?a=1")
    wire.send_frames(wire.headers(3, "/scope", extra=[(b"x-forwarded-for", b"203.0.113.9"),
                                                      (b"cookie", b"a=1"), (b"cookie", b"b=2")]))
    status, head, body, _ = wire.response(1)
    scope = json.loads(body)
    assert status == 200 and head[b"server"] == b"duck-prefork" and b"date" in head
    assert scope["http_version"] == "2" and scope["query_string"] == "a=1"
    assert ["host", "localhost"] in scope["headers"]
    status, _, body, _ = wire.response(3)
    scope = json.loads(body)
    assert scope["client"][0] == "203.0.113.9"  # 127.0.0.1 is trusted by default
    assert ["cookie", "a=1; b=2"] in scope["headers"]
    wire.close()
    lines = wait_for(lambda: log_path.exists() and len(log_path.read_text().splitlines()) >= 2
                     and log_path.read_text().splitlines(), what="two access lines")
    records = [json.loads(line) for line in lines]
    assert {r["path"] for r in records} == {"/scope"}
    assert all("2" in str(r.get("protocol", r.get("http_version", "2"))) for r in records)


def test_trailers_and_connection_headers_dropped(start_server):
    server = start_server(APP, "--workers", "1", bind="127.0.0.1:0")
    wire = H2Wire(server.port)
    wire.request(1, "/trailers")
    status, head, body, trailers = wire.response(1)
    assert status == 200 and body == b"body" and head[b"content-type"] == b"text/plain"
    assert b"connection" not in head
    assert trailers == {b"grpc-status": b"0", b"x-checksum": b"abc"}
    wire.close()
    status, _, body = server.request("GET", "/trailers")  # HTTP/1.1: not offered
    assert status == 200 and body == b"body"


def test_request_limits_per_stream(start_server):
    server = start_server(APP, "--workers", "1", "--limit-request-body", "1000",
                          "--limit-request-line", "100", bind="127.0.0.1:0")
    wire = H2Wire(server.port)
    wire.request(1, "/echo", "POST", b"x" * 2000)
    wire.request(3, "/" + "a" * 200)
    wire.request(5, "/echo", "POST", b"y" * 10)
    assert wire.response(1)[0] == 413
    assert wire.response(3)[0] == 414
    assert wire.response(5)[:3:2] == (200, b"y" * 10)  # the connection goes on
    wire.close()


def test_a_malformed_request_is_reset_and_the_connection_goes_on(start_server):
    """RFC 9113 8.1.1: a stream error, not the connection's end."""
    server = start_server(APP, "--workers", "1", bind="127.0.0.1:0")
    wire = H2Wire(server.port)
    wire.send_frames(wire.headers(1, "/", extra=[(b"X-Upper", b"1")]),
                     wire.headers(3, "/", extra=[(b"connection", b"close")]))
    wire.request(5, "/echo", "POST", b"z" * 10)
    assert wire.response(5)[:3:2] == (200, b"z" * 10)
    resets = {f.stream_id: f.error_code for f in wire.frames if isinstance(f, RstStreamFrame)}
    assert resets == {1: PROTOCOL_ERROR, 3: PROTOCOL_ERROR}
    wire.close()


def test_drain_goaway_lets_streams_in_flight_finish(start_server):
    server = start_server(APP, "--workers", "1", "--graceful-timeout", "20", bind="127.0.0.1:0")
    wire = H2Wire(server.port)
    wire.request(1, "/slow?delay=2")
    wire.request(3, "/slow?delay=2")
    wire.ping()  # both streams have started
    server.send_signal(signal.SIGTERM)
    goaway = wire.goaway()
    assert goaway is not None and goaway.last_stream_id == 3 and goaway.error_code == 0
    wire.request(5, "/")  # after the GOAWAY: refused, the client may retry it elsewhere
    refused = wire.wait(lambda frames: [f for f in frames if isinstance(f, RstStreamFrame)
                                        and f.stream_id == 5], what="stream 5 refused")
    assert refused[0].error_code == 7  # REFUSED_STREAM
    assert wire.response(1)[:3:2] == (200, b"slow")
    assert wire.response(3)[:3:2] == (200, b"slow")
    assert wire.closed_within(10, keep=True)
    goaways = [f for f in wire.frames if isinstance(f, GoAwayFrame)]
    assert len(goaways) == 2 and goaways[-1].last_stream_id == 3  # the final one, then the close
    assert server.wait_exit(30) == 0
    assert "draining: 1 connection open, 2 requests in flight" in server.log()


def test_lame_duck_sends_goaway_after_each_stream(start_server):
    # As HTTP/1.1 answers Connection: close in the lame duck (TERM with --drain-delay).
    server = start_server(APP, "--workers", "1", "--drain-delay", "60", bind="127.0.0.1:0")

    def goaway_after_one_stream() -> bool:
        wire = H2Wire(server.port)
        try:
            wire.request(1, "/")
            assert wire.response(1)[0] == 200
            return any(isinstance(frame, GoAwayFrame) and frame.last_stream_id == 1
                       for frame in wire.frames)
        finally:
            wire.close()

    assert not goaway_after_one_stream()
    server.send_signal(signal.SIGTERM)
    server.wait_log("lame duck")
    wait_for(goaway_after_one_stream, what="a GOAWAY after the stream, in the lame duck")
    server.send_signal(signal.SIGTERM)  # a second TERM: the graceful stop at once
    assert server.wait_exit(30) == 0


def test_graceful_timeout_ends_a_stream_that_does_not_finish(start_server):
    server = start_server(APP, "--workers", "1", "--graceful-timeout", "1", bind="127.0.0.1:0")
    wire = H2Wire(server.port)
    wire.request(1, "/slow?delay=60")
    wire.ping()
    server.send_signal(signal.SIGTERM)
    assert wire.goaway() is not None
    assert wire.closed_within(15)
    assert server.wait_exit(30) == 0


def test_max_streams_drains_the_connection(start_server):
    server = start_server(APP, "--workers", "1", "--http2-max-streams", "3", bind="127.0.0.1:0")
    wire = H2Wire(server.port)
    for stream_id in (1, 3, 5):
        wire.request(stream_id, "/")
    goaway = wire.goaway()
    assert goaway.last_stream_id == 5 and goaway.error_code == 0
    assert [wire.response(i)[0] for i in (1, 3, 5)] == [200, 200, 200]
    assert wire.closed_within(10)
