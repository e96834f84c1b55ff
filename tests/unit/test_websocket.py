"""WebSocketSession without sockets: a fake transport records writes and read pauses, a wsproto
client on the other side makes and reads the frames, and check_timeouts is called with chosen
clock values instead of waiting for the worker's sweep."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import FrameProtocol

from duck_prefork.asgi import ASGI
from duck_prefork.websocket import QUEUE_MESSAGES, WebSocketUpgrade

from .fakes import FakeTransport

pytestmark = pytest.mark.timeout(30)


class Peer:
    """The client end: a wsproto client that reads what the session wrote."""

    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.handshake = self.ws.send(Request(host="t", target="/chat", subprotocols=["chat"]))

    def events(self, transport: FakeTransport) -> list:
        self.ws.receive_data(transport.take())
        return list(self.ws.events())


def make_session(app, upgrade: WebSocketUpgrade | None = None, pending: bytes = b"",
                 without: bytes = b"", extra: tuple = ()):
    loop = asyncio.get_running_loop()
    transport = FakeTransport()
    peer = Peer()
    head, _, _ = peer.handshake.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = [(name.strip().lower(), value.strip())
               for name, _, value in (line.partition(b":") for line in lines[1:])
               if name.strip().lower() != without] + list(extra)
    state = SimpleNamespace(loop=loop, app=app, handler=ASGI(), tasks=set(), websockets=set(),
                            date_header=b"Date: X\r\n",
                            requests_served=0, draining=False, check_drained=lambda: None)

    def start_task(coroutine) -> None:  # ServerState.start_task's bookkeeping
        task = loop.create_task(coroutine)
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    state.start_task = start_task
    connection = SimpleNamespace(
        state=state, transport=transport, client=("127.0.0.1", 5000),
        server=("127.0.0.1", 8000), parser=SimpleNamespace(take_upgrade_data=lambda: pending),
        hand_over=lambda: False, write_paused=False)
    request = SimpleNamespace(method="GET", target=b"/chat", http_version="1.1",
                              headers=headers, chunked=False, content_length=None,
                              upgrade=b"websocket", forwarded=False)
    assert (upgrade or WebSocketUpgrade())(connection, request)
    return transport.protocol, transport, peer, state


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def accepting_app(received: list, after_accept=None):
    async def app(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept", "subprotocol": "chat"})
        if after_accept is not None:
            await after_accept(receive, send)
            return
        while True:
            message = await receive()
            received.append(message)
            if message["type"] == "websocket.disconnect":
                return
    return app


def test_handshake_messages_and_close():
    async def scenario():
        received: list = []
        session, transport, peer, state = make_session(accepting_app(received))
        await settle()
        events = peer.events(transport)
        assert isinstance(events[0], AcceptConnection) and events[0].subprotocol == "chat"
        assert session.scope["subprotocols"] == ["chat"] and session.scope["path"] == "/chat"
        session.data_received(peer.ws.send(TextMessage(data="hi", message_finished=False)))
        session.data_received(peer.ws.send(TextMessage(data=" there")))
        session.data_received(peer.ws.send(BytesMessage(data=b"\x00\x01")))
        session.data_received(peer.ws.send(Ping(payload=b"p")))
        session.data_received(peer.ws.send(CloseConnection(code=4000, reason="bye")))
        await settle()
        assert received == [{"type": "websocket.receive", "text": "hi there"},
                            {"type": "websocket.receive", "bytes": b"\x00\x01"},
                            {"type": "websocket.disconnect", "code": 4000, "reason": "bye"}]
        kinds = [type(event).__name__ for event in peer.events(transport)]
        assert kinds == ["Pong", "CloseConnection"]  # our answer to the close
        assert transport.closed and not state.tasks

    asyncio.run(scenario())


def test_frames_sent_before_accept_are_kept():
    async def scenario():
        received: list = []
        early = FrameProtocol(client=True, extensions=[]).send_data("early bird", True)
        make_session(accepting_app(received), pending=early)
        await settle()
        assert received[:1] == [{"type": "websocket.receive", "text": "early bird"}]

    asyncio.run(scenario())


def test_unread_messages_pause_reading_until_the_app_catches_up():
    async def scenario():
        gate = asyncio.Event()
        received: list = []

        async def slow(receive, send):
            await gate.wait()
            while len(received) < QUEUE_MESSAGES + 4:
                received.append(await receive())

        session, transport, peer, _ = make_session(accepting_app(received, slow))
        await settle()
        peer.events(transport)
        for i in range(QUEUE_MESSAGES + 4):
            session.data_received(peer.ws.send(TextMessage(data=str(i))))
        assert transport.reading_paused
        gate.set()
        await settle()
        assert not transport.reading_paused
        assert [m["text"] for m in received] == [str(i) for i in range(QUEUE_MESSAGES + 4)]

    asyncio.run(scenario())


def test_ping_sent_on_interval_and_unanswered_ping_drops_the_peer():
    async def scenario():
        received: list = []
        upgrade = WebSocketUpgrade(ping_interval=20, ping_timeout=10)
        session, transport, peer, _ = make_session(accepting_app(received), upgrade)
        await settle()
        peer.events(transport)
        start = session.next_ping_at - 20
        session.check_timeouts(start + 19)
        assert not transport.written
        session.check_timeouts(start + 20)
        assert isinstance(peer.events(transport)[0], Ping)
        session.check_timeouts(start + 29)
        assert not transport.aborted
        session.check_timeouts(start + 30)
        assert transport.aborted
        await settle()
        assert received[-1] == {"type": "websocket.disconnect", "code": 1011,
                                "reason": "keepalive ping timeout"}

    asyncio.run(scenario())


def test_answered_ping_keeps_the_peer():
    async def scenario():
        session, transport, peer, _ = make_session(accepting_app([]),
                                                   WebSocketUpgrade(ping_interval=5,
                                                                    ping_timeout=5))
        await settle()
        peer.events(transport)
        now = session.next_ping_at
        session.check_timeouts(now)
        ping = peer.events(transport)[0]
        session.data_received(peer.ws.send(ping.response()))
        session.check_timeouts(now + 5)
        assert not transport.aborted

    asyncio.run(scenario())


def test_too_big_message_closes_with_1009():
    async def scenario():
        received: list = []
        session, transport, peer, _ = make_session(accepting_app(received),
                                                   WebSocketUpgrade(max_size=10))
        await settle()
        peer.events(transport)
        session.data_received(peer.ws.send(BytesMessage(data=b"x" * 11)))
        await settle()
        close = peer.events(transport)[0]
        assert isinstance(close, CloseConnection) and close.code == 1009
        assert received[-1]["code"] == 1009 and transport.closed

    asyncio.run(scenario())


def test_going_away_sends_1001_and_the_app_hears_it():
    async def scenario():
        received: list = []
        session, transport, peer, _ = make_session(accepting_app(received))
        await settle()
        peer.events(transport)
        session.going_away()
        await settle()
        close = peer.events(transport)[0]
        assert isinstance(close, CloseConnection) and close.code == 1001
        assert received == [{"type": "websocket.disconnect", "code": 1001,
                             "reason": "server shutting down"}]
        session.check_timeouts(session.close_sent_at + 5)  # no answer to our close: dropped
        assert transport.aborted

    asyncio.run(scenario())


def test_bad_handshake_is_refused_by_wsproto_without_the_app():
    async def scenario():
        called = []

        async def app(scope, receive, send):
            called.append(scope)

        transport = make_session(app, without=b"sec-websocket-key")[1]
        await settle()
        assert transport.take().startswith(b"HTTP/1.1 400 ")
        assert transport.closed and not called

    asyncio.run(scenario())


def test_a_head_h11_would_not_write_is_a_400_not_an_error():
    async def scenario():
        async def app(scope, receive, send):
            raise AssertionError("not called")

        transport = make_session(app, extra=[(b"x-bad", b"a\x00b")])[1]
        await settle()
        assert transport.take().startswith(b"HTTP/1.1 400 ") and transport.closed

    asyncio.run(scenario())
