"""WebSockets over HTTP/2 (RFC 8441) without sockets: the handshake decision from an HTTP/2 head,
the negotiation, and the session on a TunnelStream, driven by an h2 client (and wsproto's
client frame layer) in the same process through a fake transport."""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from duck_prefork.asgi.websocket import QUEUE_BYTES, WebSocketUpgrade
from duck_prefork.asgi.websocket_handshake import http2_handshake_refusal, offered

from .test_http2 import Peer

pytestmark = pytest.mark.timeout(30)

HEAD = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
        (b":path", b"/chat?a=1"), (b":authority", b"example.com"),
        (b"sec-websocket-version", b"13")]


# --- the decision ---------------------------------------------------------------------------

def without(name: bytes) -> list:
    return [(n, v) for n, v in HEAD if n != name]


@pytest.mark.parametrize("headers, ended, expected", [
    (HEAD, False, None),
    (HEAD + [(b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")], False, None),  # not used
    (without(b":authority"), False, (400, "no :authority")),
    (without(b":path"), False, (400, "an extended CONNECT names :scheme and :path")),
    (HEAD, True, (400, "a WebSocket handshake has no body, and leaves the stream open")),
    (HEAD + [(b"content-length", b"0")], False,
     (400, "a WebSocket handshake has no body, and leaves the stream open")),
    (without(b"sec-websocket-version"), False, (426, "Sec-WebSocket-Version is not 13")),
    (HEAD + [(b"sec-websocket-version", b"8")], False, (426, "Sec-WebSocket-Version is not 13")),
])
def test_http2_handshake_refusal(headers, ended, expected):
    assert http2_handshake_refusal(headers, ended) == expected


def test_first_broken_rule_is_the_answer():
    headers = [(n, v) for n, v in HEAD if n not in (b":authority", b"sec-websocket-version")]
    assert http2_handshake_refusal(headers, True)[0] == 400


def test_offers_are_read_across_fields():
    headers = [(b"sec-websocket-protocol", b"chat, superchat"),
               (b"sec-websocket-protocol", b"v2"), (b"other", b"x")]
    assert offered(headers, b"sec-websocket-protocol") == ["chat", "superchat", "v2"]
    assert offered(headers, b"sec-websocket-extensions") == []


# --- the session on a stream ----------------------------------------------------------------

class WebSocketPeer(Peer):
    """Peer (test_http2) with the connection's WebSocket hook, or none (--ws none)."""

    def __init__(self, app, websockets: bool = True, max_size: int = 0,
                 ping_interval: float = 0) -> None:
        upgrade = WebSocketUpgrade(max_size=max_size, ping_interval=ping_interval,
                                   ping_timeout=ping_interval)
        self.ws = Connection(ConnectionType.CLIENT)
        super().__init__(app, tunnels={b"websocket": upgrade.over_http2} if websockets
                         else None)

    def open(self, stream_id: int = 1, extra: tuple = ()) -> None:
        self.client.send_headers(stream_id, [*HEAD, *extra])

    def send(self, stream_id: int, event) -> None:
        self.client.send_data(stream_id, self.ws.send(event))

    def received(self, stream_id: int = 1) -> list:
        """The WebSocket events in the DATA the client has got so far (read once)."""
        for event in self.of(h2.events.DataReceived, stream_id):
            if event.data:
                self.ws.receive_data(event.data)
        self.events = [e for e in self.events if not isinstance(e, h2.events.DataReceived)]
        return list(self.ws.events())


def echo_app(seen: list):
    async def app(scope, receive, send):
        seen.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept",
                    "subprotocol": "chat" if "chat" in scope["subprotocols"] else None,
                    "headers": [(b"X-Extra", b"1"), (b"Connection", b"upgrade")]})
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text"),
                        "bytes": message.get("bytes")})
    return app


def test_settings_advertise_extended_connect_only_with_websockets():
    def setting(peer: WebSocketPeer):
        changes = peer.of(h2.events.RemoteSettingsChanged)[0].changed_settings
        change = changes.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
        return change.new_value if change else None

    async def run():
        assert setting(WebSocketPeer(echo_app([]))) == 1
        assert not setting(WebSocketPeer(echo_app([]), websockets=False))

    asyncio.run(run())


def test_accept_is_a_200_and_frames_travel_in_data():
    async def run():
        seen: list = []
        peer = WebSocketPeer(echo_app(seen))
        peer.open(extra=((b"sec-websocket-protocol", b"chat"),))
        await peer.settle()
        [response] = peer.of(h2.events.ResponseReceived, 1)
        head = dict(response.headers)
        assert head[b":status"] == b"200" and head[b"sec-websocket-protocol"] == b"chat"
        assert head[b"x-extra"] == b"1" and b"connection" not in head
        assert not peer.of(h2.events.StreamEnded, 1)  # the stream stays open
        scope = seen[0]
        assert scope["type"] == "websocket" and scope["http_version"] == "2"
        assert scope["path"] == "/chat" and scope["query_string"] == b"a=1"
        assert scope["scheme"] == "ws" and scope["subprotocols"] == ["chat"]
        assert "http.response.trailers" not in scope["extensions"]
        peer.send(1, TextMessage(data="hi"))
        peer.send(1, BytesMessage(data=b"\x00"))
        await peer.settle()
        assert peer.received() == [TextMessage(data="hi"), BytesMessage(data=b"\x00")]
        peer.send(1, CloseConnection(code=4000, reason="bye"))
        peer.client.end_stream(1)
        await peer.settle()
        assert peer.received() == [CloseConnection(code=4000, reason="bye")]  # the answer
        assert peer.of(h2.events.StreamEnded, 1)
        assert seen[-1] == {"type": "websocket.disconnect", "code": 4000, "reason": "bye"}
        assert not peer.server.streams and not peer.state.websockets and not peer.state.tasks

    asyncio.run(run())


