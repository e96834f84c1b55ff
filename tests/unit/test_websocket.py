"""WebSocketSession without sockets: a fake transport records writes and read pauses, a wsproto
client on the other side makes and reads the frames, and check_timeouts is called with chosen
clock values instead of waiting for the worker's sweep."""

from __future__ import annotations

import asyncio
import logging
import zlib
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
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from duck_prefork.asgi.pipeline import ASGI
from duck_prefork.asgi.websocket import (
    QUEUE_MESSAGES,
    CappedPerMessageDeflate,
    WebSocketUpgrade,
    handshake_refusal,
)
from duck_prefork.http1.stream import Http1Stream
from duck_prefork.net.stages import ConnectionFacts

from .fakes import FakeConnection, FakeTransport, StallingTransport, split_response

pytestmark = pytest.mark.timeout(30)


class Peer:
    """The client end: a wsproto client that reads what the session wrote."""

    def __init__(self, deflate: bool = False) -> None:
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.handshake = self.ws.send(Request(
            host="t", target="/chat", subprotocols=["chat"],
            extensions=[PerMessageDeflate()] if deflate else []))

    def events(self, transport: FakeTransport) -> list:
        self.ws.receive_data(transport.take())
        return list(self.ws.events())


def handshake_stream(method: bytes, target: bytes, headers: list, client) -> Http1Stream:
    """The handshake request as the HTTP/1.1 connection offers it to the upgrade: a real
    stream (the compiled build takes nothing else), over a stand-in connection of its own."""
    stream = Http1Stream(FakeConnection(client), method, target, b"1.1", headers)
    assert stream.upgrade == b"websocket"
    return stream


def make_session(app, upgrade: WebSocketUpgrade | None = None, pending: bytes = b"",
                 without: bytes = b"", extra: tuple = (), deflate: bool = False,
                 send_timeout: float = 0.0, transport: FakeTransport | None = None):
    loop = asyncio.get_running_loop()
    transport = transport or FakeTransport()
    peer = Peer(deflate)
    head, _, _ = peer.handshake.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = [(name.strip().lower(), value.strip())
               for name, _, value in (line.partition(b":") for line in lines[1:])
               if name.strip().lower() != without] + list(extra)
    state = SimpleNamespace(loop=loop, app=app, handler=ASGI(), tasks=set(), websockets=set(),
                            date=b"X", date_header=b"Date: X\r\n", send_timeout=send_timeout,
                            requests_served=0, draining=False, check_drained=lambda: None)

    def start_task(coroutine) -> None:  # ServerState.start_task's bookkeeping
        task = loop.create_task(coroutine)
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    state.start_task = start_task
    connection = SimpleNamespace(
        state=state, transport=transport, client=("127.0.0.1", 5000),
        server=("127.0.0.1", 8000), parser=SimpleNamespace(take_upgrade_data=lambda: pending),
        facts=ConnectionFacts(("127.0.0.1", 5000), ("127.0.0.1", 8000)),
        hand_over=lambda: False, write_paused=False,
        write=transport.write, close=transport.close)  # a refusal before the session starts
    request = handshake_stream(b"GET", b"/chat", headers, connection.client)
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
        # (bytes, as the parsers give: wsproto makes a bytearray)
        early = bytes(FrameProtocol(client=True, extensions=[]).send_data("early bird", True))
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


def test_bad_handshake_is_refused_without_the_app():
    async def scenario():
        called = []

        async def app(scope, receive, send):
            called.append(scope)

        transport = make_session(app, without=b"sec-websocket-key")[1]
        await settle()
        status, headers, body = split_response(transport.take())
        assert status == b"HTTP/1.1 400 Bad Request"
        assert (b"Connection", b"close") in headers and b"Sec-WebSocket-Key" in body
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


# --- RFC 6455 4.2.1: the handshake checks wsproto does not make ------------------------------

