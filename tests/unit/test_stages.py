"""Connection facts and the protocol switch (net/stages.py) over fake transports: the facts an
accepted transport tells, the switch's order of events, and the WebSocket upgrade going
through it with the connection's facts."""

from __future__ import annotations

import asyncio

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request
from wsproto.frame_protocol import FrameProtocol

from duck_prefork.asgi.pipeline import ASGI
from duck_prefork.asgi.websocket import WebSocketSession, WebSocketUpgrade
from duck_prefork.http1.connection import HttpConnection, ServerState
from duck_prefork.http1.parser_h11 import H11Parser
from duck_prefork.net.stages import HTTP_1_1, ConnectionFacts, switch_protocol

from .fakes import FakeTransport, FakeUnixTransport

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """A Successor that records how it was handed the connection."""

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def take_over(self, transport, facts, read_paused, write_paused) -> None:
        self.calls.append(("take_over", transport, facts, read_paused, write_paused))

    def data_received(self, data: bytes) -> None:
        self.calls.append(("data_received", data))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# --- the facts ------------------------------------------------------------------------------

def test_facts_of_a_tcp_and_of_a_unix_connection():
    tcp = ConnectionFacts.of(FakeTransport())
    assert (tcp.client, tcp.server, tcp.scheme, tcp.protocol) == \
        (("10.0.0.1", 5555), ("127.0.0.1", 8000), "http", HTTP_1_1)
    assert tcp.tls is None and tcp.proxy is None
    unix = ConnectionFacts.of(FakeUnixTransport())
    assert (unix.client, unix.server) == (None, ("/run/app.sock", None))


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


def test_the_websocket_upgrade_goes_through_the_switch_with_the_facts():
    async def run():
        received: list = []
        scopes: list = []

        async def app(scope, receive, send):
            scopes.append(scope)
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            received.append(await receive())

        state = ServerState(app, ASGI(), H11Parser, 5.0, timing=False,
                            upgrade=WebSocketUpgrade())
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
