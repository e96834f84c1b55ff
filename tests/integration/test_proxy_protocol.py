"""PROXY protocol listeners, end to end: a real server on loopback, raw sockets writing the
header as a balancer does (tests/proxy_wire.py), both parsers. What the header sets (client,
server, scheme, the scope extension) for HTTP, pipelined requests, WebSockets and in front of
a TLS listener; and every bad input closing its connection with no response while another
client, connected all along, goes on being served by the same worker."""

from __future__ import annotations

import json
import socket
import ssl
import time

import pytest
from websockets.sync.client import connect as ws_connect

from tests.proxy_wire import INET6, LOCAL, UNSPEC, ssl_tlv, tlv, v1, v2

from .conftest import PARSERS, close_now, on_each, read_response, recv_all, running_servers
from .test_cli import run_cli
from .test_tls import tls_args, tls_port

pytestmark = pytest.mark.timeout(120)

APP = "tests.apps.proxied:app"


def get(path: str = "/", close: bool = False, extra: str = "") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: shop.example\r\n{extra}"
            f"{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n").encode()


def connect(port: int, source: str | None = None) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one send, one segment
    if source is not None:
        sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def scopes_after(port: int, header: bytes, count: int = 1, pieces: int = 1) -> list[dict]:
    """Send header and `count` pipelined requests (in `pieces` separate sends); the scopes the
    app saw, one per response."""
    data = header + b"".join(get(f"/{n}", close=n == count - 1) for n in range(count))
    sock = connect(port)
    try:
        step = -(-len(data) // pieces)
        for at in range(0, len(data), step):
            sock.sendall(data[at:at + step])
            if pieces > 1:
                time.sleep(0.005)  # separate segments (NODELAY), so the server reads pieces
        scopes = []
        for _ in range(count):
            status, _, body = read_response(sock)
            assert status == 200
            scopes.append(json.loads(body))
        return scopes
    finally:
        close_now(sock)


def closed_silently(port: int, data: bytes, half_close: bool = False,
                    source: str | None = None) -> bool:
    """Send data (then EOF if half_close): True if the server closes with nothing written."""
    sock = connect(port, source)
    try:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return recv_all(sock, timeout=15) == b""
    finally:
        close_now(sock)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    with running_servers([APP, "--workers", "1", "--proxy-protocol", "any"],
                         tmp_path_factory.mktemp("proxy-protocol")) as servers:
        yield servers


def each(servers, action):
    """action(port) against the server of each parser; asserts they agree, returns one."""
    outcomes = on_each(servers, lambda server: action(server.port))
    values = list(outcomes.values())
    assert all(value == values[0] for value in values), f"the parsers differ: {outcomes}"
    return values[0]


# --- what the header sets -------------------------------------------------------------------

def test_v1_sets_client_and_server(servers):
    scope, = each(servers, lambda port: scopes_after(port, v1()))
    assert scope["client"] == ["203.0.113.7", 56324]
    assert scope["server"] == ["198.51.100.1", 443]
    assert scope["scheme"] == "http"
    assert scope["proxy_protocol"]["version"] == 1 and scope["proxy_protocol"]["family"] == "TCP4"


def test_v1_tcp6(servers):
    scope, = each(servers, lambda port: scopes_after(
        port, v1("TCP6", "2001:db8::7", "2001:db8::1", 1, 8443)))
    assert scope["client"] == ["2001:db8::7", 1] and scope["server"] == ["2001:db8::1", 8443]


def test_v2_proxy_with_tlvs_and_the_ssl_tlv(servers):
    header = v2(family=INET6, source="2001:db8::7", destination="2001:db8::1",
                tlvs=tlv(0x01, b"h2") + tlv(0x02, b"shop.example") + tlv(0x05, b"req-42")
                + ssl_tlv(version="TLSv1.3", cn="alice", cipher="TLS_AES_128_GCM_SHA256")
                + tlv(0xEA, b"\x01vpce-1"), crc=True)
    scope, = each(servers, lambda port: scopes_after(port, header))
    assert scope["client"] == ["2001:db8::7", 56324]
    assert scope["scheme"] == "https" and scope["tls"] is False
    proxy = scope["proxy_protocol"]
    assert (proxy["version"], proxy["command"], proxy["family"]) == (2, "PROXY", "INET6")
    assert (proxy["alpn"], proxy["authority"], proxy["unique_id"]) == ("h2", "shop.example",
                                                                      "req-42")
    assert proxy["ssl"]["client_ssl"] is True and proxy["ssl"]["version"] == "TLSv1.3"
    assert proxy["ssl"]["cn"] == "alice" and proxy["ssl"]["verify"] == 0
    assert proxy["tlvs"][str(0xEA)] == "\x01vpce-1"


def test_v2_local_uses_the_sockets_own_addresses(servers):
    def run(port):
        scope, = scopes_after(port, v2(command=LOCAL, family=UNSPEC, transport=0))
        return scope, port
    outcomes = on_each(servers, lambda server: run(server.port))
    for scope, port in outcomes.values():
        assert scope["client"][0] == "127.0.0.1" and scope["client"][1] != 56324
        assert scope["server"] == ["127.0.0.1", port]
        assert scope["proxy_protocol"]["command"] == "LOCAL"


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n", v2(family=UNSPEC, transport=0)],
                         ids=["v1", "v2"])