KEY = (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")  # 16 bytes, the RFC's example
GOOD = [(b"host", b"t"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"), KEY,
        (b"sec-websocket-version", b"13")]


def replaced(name: bytes, *values: bytes) -> list[tuple[bytes, bytes]]:
    """GOOD with the `name` field replaced by `values` (none: removed)."""
    return [field for field in GOOD if field[0] != name] + [(name, v) for v in values]


@pytest.mark.parametrize("method, version, headers, body, expected", [
    ("GET", "1.1", GOOD, False, None),
    ("GET", "1.1", replaced(b"upgrade", b"WebSocket"), False, None),  # case-insensitive
    ("GET", "1.1", replaced(b"upgrade", b"foo/2, websocket"), False, None),  # a token in a list
    ("GET", "1.1", replaced(b"connection", b"keep-alive, UPGRADE"), False, None),
    ("GET", "1.1", replaced(b"connection", b"keep-alive", b"upgrade"), False, None),  # two fields
    ("POST", "1.1", GOOD, False, 400),
    ("HEAD", "1.1", GOOD, False, 400),
    ("GET", "1.0", GOOD, False, 400),
    ("GET", "1.1", GOOD, True, 400),  # a body: the bytes after the head would be read as frames
    ("GET", "1.1", replaced(b"host"), False, 400),
    ("GET", "1.1", replaced(b"upgrade", b"websockets"), False, 400),
    ("GET", "1.1", replaced(b"upgrade"), False, 400),
    ("GET", "1.1", replaced(b"connection", b"keep-alive"), False, 400),
    ("GET", "1.1", replaced(b"sec-websocket-key"), False, 400),
    ("GET", "1.1", replaced(b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ"), False, 400),  # pad
    ("GET", "1.1", replaced(b"sec-websocket-key", b"c2hvcnQ="), False, 400),  # 5 bytes
    ("GET", "1.1", replaced(b"sec-websocket-key", b"AAAAAAAAAAAAAAAAAAAAAAAAAA=="), False, 400),
    ("GET", "1.1", replaced(b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==", KEY[1]), False,
     400),  # two keys
    ("GET", "1.1", replaced(b"sec-websocket-key", b"dGhlIHNhbXBsZSBub2!jZQ=="), False, 400),
    ("GET", "1.1", replaced(b"sec-websocket-version", b"8"), False, 426),
    ("GET", "1.1", replaced(b"sec-websocket-version"), False, 426),
    ("GET", "1.1", replaced(b"sec-websocket-version", b"13", b"8"), False, 426),
])
def test_handshake_refusal(method, version, headers, body, expected):
    refusal = handshake_refusal(method, version, headers, body)
    if expected is None:
        assert refusal is None
    else:
        status, reason = refusal
        assert status == expected and reason


def test_first_broken_rule_is_the_answer():
    # RFC order: the method comes before the key, the key before the version
    assert handshake_refusal("POST", "1.1", replaced(b"sec-websocket-key"), False)[0] == 400
    headers = [f for f in replaced(b"sec-websocket-key") if f[0] != b"sec-websocket-version"]
    assert handshake_refusal("GET", "1.1", headers, False)[0] == 400


@pytest.mark.parametrize("without, extra, status", [
    (b"sec-websocket-version", [(b"sec-websocket-version", b"8")], 426),
    (b"sec-websocket-key", [(b"sec-websocket-key", b"c2hvcnQ=")], 400),
])
def test_refusal_closes_and_names_the_version(without, extra, status):
    async def scenario():
        async def app(scope, receive, send):
            raise AssertionError("not called")

        transport = make_session(app, without=without, extra=extra)[1]
        await settle()
        line, headers, _ = split_response(transport.take())
        assert line.startswith(b"HTTP/1.1 %d " % status)
        assert (b"Connection", b"close") in headers and transport.closed
        assert ((b"Sec-WebSocket-Version", b"13") in headers) is (status == 426)

    asyncio.run(scenario())


def test_a_post_asking_for_a_websocket_is_refused_without_the_app():
    async def scenario():
        async def app(scope, receive, send):
            raise AssertionError("not called")

        transport = FakeTransport()
        loop = asyncio.get_running_loop()
        state = SimpleNamespace(loop=loop, date_header=b"Date: X\r\n", handler=ASGI())
        connection = SimpleNamespace(state=state, transport=transport, client=None,
                                     write=transport.write, close=transport.close)
        request = handshake_stream(b"POST", b"/", GOOD + [(b"content-length", b"2")], None)
        assert WebSocketUpgrade()(connection, request)  # answered: not plain HTTP
        assert transport.take().startswith(b"HTTP/1.1 400 ") and transport.closed
        request.upgrade = b"h2c"  # a switch to something else: plain HTTP, for the app
        assert not WebSocketUpgrade()(connection, request)

    asyncio.run(scenario())


# --- the inflation cap ---------------------------------------------------------------------

REAL_DECOMPRESSOBJ = zlib.decompressobj


class RecordingInflater:
    """A zlib decompressobj that records how much each call produced."""

    produced: list[int] = []

    def __init__(self, *args) -> None:
        self.inner = REAL_DECOMPRESSOBJ(*args)

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        out = self.inner.decompress(data, max_length)
        RecordingInflater.produced.append(len(out))
        return out

    def flush(self, *args) -> bytes:
        out = self.inner.flush(*args)
        RecordingInflater.produced.append(len(out))
        return out


@pytest.fixture
def inflater(monkeypatch):
    """Every decompressobj wsproto makes records its output (RecordingInflater.produced)."""
    RecordingInflater.produced = []
    monkeypatch.setattr("wsproto.extensions.zlib.decompressobj", RecordingInflater)
    return RecordingInflater.produced


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def inbound(extension, opcode: Opcode, rsv1: bool, payload: bytes, fin: bool):
    """Run one frame through `extension` the way wsproto's FrameDecoder does, in pieces."""
    decoder = FrameDecoder(client=False, extensions=[extension])
    result = extension.frame_inbound_header(decoder, opcode, RsvBits(rsv1, False, False),
                                            len(payload))
    if isinstance(result, CloseReason):
        return result
    out = b""
    for start in range(0, max(len(payload), 1), 1000):
        piece = extension.frame_inbound_payload_data(decoder, payload[start:start + 1000])
        if isinstance(piece, CloseReason):
            return piece
        out += piece
    end = extension.frame_inbound_complete(decoder, fin)
    if isinstance(end, CloseReason):
        return end
    return out + (end or b"")


def test_inflation_stops_at_the_limit(inflater):
    extension = CappedPerMessageDeflate(max_size=10_000)
    assert inbound(extension, Opcode.BINARY, True, deflated(bytes(10_000)), True) \
        == bytes(10_000)  # exactly the limit: allowed
    inflater.clear()
    bomb = deflated(bytes(50 * 1024 * 1024))  # 50 MiB of zeros, ~50 KB
    assert inbound(extension, Opcode.BINARY, True, bomb, True) is CloseReason.MESSAGE_TOO_BIG
    assert sum(inflater) <= 10_001  # the inflater stopped, not the size check after it


def test_inflation_cap_counts_across_the_frames_of_a_message(inflater):
    extension = CappedPerMessageDeflate(max_size=10_000)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    frames = [compressor.compress(bytes(4_000)) + compressor.flush(zlib.Z_SYNC_FLUSH)
              for _ in range(3)]
    assert inbound(extension, Opcode.BINARY, True, frames[0], False) == bytes(4_000)
    # a ping between fragments neither resets the count nor the message's compression
    assert inbound(extension, Opcode.PING, False, b"p", True) == b"p"
    assert inbound(extension, Opcode.CONTINUATION, False, frames[1], False) == bytes(4_000)
    assert inbound(extension, Opcode.CONTINUATION, False, frames[2], True) \
        is CloseReason.MESSAGE_TOO_BIG  # 12,000 in all
    assert sum(inflater) <= 10_001


def test_no_limit_inflates_everything():
    extension = CappedPerMessageDeflate(max_size=0)
    assert len(inbound(extension, Opcode.TEXT, True, deflated(bytes(100_000)), True)) == 100_000


def test_compressed_messages_within_the_limit_arrive_whole():
    async def scenario():
        received: list = []
        session, transport, peer, _ = make_session(
            accepting_app(received), WebSocketUpgrade(max_size=100_000), deflate=True)
        await settle()
        accept = peer.events(transport)[0]
        assert isinstance(accept, AcceptConnection) and accept.extensions
        session.data_received(peer.ws.send(TextMessage(data="a" * 60_000,
                                                       message_finished=False)))
        session.data_received(peer.ws.send(Ping(payload=b"p")))
        session.data_received(peer.ws.send(TextMessage(data="b" * 40_000)))
        session.data_received(peer.ws.send(BytesMessage(data=bytes(100_000))))
        await settle()
        assert received == [{"type": "websocket.receive", "text": "a" * 60_000 + "b" * 40_000},
                            {"type": "websocket.receive", "bytes": bytes(100_000)}]

    asyncio.run(scenario())


@pytest.mark.parametrize("fragments", [1, 8])
def test_deflate_bomb_closes_with_1009_before_it_is_inflated(inflater, fragments):
    async def scenario():
        received: list = []
        session, transport, peer, _ = make_session(
            accepting_app(received), WebSocketUpgrade(max_size=64 * 1024), deflate=True)
        await settle()
        peer.events(transport)
        part = bytes(32 * 1024 * 1024 // fragments)  # 32 MiB in all, ~32 KB on the wire
        inflater.clear()
        for i in range(fragments):
            session.data_received(peer.ws.send(BytesMessage(
                data=part, message_finished=i == fragments - 1)))
        await settle()
        close = peer.events(transport)[0]
        assert isinstance(close, CloseConnection) and close.code == 1009
        assert close.reason == "message too big"  # as for an uncompressed message
        assert received == [{"type": "websocket.disconnect", "code": 1009,
                             "reason": "message too big"}]
        assert transport.closed and sum(inflater) <= 64 * 1024 + 1

    asyncio.run(scenario())


# --- --ws-accept-timeout -------------------------------------------------------------------

def undecided_app(events: list):
    async def app(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        try:
            await asyncio.Event().wait()  # neither accepts nor refuses
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
    return app


def test_a_handshake_left_undecided_is_answered_500_after_the_accept_timeout(caplog):
    async def scenario():
        events: list = []
        session, transport, peer, state = make_session(undecided_app(events),
                                                       WebSocketUpgrade(accept_timeout=3))
        await settle()
        session.check_timeouts(session.start_time + 2.9)
        assert not transport.written and not transport.closed
        with caplog.at_level(logging.INFO, logger="duck_prefork"):
            session.check_timeouts(session.start_time + 3)
            session.check_timeouts(session.start_time + 4)  # the next sweep: nothing more
        assert transport.take().startswith(b"HTTP/1.1 500 ") and transport.closed
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1 and "--ws-accept-timeout" in lines[0], lines
        await settle()
        assert events == ["cancelled"] and not state.tasks
        session.connection_lost(None)
        assert not state.websockets

    asyncio.run(scenario())


def test_accept_timeout_also_frees_an_app_whose_client_left():
    async def scenario():
        events: list = []
        session, transport, peer, state = make_session(undecided_app(events),
                                                       WebSocketUpgrade(accept_timeout=3))
        await settle()
        session.connection_lost(None)  # the client gave up waiting
        assert session in state.websockets  # still watched: its app has not decided
        session.check_timeouts(session.start_time + 3)
        await settle()
        assert events == ["cancelled"] and not state.tasks and not state.websockets
        assert not transport.written

    asyncio.run(scenario())


def test_accept_timeout_zero_waits_forever_and_accepting_in_time_is_kept():
    async def scenario():
        events: list = []
        session, transport, _, state = make_session(undecided_app(events),
                                                    WebSocketUpgrade(accept_timeout=0))
        await settle()
        session.check_timeouts(session.start_time + 3600)
        assert not transport.written and not events
        for task in state.tasks:
            task.cancel()
        await settle()

        session, transport, peer, _ = make_session(accepting_app([]),
                                                   WebSocketUpgrade(accept_timeout=3))
        await settle()
        session.check_timeouts(session.start_time + 10)
        assert isinstance(peer.events(transport)[0], AcceptConnection)
        assert not transport.closed

    asyncio.run(scenario())


# --- --send-timeout ------------------------------------------------------------------------

def streaming_app(events: list):
    async def after_accept(receive, send):
        try:
            while True:
                await send({"type": "websocket.send", "bytes": b"x" * 1000})
        except OSError as exc:  # asgi.ClientDisconnected
            events.append(type(exc).__name__)
    return accepting_app([], after_accept)


def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout():
    async def scenario():
        events: list = []
        transport = StallingTransport(high_water=10_000)
        session, transport, peer, state = make_session(
            streaming_app(events), WebSocketUpgrade(ping_interval=0), send_timeout=5,
            transport=transport)
        await settle()
        assert session.write_paused  # the app waits in send(): nothing is read
        now = session.start_time + 1
        session.check_timeouts(now)
        session.check_timeouts(now + 4.9)
        assert not transport.aborted
        session.check_timeouts(now + 5)
        assert transport.aborted
        await settle()
        assert events == ["ClientDisconnected"] and not state.tasks and not state.websockets

    asyncio.run(scenario())


def test_a_slow_reader_making_progress_is_kept():
    async def scenario():
        transport = StallingTransport(high_water=10_000)
        session, transport, _, state = make_session(
            streaming_app([]), WebSocketUpgrade(ping_interval=0), send_timeout=5,
            transport=transport)
        await settle()
        now = session.start_time
        for second in range(20):
            session.check_timeouts(now + second)
            transport.drain_some(1000)  # the client reads a little every second
        assert not transport.aborted
        for task in state.tasks:
            task.cancel()
        await settle()

    asyncio.run(scenario())


def test_last_bytes_after_a_close_are_bounded_by_the_send_timeout():
    async def scenario():
        transport = StallingTransport(high_water=1 << 30, reading=True)
        session, transport, peer, _ = make_session(
            accepting_app([]), WebSocketUpgrade(max_size=10), send_timeout=5,
            transport=transport)
        await settle()
        peer.events(transport)
        transport.stall()  # the client reads nothing more
        session.data_received(peer.ws.send(BytesMessage(data=b"x" * 11)))  # 1009, then close
        assert transport.closed and not transport.aborted
        now = session.start_time
        session.check_timeouts(now)
        session.check_timeouts(now + 5.5)  # past the timeout: (t + 5) - t may fall short of 5
        assert transport.aborted

    asyncio.run(scenario())