def test_a_bad_handshake_is_answered_on_the_stream_without_the_app():
    async def run():
        seen: list = []
        peer = WebSocketPeer(echo_app(seen))
        peer.client.send_headers(1, [(n, v) for n, v in HEAD if n != b"sec-websocket-version"])
        await peer.settle()
        head = dict(peer.of(h2.events.ResponseReceived, 1)[0].headers)
        assert head[b":status"] == b"426" and head[b"sec-websocket-version"] == b"13"
        assert peer.of(h2.events.StreamEnded, 1) and not seen and not peer.server.streams

    asyncio.run(run())


def test_without_websockets_an_extended_connect_is_refused():
    """Not advertised, a :protocol is a malformed request (RFC 8441 4): RST_STREAM
    PROTOCOL_ERROR, and the app is not called."""
    async def run():
        scopes: list = []

        async def app(scope, receive, send):
            scopes.append(scope)

        peer = WebSocketPeer(app, websockets=False)
        peer.open()
        await peer.settle()
        assert [e.error_code for e in peer.of(h2.events.StreamReset, 1)] == [1]
        assert scopes == []

    asyncio.run(run())


@pytest.mark.parametrize("how", ["reset", "connection lost"])
def test_a_client_reset_or_a_lost_connection_is_a_disconnect(how):
    async def run():
        seen: list = []
        peer = WebSocketPeer(echo_app(seen))
        peer.open()
        await peer.settle()
        if how == "reset":
            peer.client.reset_stream(1)
        else:
            peer.server.connection_lost(None)
        await peer.settle()
        assert seen[-1] == {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        assert not peer.server.streams and not peer.state.websockets and not peer.state.tasks

    asyncio.run(run())


def test_the_window_reopens_only_as_the_app_receives():
    """Past QUEUE_BYTES of unreceived messages the DATA is held unacknowledged: the client
    cannot send more than the stream's window on top; receive() lets it all through."""
    async def run():
        gate = asyncio.Event()
        got: list = []

        async def app(scope, receive, send):
            await receive()
            await send({"type": "websocket.accept"})
            await gate.wait()
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                got.append(len(message["bytes"]))

        peer = WebSocketPeer(app)
        peer.open()
        await peer.settle()
        message = peer.ws.send(BytesMessage(data=b"m" * 16000))
        sent = 0
        while peer.client.local_flow_control_window(1) >= len(message) and sent < 400:
            peer.client.send_data(1, message)
            sent += 1
            await peer.settle()
        assert sent < 400, "the server kept its window open for an app that does not read"
        assert sent * len(message) < QUEUE_BYTES + 2 * 65535
        gate.set()
        for _ in range(3):
            await peer.settle()
        assert got == [16000] * sent
        assert peer.client.local_flow_control_window(1) > 32000  # reopened as it read

    asyncio.run(run())


def test_drain_closes_with_1001_before_the_goaway():
    async def run():
        seen: list = []
        peer = WebSocketPeer(echo_app(seen))
        peer.open()
        await peer.settle()
        peer.events.clear()
        peer.state.start_draining()
        new = await peer.settle()
        kinds = [type(e).__name__ for e in new]
        assert kinds.index("DataReceived") < kinds.index("ConnectionTerminated")
        assert [e.code for e in peer.received() if isinstance(e, CloseConnection)] == [1001]
        peer.send(1, CloseConnection(code=1001))
        peer.client.end_stream(1)
        await peer.settle()
        assert seen[-1]["code"] == 1001 and not peer.server.streams
        assert peer.transport.closed  # the final GOAWAY, then the close

    asyncio.run(run())


def test_the_size_limit_and_the_pings_apply_on_a_stream():
    async def run():
        seen: list = []
        peer = WebSocketPeer(echo_app(seen), max_size=10, ping_interval=5)
        peer.open()
        await peer.settle()
        [session] = peer.state.websockets
        peer.send(1, BytesMessage(data=b"x" * 11))
        await peer.settle()
        assert [e.code for e in peer.received() if isinstance(e, CloseConnection)] == [1009]
        assert seen[-1]["code"] == 1009

        peer = WebSocketPeer(echo_app(seen), ping_interval=5)
        peer.open()
        await peer.settle()
        [session] = peer.state.websockets
        session.check_timeouts(session.next_ping_at)
        await peer.settle()
        assert [type(e).__name__ for e in peer.received()] == ["Ping"]
        session.check_timeouts(session.next_ping_at)  # unanswered for ping_timeout: dropped
        await peer.settle()
        assert [e.error_code for e in peer.of(h2.events.StreamReset, 1)] == [8]  # CANCEL
        assert seen[-1] == {"type": "websocket.disconnect", "code": 1011,
                            "reason": "keepalive ping timeout"}
        assert not peer.server.streams and not peer.state.websockets

    asyncio.run(run())