def test_unknown_client_is_none_and_the_server_the_sockets_own(servers, header):
    outcomes = on_each(servers, lambda server: (scopes_after(server.port, header), server.port))
    for (scope,), port in outcomes.values():
        assert scope["client"] is None and scope["server"] == ["127.0.0.1", port]


def test_pipelined_requests_after_the_header_all_carry_it(servers):
    scopes = each(servers, lambda port: scopes_after(port, v2(), count=3))
    assert [scope["path"] for scope in scopes] == ["/0", "/1", "/2"]
    assert all(scope["client"] == ["203.0.113.7", 56324] for scope in scopes)


def test_header_split_across_many_packets(servers):
    header = v2(tlvs=tlv(0x02, b"shop.example") + ssl_tlv(version="TLSv1.2"), crc=True)
    scopes = each(servers, lambda port: scopes_after(port, header, count=2,
                                                     pieces=len(header) // 3))
    assert all(scope["scheme"] == "https" for scope in scopes)
    scope, = each(servers, lambda port: scopes_after(port, v1(), pieces=len(v1())))
    assert scope["client"] == ["203.0.113.7", 56324]


def test_forwarded_headers_from_behind_the_balancer_are_not_trusted(servers):
    """127.0.0.1 (the balancer) is trusted; the client it relays is not: what the client
    wrote in X-Forwarded-* is not believed. A relayed client that is itself a trusted proxy
    is."""
    spoof = "X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n"

    def run(port, header):
        sock = connect(port)
        try:
            sock.sendall(header + get(extra=spoof, close=True))
            return json.loads(read_response(sock)[2])
        finally:
            close_now(sock)

    scope = each(servers, lambda port: run(port, v1()))
    assert scope["client"] == ["203.0.113.7", 56324] and scope["scheme"] == "http"
    scope = each(servers, lambda port: run(port, v1(source="127.0.0.1")))
    assert scope["client"] == ["1.1.1.1", 0] and scope["scheme"] == "https"


def test_websocket_carries_the_header(servers):
    def run(port):
        sock = connect(port)
        sock.sendall(v2(tlvs=ssl_tlv(version="TLSv1.3")))
        with ws_connect(f"ws://127.0.0.1:{port}/chat", sock=sock, open_timeout=10) as ws:
            scope = json.loads(ws.recv(timeout=10))
        del scope["headers"]  # (the Host and the key differ from server to server)
        return scope

    scope = each(servers, run)
    assert scope["type"] == "websocket"
    assert scope["client"] == ["203.0.113.7", 56324] and scope["scheme"] == "wss"
    assert scope["proxy_protocol"]["ssl"]["version"] == "TLSv1.3"


# --- bad input ------------------------------------------------------------------------------

BAD = [
    pytest.param(get(), False, id="no-header"),
    pytest.param(b"\x16\x03\x01\x00\xa5\x01", False, id="tls-instead-of-a-header"),
    pytest.param(v1()[:20], True, id="v1-truncated"),
    pytest.param(v2()[:10], True, id="v2-truncated-signature"),
    pytest.param(v2()[:22], True, id="v2-truncated-addresses"),
    pytest.param(v1(source_port=65536) + get(), False, id="v1-port-too-big"),
    pytest.param(v1(source_port="0443") + get(), False, id="v1-port-leading-zero"),
    pytest.param(v1(source="256.0.0.1") + get(), False, id="v1-bad-ipv4"),
    pytest.param(v1("TCP4", "2001:db8::1") + get(), False, id="v1-ipv6-in-tcp4"),
    pytest.param(v1("TCP6", "fe80::1%eth0", "::1") + get(), False, id="v1-ipv6-zone"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n" + get(), False, id="v1-extra-field"),
    pytest.param(b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n", False, id="v1-oversized"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n" + get(), False, id="v1-bare-lf"),
    pytest.param(v2(signature=b"\r\n\r\n\x00\r\nQUIT\r") + get(), False, id="v2-wrong-signature"),
    pytest.param(v2(version=1) + get(), False, id="v2-version-1"),
    pytest.param(v2(command=0x2) + get(), False, id="v2-unknown-command"),
    pytest.param(v2(family=0x4) + get(), False, id="v2-unknown-family"),
    pytest.param(v2(transport=0x2) + get(), False, id="v2-dgram"),
    pytest.param(v2(length=8) + get(), False, id="v2-length-short-of-the-addresses"),
    pytest.param(v2(length=12 + 300) + get(), True, id="v2-length-beyond-the-buffer"),
    pytest.param(v2(length=0xFFFF), False, id="v2-length-beyond-the-limit"),
    pytest.param(v2(tlvs=b"\x02\x00\x40shop") + get(), False, id="v2-tlv-overruns"),
    pytest.param(v2(tlvs=b"\x02\x00") + get(), False, id="v2-tlv-header-cut"),
    pytest.param(v2(tlvs=tlv(0x20, b"\x01\0\0\0\0\x21\x00\x30TLS")) + get(), False,
                 id="v2-ssl-sub-tlv-overruns"),
    pytest.param(v2(tlvs=tlv(0x03, b"\0\0\0\1")) + get(), False, id="v2-crc32c-mismatch"),
    pytest.param(v2(tlvs=tlv(0x05, b"x" * 129)) + get(), False, id="v2-unique-id-too-long"),
]


@pytest.mark.parametrize(("data", "half_close"), BAD)
def test_bad_input_closes_with_no_response_and_others_are_served(servers, data, half_close):
    def run(port):
        other = connect(port)  # a client served before, during and after
        try:
            other.sendall(v1() + get("/before"))
            assert read_response(other)[0] == 200
            closed = closed_silently(port, data, half_close)
            other.sendall(get("/after"))
            status, _, body = read_response(other)
            return closed, status, json.loads(body)["path"]
        finally:
            close_now(other)

    assert each(servers, run) == (True, 200, "/after")


def test_the_worker_survived_every_bad_input(servers):
    for server in servers.values():
        assert "Traceback" not in server.log()
        assert len(server.worker_pids()) == 1


def test_untrusted_peer_is_closed_and_trusted_ones_served(servers):
    """127.0.0.2 is not in the default --forwarded-allow-ips (127.0.0.1,::1)."""
    def run(port):
        return closed_silently(port, v1() + get(), source="127.0.0.2"), \
            scopes_after(port, v1())[0]["client"]

    assert each(servers, run) == (True, ["203.0.113.7", 56324])


def test_slow_header_is_closed_after_3_seconds(start_server):
    server = start_server(APP, "--workers", "1", "--proxy-protocol", "v2")
    assert closed_silently(server.port, v2()[:20])
    server.wait_log(r"PROXY protocol: 1 connection closed \(1 timed out\)")
    assert scopes_after(server.port, v2())[0]["client"] == ["203.0.113.7", 56324]


@pytest.mark.parametrize(("accept", "good", "bad"), [("v1", v1(), v2()), ("v2", v2(), v1())])
def test_one_version_refuses_the_other(start_server, accept, good, bad):
    server = start_server(APP, "--workers", "1", "--proxy-protocol", accept)
    assert closed_silently(server.port, bad + get())
    assert scopes_after(server.port, good)[0]["client"] == ["203.0.113.7", 56324]
    server.wait_log(rf"PROXY protocol: 1 connection closed \(1 {'v2' if accept == 'v1' else 'v1'}"
                    rf" header where {accept} is required\)")


# --- in front of TLS ------------------------------------------------------------------------

def tls_exchange(port: int, header: bytes, context: ssl.SSLContext) -> dict:
    """The header and the ClientHello in one segment (as a balancer relays them), then the
    handshake and one request, driven through memory BIOs over a raw socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    sock = connect(port)
    try:
        pending = header
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(pending + outgoing.read())
                pending = b""
                data = sock.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
        tls.write(get("/tls", close=True))
        sock.sendall(outgoing.read())
        answer = b""
        while True:
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    break
                incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if b"\r\n\r\n" in answer and answer.count(b"}") and answer.rstrip().endswith(b"}"):
                break
        return json.loads(answer.partition(b"\r\n\r\n")[2])
    finally:
        close_now(sock)


@pytest.mark.parametrize("http_parser", PARSERS)
def test_proxy_header_in_front_of_a_tls_listener(start_server, certs, http_parser):
    server = start_server(APP, "--workers", "1", "--http", http_parser, "--proxy-protocol", "v2",
                          *tls_args(certs), bind="https://127.0.0.1:0")
    port = tls_port(server)
    scope = tls_exchange(port, v2(tlvs=tlv(0x02, b"shop.example")), certs.client_context())
    assert scope["client"] == ["203.0.113.7", 56324] and scope["scheme"] == "https"
    assert scope["tls"] is True and scope["proxy_protocol"]["authority"] == "shop.example"
    # No header: closed before any TLS; a header then plain HTTP: the TLS stage's refusal.
    assert closed_silently(port, b"\x16\x03\x01\x00\xa5\x01\x00")
    sock = connect(port)
    try:
        sock.sendall(v2() + get())
        assert recv_all(sock).startswith(b"HTTP/1.1 400")  # "this port speaks HTTPS"
    finally:
        close_now(sock)


# --- the option -----------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "says"), [
    (["--proxy-protocol", "v3", "--bind", "127.0.0.1:0"], "--proxy-protocol: must be one of"),
    (["--proxy-protocol", "v2", "--bind", "unix:/tmp/duck-proxy-test.sock"],
     "--proxy-protocol v2: applies to TCP listeners"),
])
def test_bad_option_is_one_line_and_exit_1(args, says):
    result = run_cli(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr


def test_unix_socket_listeners_stay_plain(start_server, tmp_path):
    path = tmp_path / "plain.sock"
    server = start_server(APP, "--workers", "1", "--proxy-protocol", "v1", "--bind",
                          f"unix:{path}")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(get("/unix", close=True))
        status, _, body = read_response(sock)
    assert status == 200 and json.loads(body)["proxy_protocol"] is None
    assert closed_silently(server.port, get())  # the TCP listener requires the header
    assert scopes_after(server.port, v1())[0]["client"] == ["203.0.113.7", 56324]
