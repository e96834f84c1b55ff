"""The PROXY header stage (net/proxy_stage.py) over fake transports: the facts it sets and what
the ASGI scope then says, trust, the close with no response for every failure, the timeout in
the sweep, a header split byte by byte, requests pipelined behind it, the failure summary."""

from __future__ import annotations

import asyncio
import logging

import pytest

from duck_prefork import cli
from duck_prefork.asgi.forwarded import ProxyHeaders
from duck_prefork.config import ConfigError
from duck_prefork.logs import log
from duck_prefork.net.proxy_stage import HEADER_TIMEOUT, ProxyProtocol
from tests.proxy_wire import INET6, LOCAL, UNIX, UNSPEC, ssl_tlv, tlv, v1, v2

from .fakes import FakeTransport, connect, split_response
from .test_stages import GET, finish, http_plan, server_state

pytestmark = pytest.mark.timeout(30)

PEER = ("10.0.0.1", 5555)  # FakeTransport's peer
SOCKET = ("127.0.0.1", 8000)  # and its own address


def serve(data: bytes | list[bytes], accept: str = "any", trusted: str = "10.0.0.0/8",
          headers_trusted: str | None = None):
    """Feed `data` (or its pieces) to a connection on a --proxy-protocol listener; returns
    (scopes the app saw, the transport, the ProxyProtocol)."""
    scopes: list = []
    proxy = ProxyProtocol(accept, ProxyHeaders(trusted).trusts)
    transport = FakeTransport()

    async def run():
        state = server_state(scopes)
        if headers_trusted is not None:
            state.handler.proxy = ProxyHeaders(headers_trusted)
        staged = connect(http_plan(state, proxy.stage).protocol_factory()(), transport)
        for piece in data if isinstance(data, list) else [data]:
            transport.protocol.data_received(piece)
        await finish(state)
        del staged

    asyncio.run(run())
    return scopes, transport, proxy


def assert_closed_silently(transport: FakeTransport, scopes: list) -> None:
    assert transport.closed and transport.written == b"" and scopes == []


def test_v1_sets_client_server_and_the_extension():
    scopes, transport, _ = serve(v1() + GET)
    scope, = scopes
    assert scope["client"] == ("203.0.113.7", 56324)
    assert scope["server"] == ("198.51.100.1", 443)
    assert scope["scheme"] == "http"
    assert scope["extensions"]["proxy_protocol"]["version"] == 1
    assert split_response(transport.written)[2] == b"ok"


def test_v2_tlvs_and_the_ssl_tlv():
    header = v2(family=INET6, source="2001:db8::7", destination="2001:db8::1",
                tlvs=tlv(0x01, b"h2") + tlv(0x02, b"shop.example") + tlv(0x05, b"id-1")
                + ssl_tlv(version="TLSv1.3", cn="alice"), crc=True)
    scopes, _, _ = serve(header + GET)
    scope, = scopes
    assert scope["client"] == ("2001:db8::7", 56324) and scope["scheme"] == "https"
    extension = scope["extensions"]["proxy_protocol"]
    assert (extension["alpn"], extension["authority"], extension["unique_id"]) == \
        (b"h2", "shop.example", b"id-1")
    assert extension["ssl"]["version"] == "TLSv1.3" and extension["ssl"]["cn"] == "alice"
    assert "tls" not in scope["extensions"]  # the balancer's TLS, not ours


def test_each_request_gets_its_own_copy_of_the_extensions():
    scopes, _, _ = serve(v2() + GET + GET)
    first, second = scopes
    assert first["extensions"] == second["extensions"]
    assert first["extensions"] is not second["extensions"]


@pytest.mark.parametrize(("header", "client", "server"), [
    (v2(command=LOCAL, family=UNSPEC, transport=0), PEER, SOCKET),  # health check: the socket's
    (v2(family=UNSPEC, transport=0), None, SOCKET),  # the client is unknown
    (b"PROXY UNKNOWN\r\n", None, SOCKET),
    (v2(family=UNIX, source="/c", destination="/run/lb.sock"), None, ("/run/lb.sock", None)),
])
def test_headers_without_client_addresses(header, client, server):
    scopes, _, _ = serve(header + GET)
    assert (scopes[0]["client"], scopes[0]["server"]) == (client, server)


def test_split_byte_by_byte_and_pipelined_requests_after_it():
    data = v2(tlvs=tlv(0x01, b"http/1.1"), crc=True) + GET + GET
    scopes, transport, _ = serve([bytes((byte,)) for byte in data])
    assert len(scopes) == 2 and all(s["client"] == ("203.0.113.7", 56324) for s in scopes)
    assert transport.written.count(b"HTTP/1.1 200 OK") == 2


@pytest.mark.parametrize(("data", "accept"), [
    (GET, "any"),  # no header
    (v1() + GET, "v2"),
    (v2() + GET, "v1"),
    (v1(source_port=65536) + GET, "any"),
    (v2(family=9) + GET, "any"),
    (v2(tlvs=b"\x01\x00\x09h2") + GET, "any"),
    (v2(length=5000), "any"),
])
def test_bad_headers_close_with_no_response(data, accept):
    scopes, transport, proxy = serve(data, accept)
    assert_closed_silently(transport, scopes)
    assert sum(proxy.failures.values()) == 1


