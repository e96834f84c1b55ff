"""Connection stages and the protocol switch (net/stages.py) over fake transports: the no-stage
path, test stages that read a header and rewrite the facts the ASGI scope reads, stages in
sequence, a stage that replaces the transport (as TLS will), the protocol choice, the sweep's
timeouts and the drain, the WebSocket upgrade through the same switch; and once over a real
uvloop socket."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
import uvloop
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request
from wsproto.frame_protocol import FrameProtocol

from duck_prefork.asgi.pipeline import ASGI
from duck_prefork.asgi.websocket import WebSocketSession, WebSocketUpgrade
from duck_prefork.http1.connection import HttpConnection, ServerState
from duck_prefork.http1.parser_h11 import H11Parser
from duck_prefork.logs import log
from duck_prefork.net.stages import (
    DRAIN_STAGE_TIMEOUT,
    HTTP_1_1,
    ConnectionFacts,
    ConnectionPlan,
    Stage,
    StagedConnection,
    switch_protocol,
)

from .fakes import FakeTransport, FakeUnixTransport, StallingTransport, connect, split_response

pytestmark = pytest.mark.timeout(30)

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


# --- test stages ----------------------------------------------------------------------------

class FromLine(Stage):
    """A PROXY-v1-like header for the tests: b"FROM host port scheme\\r\\n", at most 64 bytes.
    Rewrites the client address and the scheme; anything else ends the connection."""

    name = "from-line"

    def __init__(self, timeout: float = 3.0) -> None:
        self.timeout = timeout
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        line, sep, rest = self.buffer.partition(b"\r\n")
        if not sep:
            if len(self.buffer) > 64:
                self.link.fail("no header within 64 bytes")
            return
        parts = line.split(b" ")
        if len(parts) != 4 or parts[0] != b"FROM" or not parts[2].isdigit():
            self.link.fail("a malformed header")
            return
        facts = self.link.facts
        facts.client = (parts[1].decode("ascii"), int(parts[2]))
        facts.scheme = parts[3].decode("ascii")
        self.link.finish(rest)


class Prefix(Stage):
    """Reads a fixed number of bytes (kept in `seen`) and passes the rest on."""

    name = "prefix"

    def __init__(self, size: int, timeout: float = 0.0, seen: list | None = None) -> None:
        self.size = size
        self.timeout = timeout
        self.buffer = b""
        self.seen = seen if seen is not None else []

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= self.size:
            self.seen.append(self.buffer[:self.size])
            self.link.finish(self.buffer[self.size:])


class Wrap(Stage):
    """Stands for TLS: at its start it puts a transport of its own over the connection's (a
    fresh FakeTransport, kept in `wrapped`), learns the TLS facts and ALPN's choice, and goes
    on with that transport."""

    name = "wrap"

    def __init__(self, wrapped: list, alpn: str | None = None) -> None:
        self.wrapped = wrapped
        self.alpn = alpn

    def start(self, link: StagedConnection, data: bytes) -> None:
        super().start(link, data)
        inner = FakeTransport()
        self.wrapped.append(inner)
        link.facts.scheme = "https"
        link.facts.tls = {"version": "TLSv1.3"}
        if self.alpn:
            link.facts.protocol = self.alpn
        link.finish(b"", transport=inner)

    def data_received(self, data: bytes) -> None:
        raise AssertionError("the handshake's bytes are the TLS protocol's, not the stage's")


class PauseThenWait(Stage):
    """Pauses reading, and finishes when told to (finish_now)."""

    name = "pause"

    def start(self, link: StagedConnection, data: bytes) -> None:
        super().start(link, data)
        link.pause_reading()

    def data_received(self, data: bytes) -> None:
        pass

    def finish_now(self, data: bytes = b"") -> None:
        self.link.finish(data)


class Recorder:
    """A Successor that records how it was handed the connection."""

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def take_over(self, transport, facts, read_paused, write_paused) -> None:
        self.calls.append(("take_over", transport, facts, read_paused, write_paused))

    def data_received(self, data: bytes) -> None:
        self.calls.append(("data_received", data))


# --- helpers --------------------------------------------------------------------------------

def scope_recording_app(scopes: list):
    async def app(scope, receive, send):
        scopes.append(scope)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


def server_state(scopes: list | None = None, upgrade=None) -> ServerState:
    app = scope_recording_app(scopes if scopes is not None else [])
    return ServerState(app, ASGI(), H11Parser, 5.0, timing=False, upgrade=upgrade)


def http_plan(state: ServerState, *stages, **protocols) -> ConnectionPlan:
    table = {HTTP_1_1: lambda: HttpConnection(state), **protocols}
    return ConnectionPlan(stages, table, state)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def finish(state: ServerState) -> None:
    await settle()
    while state.tasks:
        await asyncio.wait(list(state.tasks), timeout=5)
        await settle()


# --- the facts ------------------------------------------------------------------------------

def test_facts_of_a_tcp_and_of_a_unix_connection():
    tcp = ConnectionFacts.of(FakeTransport())
    assert (tcp.client, tcp.server, tcp.scheme, tcp.protocol) == \
        (("10.0.0.1", 5555), ("127.0.0.1", 8000), "http", HTTP_1_1)
    assert tcp.tls is None and tcp.proxy is None
    unix = ConnectionFacts.of(FakeUnixTransport())
    assert (unix.client, unix.server) == (None, ("/run/app.sock", None))


# --- the no-stage path ----------------------------------------------------------------------

def test_with_no_stage_the_acceptor_gets_the_protocol_itself():
    async def run():
        scopes: list = []
        state = server_state(scopes)
        factory = http_plan(state).protocol_factory()
        connection = connect(factory(), FakeTransport())
        assert type(connection) is HttpConnection  # nothing in between
        assert not state.staging and state.connections == {connection}
        connection.data_received(GET)
        await finish(state)
        assert split_response(connection.transport.written)[2] == b"ok"
        scope = scopes[0]
        assert (scope["client"], scope["server"], scope["scheme"]) == \
            (("10.0.0.1", 5555), ("127.0.0.1", 8000), "http")

    asyncio.run(run())


# --- stages ---------------------------------------------------------------------------------

def test_a_stage_rewrites_the_facts_the_scope_reads_and_hands_on_the_rest():
    async def run():
        scopes: list = []
        state = server_state(scopes)
        transport = FakeTransport()
        staged = connect(http_plan(state, FromLine).protocol_factory()(), transport)
        assert type(staged) is StagedConnection and state.staging == {staged}
        assert not state.connections
        staged.data_received(b"FROM 203.0.113.7 4242 https\r\n" + GET)  # one read, both
        connection = transport.protocol
        assert type(connection) is HttpConnection and connection.transport is transport
        assert connection.facts is staged.facts  # the same facts, carried
        assert not state.staging and state.connections == {connection}
        await finish(state)
        assert split_response(transport.written)[2] == b"ok"  # the request was replayed
        scope = scopes[0]
        assert scope["client"] == ("203.0.113.7", 4242) and scope["scheme"] == "https"
        assert scope["server"] == ("127.0.0.1", 8000)

    asyncio.run(run())


def test_a_stage_fed_byte_by_byte():
    async def run():
        scopes: list = []
        state = server_state(scopes)
        transport = FakeTransport()
        staged = connect(http_plan(state, FromLine).protocol_factory()(), transport)
        for byte in b"FROM ::1 80 http\r\n" + GET:
            transport.protocol.data_received(bytes([byte]))
        assert transport.protocol is not staged
        await finish(state)
        assert split_response(transport.written)[2] == b"ok"
        assert scopes[0]["client"] == ("::1", 80)

    asyncio.run(run())


def test_stages_run_in_order_each_given_what_the_one_before_left():
    async def run():
        seen: list = []
        scopes: list = []
        state = server_state(scopes)
        transport = FakeTransport()
        plan = http_plan(state, lambda: Prefix(4, seen=seen), FromLine)
        staged = connect(plan.protocol_factory()(), transport)
        staged.data_received(b"ab")
        assert type(staged.stage) is Prefix
        staged.data_received(b"cdFROM 192.0.2.1 1 http\r\nGET /x HT")
        assert seen == [b"abcd"]
        assert type(transport.protocol) is HttpConnection
        transport.protocol.data_received(b"TP/1.1\r\nHost: a\r\n\r\n")
        await finish(state)
        assert split_response(transport.written)[2] == b"ok"
        assert scopes[0]["client"] == ("192.0.2.1", 1)

    asyncio.run(run())


def test_a_malformed_header_or_an_eof_ends_the_connection_with_no_response():
    async def run():
        for data, eof in ((b"HELLO\r\n" + GET, False), (b"x" * 65, False), (b"FROM 1.2", True)):
            state = server_state()
            transport = StallingTransport(1 << 20, reading=True)
            staged = connect(http_plan(state, FromLine).protocol_factory()(), transport)
            staged.data_received(data)
            if eof:
                staged.eof_received()
            assert transport.closed and not transport.written
            assert transport.protocol is staged
            await settle()  # connection_lost
            assert not state.staging and not state.connections

    asyncio.run(run())


def test_a_stage_that_replaces_the_transport_and_learns_tls_facts():
    async def run():
        scopes: list = []
        wrapped: list = []
        state = server_state(scopes)
        outer = FakeTransport()
        plan = http_plan(state, lambda: Wrap(wrapped), FromLine)
        staged = connect(plan.protocol_factory()(), outer)
        inner = wrapped[0]
        assert inner.protocol is staged and staged.transport is inner  # the next stage's
        inner.protocol.data_received(b"FROM 198.51.100.2 9 https\r\n" + GET)
        connection = inner.protocol
        assert type(connection) is HttpConnection and connection.transport is inner
        assert connection.facts.tls == {"version": "TLSv1.3"}
        await finish(state)
        assert split_response(inner.written)[2] == b"ok" and not outer.written
        assert scopes[0]["scheme"] == "https" and scopes[0]["client"] == ("198.51.100.2", 9)

    asyncio.run(run())


# --- the protocol choice --------------------------------------------------------------------

def test_the_protocol_is_the_one_the_facts_name():
    async def run():
        calls: list = []
        state = server_state()
        plan = http_plan(state, lambda: Wrap([], alpn="h2"), h2=lambda: Recorder(calls))
        outer = FakeTransport()
        staged = connect(plan.protocol_factory()(), outer)
        assert not state.staging
        (_, transport, facts, read_paused, write_paused), = calls
        assert transport.protocol is not staged and transport is not outer
        assert facts.protocol == "h2" and facts.scheme == "https"
        assert (read_paused, write_paused) == (False, False)

    asyncio.run(run())


def test_a_protocol_the_listener_does_not_serve_closes_the_connection(caplog):
    async def run():
        state = server_state()
        transport = FakeTransport()
        staged = connect(http_plan(state, lambda: Wrap([], alpn="h3")).protocol_factory()(),
                         transport)
        return staged

    with caplog.at_level(logging.ERROR, logger=log.name):
        staged = asyncio.run(run())
    assert staged.closed
    assert "no wire protocol 'h3'" in caplog.text


def test_paused_reading_and_writing_are_carried_to_the_protocol():
    async def run():
        calls: list = []
        state = server_state()
        stages: list = []

        def pause():
            stages.append(PauseThenWait())
            return stages[0]

        transport = FakeTransport()
        staged = connect(http_plan(state, pause, **{HTTP_1_1: lambda: Recorder(calls)})
                         .protocol_factory()(), transport)
        assert transport.reading_paused
        staged.pause_writing()  # the stage wrote more than the transport's buffer takes
        stages[0].finish_now(b"rest")
        assert calls == [("take_over", transport, staged.facts, True, True),
                         ("data_received", b"rest")]

        # HttpConnection, taking over a paused transport, reads again: it wants a request.
        state = server_state()
        stages.clear()
        transport = FakeTransport()
        staged = connect(http_plan(state, pause).protocol_factory()(), transport)
        staged.pause_writing()
        stages[0].finish_now()
        connection = transport.protocol
        assert not transport.reading_paused and connection.write_paused

    asyncio.run(run())


# --- the switch -----------------------------------------------------------------------------

def test_switch_protocol_sets_the_protocol_first_then_hands_over_then_replays():
    calls: list = []

    class Transport(FakeTransport):
        def set_protocol(self, protocol) -> None:
            calls.append(("set_protocol", protocol))
            super().set_protocol(protocol)

    transport = Transport()
    successor = Recorder(calls)
    facts = ConnectionFacts(("10.0.0.1", 1), ("10.0.0.2", 2))
    switch_protocol(transport, successor, facts, b"early", read_paused=True)
    assert calls == [("set_protocol", successor), ("take_over", transport, facts, True, False),
                     ("data_received", b"early")]
    calls.clear()
    switch_protocol(transport, successor, facts)
    assert calls == [("set_protocol", successor), ("take_over", transport, facts, False, False)]


def websocket_app(scopes: list, received: list):
    async def app(scope, receive, send):
        scopes.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        received.append(await receive())
    return app


def test_the_websocket_upgrade_goes_through_the_switch_with_the_facts():
    async def run():
        received: list = []
        scopes: list = []
        state = ServerState(websocket_app(scopes, received), ASGI(), H11Parser, 5.0,
                            timing=False, upgrade=WebSocketUpgrade())
        transport = FakeTransport()
        connection = HttpConnection(state)
        facts = ConnectionFacts(("203.0.113.9", 7), ("127.0.0.1", 8000), scheme="https")
        switch_protocol(transport, connection, facts)
        client = WSConnection(ConnectionType.CLIENT)
        handshake = client.send(Request(host="a", target="/chat"))
        early = FrameProtocol(client=True, extensions=[]).send_data("early", True)
        connection.data_received(handshake + early)  # a frame right behind the handshake
        session = transport.protocol
        assert type(session) is WebSocketSession
        assert session.facts is facts and session.transport is transport
        assert state.websockets == {session} and not state.connections
        await settle()
        client.receive_data(transport.take())
        assert isinstance(next(client.events()), AcceptConnection)
        assert scopes[0]["scheme"] == "wss" and scopes[0]["client"] == ("203.0.113.9", 7)
        assert received == [{"type": "websocket.receive", "text": "early"}]

    asyncio.run(run())


def test_a_websocket_after_a_stage_carries_the_facts_through_both_switches():
    async def run():
        received: list = []
        scopes: list = []
        state = ServerState(websocket_app(scopes, received), ASGI(), H11Parser, 5.0,
                            timing=False, upgrade=WebSocketUpgrade())
        transport = FakeTransport()
        staged = connect(http_plan(state, FromLine).protocol_factory()(), transport)
        client = WSConnection(ConnectionType.CLIENT)
        handshake = client.send(Request(host="a", target="/chat"))
        early = FrameProtocol(client=True, extensions=[]).send_data("early", True)
        staged.data_received(b"FROM 203.0.113.9 7 https\r\n" + handshake + early)
        session = transport.protocol
        assert type(session) is WebSocketSession
        assert session.facts is staged.facts and session.transport is transport
        assert state.websockets == {session} and not state.connections and not state.staging
        await settle()
        client.receive_data(transport.take())
        assert isinstance(next(client.events()), AcceptConnection)
        assert scopes[0]["scheme"] == "wss" and scopes[0]["client"] == ("203.0.113.9", 7)
        assert received == [{"type": "websocket.receive", "text": "early"}]

    asyncio.run(run())


# --- the sweep and the drain ----------------------------------------------------------------

def test_each_stage_has_its_own_timeout_in_the_sweep():
    async def run():
        state = server_state()
        transport = StallingTransport(1 << 20, reading=True)
        plan = http_plan(state, lambda: Prefix(1, timeout=2.0), lambda: FromLine(timeout=3.0))
        staged = connect(plan.protocol_factory()(), transport)
        start = staged.stage_started
        state.tick(start + 1.9)
        assert not transport.closed
        staged.data_received(b"F")  # the first stage is done: the second's clock starts
        second = staged.stage_started
        state.tick(second + 2.9)
        assert not transport.closed
        state.tick(second + 3.01)  # (a margin: loop time plus 3.0, minus it, may be 2.99999)
        assert transport.closed and not transport.written  # no response before the protocol
        await settle()
        assert not state.staging

    asyncio.run(run())


def test_a_drain_does_not_wait_for_ever_on_a_stage_with_no_timeout():
    async def run():
        state = server_state()
        transport = StallingTransport(1 << 20, reading=True)
        staged = connect(http_plan(state, lambda: Prefix(10)).protocol_factory()(), transport)
        state.tick(staged.stage_started + 60)
        assert not transport.closed  # no limit
        state.start_draining()
        assert not state.drained.is_set()  # a stage in progress holds the drain ...
        state.tick(staged.stage_started + DRAIN_STAGE_TIMEOUT - 0.01)
        assert not transport.closed
        state.tick(staged.stage_started + DRAIN_STAGE_TIMEOUT + 0.01)  # ... for so long
        assert transport.closed
        await settle()
        assert state.drained.is_set()

    asyncio.run(run())


def test_a_connection_that_finishes_its_stages_during_a_drain_is_served():
    async def run():
        state = server_state()
        transport = StallingTransport(1 << 20, reading=True)
        staged = connect(http_plan(state, FromLine).protocol_factory()(), transport)
        state.start_draining()
        staged.data_received(b"FROM 192.0.2.5 5 http\r\n" + GET)
        assert not state.drained.is_set()  # the protocol has it now: not dropped
        await finish(state)
        status, headers, body = split_response(transport.written)
        assert status == b"HTTP/1.1 200 OK" and body == b"ok"
        assert (b"Connection", b"close") in headers
        await settle()
        assert state.drained.is_set()

    asyncio.run(run())


def test_a_closed_staged_connection_still_there_at_the_next_tick_is_aborted():
    async def run():
        state = server_state()
        transport = FakeTransport()  # close() never ends in connection_lost here
        staged = connect(http_plan(state, FromLine).protocol_factory()(), transport)
        staged.data_received(b"junk\r\n")
        assert transport.closed and not transport.aborted
        state.tick(staged.stage_started + 1)
        assert transport.aborted

    asyncio.run(run())


# --- over a real socket ---------------------------------------------------------------------

def test_stages_and_the_switch_over_a_uvloop_socket():
    async def run():
        loop = asyncio.get_running_loop()
        scopes: list = []
        state = server_state(scopes)
        factory = http_plan(state, FromLine).protocol_factory()
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
        listener.close()
        client.setblocking(False)
        transport, staged = await loop.connect_accepted_socket(factory, server_side)
        await loop.sock_sendall(client, b"FROM 203.0.113.1 ")
        await asyncio.sleep(0.05)
        await loop.sock_sendall(client, b"1234 https\r\nGET /x HTTP/1.1\r\nHo")
        await asyncio.sleep(0.05)
        assert isinstance(transport.get_protocol(), HttpConnection)
        await loop.sock_sendall(client, b"st: a\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := await asyncio.wait_for(loop.sock_recv(client, 4096), 5):
            response += chunk
        client.close()
        assert split_response(response)[2] == b"ok"
        assert scopes[0]["client"] == ("203.0.113.1", 1234) and scopes[0]["scheme"] == "https"
        assert scopes[0]["server"][0] == "127.0.0.1"
        await settle()
        assert not state.staging and not state.connections

    uvloop.run(run())