def test_an_untrusted_peer_is_closed_at_accept():
    scopes, transport, proxy = serve(v1() + GET, trusted="192.0.2.0/24")
    assert_closed_silently(transport, scopes)
    assert proxy.failures == {"untrusted peer": 1}


def test_forwarded_headers_count_only_when_the_proxied_client_is_trusted():
    spoof = (b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n"
             b"X-Forwarded-Proto: https\r\n\r\n")
    # The balancer (10.0.0.1) is trusted, the client behind it (203.0.113.7) is not: what the
    # client wrote is not believed.
    scopes, _, _ = serve(v1() + spoof, headers_trusted="10.0.0.0/8")
    assert scopes[0]["client"] == ("203.0.113.7", 56324) and scopes[0]["scheme"] == "http"
    # A client that is itself a trusted proxy (another balancer tier) is believed.
    scopes, _, _ = serve(v1() + spoof, headers_trusted="10.0.0.0/8,203.0.113.0/24")
    assert scopes[0]["client"] == ("1.1.1.1", 0) and scopes[0]["scheme"] == "https"
    # An unknown client is not trusted either.
    scopes, _, _ = serve(b"PROXY UNKNOWN\r\n" + spoof, headers_trusted="10.0.0.0/8")
    assert scopes[0]["client"] is None and scopes[0]["scheme"] == "http"


def test_eof_before_the_header_ends_closes():
    async def run():
        proxy = ProxyProtocol("any", ProxyHeaders("10.0.0.0/8").trusts)
        state = server_state()
        transport = FakeTransport()
        staged = connect(http_plan(state, proxy.stage).protocol_factory()(), transport)
        staged.data_received(v1()[:10])
        staged.eof_received()
        assert transport.closed and transport.written == b""
        assert proxy.failures == {"truncated header": 1}

    asyncio.run(run())


def test_a_slow_header_is_closed_by_the_sweep_after_its_timeout():
    async def run():
        proxy = ProxyProtocol("any", ProxyHeaders("10.0.0.0/8").trusts)
        state = server_state()
        transport = FakeTransport()
        staged = connect(http_plan(state, proxy.stage).protocol_factory()(), transport)
        staged.data_received(v2()[:20])
        now = state.loop.time()
        staged.stage_started = now - HEADER_TIMEOUT + 0.1  # accepted almost 3 s ago
        state.tick(now)
        assert not transport.closed
        staged.stage_started = now - HEADER_TIMEOUT
        state.tick(now)
        assert transport.closed and transport.written == b""
        staged.connection_lost(None)
        assert proxy.failures == {"timed out": 1}
        assert not state.staging

    asyncio.run(run())


def test_failures_are_summarized_once_per_interval(caplog):
    proxy = ProxyProtocol("any", ProxyHeaders("10.0.0.0/8").trusts)
    proxy.failed("untrusted peer")
    proxy.failed("untrusted peer")
    proxy.failed("no PROXY header")
    with caplog.at_level(logging.INFO, logger=log.name):
        proxy.flush(100.0)
        proxy.failed("no PROXY header")
        proxy.flush(101.0)  # not yet
    lines = [r.getMessage() for r in caplog.records if "PROXY protocol" in r.getMessage()]
    assert lines == ["PROXY protocol: 3 connections closed (2 untrusted peer, 1 no PROXY "
                     "header); next summary in 60 s at the earliest"]


# --- the option -----------------------------------------------------------------------------

def test_the_option_from_the_command_line_the_environment_and_its_default():
    assert cli.parse_args([], environ={}).proxy_protocol == "off"
    assert cli.parse_args(["--proxy-protocol", "V2"], environ={}).proxy_protocol == "v2"
    assert cli.parse_args([], environ={"DUCK_PREFORK_PROXY_PROTOCOL": "any"}).proxy_protocol \
        == "any"
    config = cli.parse_args(["--proxy-protocol", "v1", "--bind", "unix:/run/a.sock", "--bind",
                             "127.0.0.1:0"], environ={})
    assert config.proxy_protocol == "v1"  # the unix socket stays plain


@pytest.mark.parametrize(("argv", "environ", "message"), [
    (["--proxy-protocol", "v3"], {}, "--proxy-protocol: must be one of off, v1, v2, any"),
    ([], {"DUCK_PREFORK_PROXY_PROTOCOL": "on"}, "DUCK_PREFORK_PROXY_PROTOCOL: must be one of"),
    (["--proxy-protocol", "any", "--bind", "unix:/run/a.sock"], {},
     "--proxy-protocol any: applies to TCP listeners, and every --bind is a unix socket"),
])
def test_bad_values_are_one_line_naming_the_option(argv, environ, message):
    with pytest.raises(ConfigError) as info:
        cli.parse_args(argv, environ=environ)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
