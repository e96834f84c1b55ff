"""The ASGI websocket protocol over wsproto, on a connection taken over from HTTP/1.1.

An HttpConnection that reads a WebSocket upgrade request hands its transport to a
WebSocketSession (transport.set_protocol), with the bytes that followed the head. wsproto
checks the handshake from the head already parsed (no second parse of the wire bytes) and
writes the answer once the app has decided: websocket.accept -> 101, websocket.close before
accept -> 403, websocket.http.response.* -> the app's own response. Then frames <-> messages.

Flow control: complete incoming messages wait in a queue for receive(); past QUEUE_MESSAGES
or QUEUE_BYTES the socket stops being read until the app catches up, so a client cannot flood
a worker that the app does not read from. Outgoing, send() awaits the transport's drain once
its buffer is full: a slow reader slows the app down instead of growing the worker.

No timer per connection: ServerState.tick calls check_timeouts once a second, which sends the
keepalive pings, closes peers that do not answer them, and drops peers that never complete a
close handshake.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from dataclasses import dataclass
from typing import Any

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import RemoteProtocolError

from .asgi import ClientDisconnected
from .http11 import (
    SERVER_HEADER,
    FlowControlledProtocol,
    HttpConnection,
    RequestData,
    ServerState,
    error_response,
)
from .logs import log

# Reading pauses while this many messages, or bytes of them, wait for the app's receive().
QUEUE_MESSAGES = 16
QUEUE_BYTES = 1024 * 1024
# A peer that does not answer our close frame within this many seconds is dropped.
CLOSE_TIMEOUT = 5.0

# Close codes (RFC 6455 7.4.1)
NORMAL = 1000
GOING_AWAY = 1001
ABNORMAL = 1006  # never sent: the connection ended without a close frame
TOO_BIG = 1009
INTERNAL_ERROR = 1011


@dataclass(frozen=True)
class WebSocketUpgrade:
    """The worker's WebSocket settings, and the hook that HttpConnection calls with a request
    that asks for a protocol switch (ServerState.upgrade)."""

    max_size: int = 16 * 1024 * 1024  # largest message, else close 1009 (0: no limit)
    ping_interval: float = 20.0  # seconds between keepalive pings (0: none)
    ping_timeout: float = 20.0  # seconds a ping may go unanswered (0: no limit)
    per_message_deflate: bool = True

    def __call__(self, connection: HttpConnection, request: RequestData) -> bool:
        """Take `connection` over if `request` is a WebSocket handshake; False: serve it as
        plain HTTP. Only a GET without a body qualifies (read_head has checked that
        Connection asks for the upgrade); wsproto then judges the handshake itself."""
        if request.method != "GET" or request.chunked or request.content_length \
                or b"websocket" not in [token.strip() for token in request.upgrade.split(b",")]:
            return False
        data = connection.parser.take_upgrade_data()
        read_paused = connection.hand_over()
        WebSocketSession(self, connection, request, data, read_paused).start()
        return True


class WebSocketSession(FlowControlledProtocol):
    """One WebSocket connection: the handshake, then ASGI messages <-> wsproto events."""

    __slots__ = ("state", "settings", "client", "server", "request", "ws", "scope", "accepted",
                 "refused", "close_sent", "close_sent_at", "disconnect", "connect_delivered",
                 "messages", "queued_bytes", "fragments", "fragment_size", "pending", "waiter",
                 "ping_sent_at", "next_ping_at", "denial", "start_time")

    def __init__(self, settings: WebSocketUpgrade, connection: HttpConnection,
                 request: RequestData, data: bytes, read_paused: bool):
        super().__init__()
        self.state: ServerState = connection.state
        self.settings = settings
        self.transport = connection.transport
        self.client = connection.client
        self.server = connection.server
        self.request = request
        self.ws = WSConnection(ConnectionType.SERVER)
        self.scope: dict = {}
        self.accepted = False  # 101 sent: frames flow
        self.refused = False  # answered with an HTTP response instead (403, denial, 500)
        self.close_sent = False
        self.close_sent_at = 0.0
        self.disconnect: dict | None = None  # the websocket.disconnect the app will receive
        self.connect_delivered = False
        self.messages: deque[dict] = deque()
        self.queued_bytes = 0
        self.fragments: list = []  # the parts of the message being received
        self.fragment_size = 0
        self.pending: list[bytes] = [data] if data else []  # frames that came before accept
        self.read_paused = read_paused
        self.write_paused = connection.write_paused
        self.waiter: asyncio.Future | None = None
        self.ping_sent_at: float | None = None
        self.next_ping_at = 0.0
        self.denial: tuple | None = None  # (status, headers) of a websocket.http.response
        self.start_time = self.state.loop.time()

    def start(self) -> None:
        state = self.state
        self.transport.set_protocol(self)
        state.websockets.add(self)
        request = self.request
        try:
            self.ws.initiate_upgrade_connection(request.headers, request.target)
        except RemoteProtocolError as exc:
            # Not a valid handshake (no key, wrong version): wsproto says what to answer.
            self.refused = True
            self.write(self.ws.send(exc.event_hint))
            self.log_access(exc.event_hint.status_code)
            self.close()
            return
        except h11.ProtocolError:
            # wsproto re-serializes the head with h11, which may refuse what our parser let
            # through (read_head's rules are not h11's in every corner): still a bad request.
            self.refused = True
            self.write(error_response(400, state.date_header))
            self.log_access(400)
            self.close()
            return
        handshake = next(self.ws.events())
        self.scope = state.handler.get_websocket_scope(self, self.client, request,
                                                       handshake.subprotocols)
        self.resume_reading()  # frames that arrive now wait in self.pending, bounded below
        state.start_task(self.run(state.app))

    # --- the app ------------------------------------------------------------------------

    async def run(self, app: Any) -> None:
        """Run the app for this connection; every failure ends in a close or a response."""
        try:
            await app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            return  # the app let our "the client is gone" propagate: nothing to report
        except asyncio.CancelledError:
            self.abort()  # cancelled at the end of the graceful timeout
            raise
        except Exception:
            if self.closed and not (self.refused or self.accepted):
                log.debug("ASGI app raised after its WebSocket client left", exc_info=True)
                return
            log.exception("exception in ASGI app (WebSocket %s)", self.scope.get("path"))
            if not self.accepted and not self.refused:
                self.refuse(500)
            elif self.accepted:
                self.send_close(INTERNAL_ERROR, "")
            elif self.denial is not None:
                self.abort()  # a denial response that cannot be completed
            return
        if not self.accepted and not self.refused:
            if not self.closed:
                log.error("ASGI app returned without accepting or closing the WebSocket")
                self.refuse(500)
        elif self.accepted:
            self.send_close(NORMAL, "")
        elif self.denial is not None and not self.closed:
            log.error("ASGI app returned before its WebSocket denial response was complete")
            self.abort()

    async def receive(self) -> dict:
        if not self.connect_delivered:
            self.connect_delivered = True
            return {"type": "websocket.connect"}
        while True:
            messages = self.messages
            if messages:
                message = messages.popleft()
                self.queued_bytes -= message["size"]
                del message["size"]
                if self.read_paused and len(messages) < QUEUE_MESSAGES // 2 \
                        and self.queued_bytes < QUEUE_BYTES // 2:
                    self.resume_reading()
                return message
            if self.disconnect is not None:
                return self.disconnect
            self.waiter = self.state.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            if not self.accepted:
                raise RuntimeError("ASGI: 'websocket.send' before 'websocket.accept'")
            if self.close_sent or self.closed:
                raise ClientDisconnected("WebSocket closed")
            text = message.get("text")
            if text is not None:
                self.write(self.ws.send(TextMessage(data=text)))
            else:
                data = message.get("bytes")
                if data is None:
                    raise RuntimeError("ASGI: 'websocket.send' needs 'bytes' or 'text'")
                self.write(self.ws.send(BytesMessage(data=data)))
            if self.write_paused:
                await self.drain()
        elif kind == "websocket.accept":
            self._check_handshake_open(kind)
            self.accept(message.get("subprotocol"), message.get("headers") or ())
        elif kind == "websocket.close":
            if self.accepted:
                self.send_close(message.get("code", NORMAL), message.get("reason") or "")
            elif self.refused:
                pass  # already answered; a second close is harmless
            elif self.denial is not None:
                raise RuntimeError("ASGI: 'websocket.close' during a denial response")
            else:
                self.refuse(403)  # closed before accept: RFC 6455 4.2.2 lets us say 403
        elif kind == "websocket.http.response.start":
            self._check_handshake_open(kind)
            status = message["status"]
            if type(status) is not int or not 100 <= status <= 599 or status == 101:
                raise RuntimeError(f"ASGI: invalid denial response status {status!r}")
            self.denial = (status, list(message.get("headers") or ()))
        elif kind == "websocket.http.response.body":
            if self.denial is None:
                raise RuntimeError("ASGI: 'websocket.http.response.body' before "
                                   "'websocket.http.response.start'")
            self.send_denial_body(message.get("body", b""), message.get("more_body", False))
            if self.write_paused:
                await self.drain()
        else:
            raise RuntimeError(f"ASGI: unexpected message type {kind!r} for a WebSocket")

    def _check_handshake_open(self, kind: str) -> None:
        if self.accepted or self.refused or self.denial is not None:
            raise RuntimeError(f"ASGI: {kind!r} after the handshake was answered")
        if self.closed:
            raise ClientDisconnected("WebSocket client left before the handshake was answered")

    # --- the handshake ------------------------------------------------------------------

    def accept(self, subprotocol: str | None, headers) -> None:
        extensions = [PerMessageDeflate()] if self.settings.per_message_deflate else []
        extra = self.own_headers(headers)
        self.write(self.ws.send(AcceptConnection(
            subprotocol=subprotocol, extensions=extensions, extra_headers=extra + list(headers))))
        self.accepted = True
        self.log_access(101)
        now = self.state.loop.time()
        self.next_ping_at = now + self.settings.ping_interval
        if self.state.draining:
            self.send_close(GOING_AWAY, "server shutting down")
        pending, self.pending = self.pending, []
        for data in pending:
            if self.closed:
                break
            self.feed(data)
        if not self.closed:
            self.resume_reading()

    def own_headers(self, app_headers) -> list[tuple[bytes, bytes]]:
        """Server and Date for a handshake answer, unless the app gave its own."""
        names = {name.lower() for name, _ in app_headers}
        own = []
        if b"server" not in names:
            own.append((b"server", SERVER_HEADER[8:-2]))
        if b"date" not in names:
            own.append((b"date", self.state.date_header[6:-2]))
        return own

    def refuse(self, status: int) -> None:
        """Answer the handshake with a plain HTTP response (403 on close, 500 on an error)."""
        self.refused = True
        self.set_disconnect(ABNORMAL, "")
        self.write(self.ws.send(RejectConnection(
            status_code=status, headers=[*self.own_headers(()), (b"connection", b"close")])))
        self.log_access(status)
        self.close()

    def send_denial_body(self, body: bytes, more_body: bool) -> None:
        if self.refused:
            raise RuntimeError("ASGI: 'websocket.http.response.body' after the response ended")
        if self.ws.state is ConnectionState.CONNECTING:
            status, headers = self.denial
            headers = [(name, value) for name, value in headers
                       if name.lower() != b"connection"]
            headers.append((b"connection", b"close"))  # the connection cannot go on
            headers[:0] = self.own_headers(headers)
            self.write(self.ws.send(RejectConnection(status_code=status, headers=headers,
                                                     has_body=True)))
        self.write(self.ws.send(RejectData(data=body, body_finished=not more_body)))
        if not more_body:
            self.refused = True
            self.set_disconnect(ABNORMAL, "")
            self.log_access(self.denial[0])
            self.close()

    # --- frames -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.accepted:
            # Frames before our 101 (a client that does not wait): kept until accept, read no
            # further than one queue's worth.
            self.pending.append(data)
            if sum(map(len, self.pending)) > QUEUE_BYTES:
                self.pause_reading()
            return
        self.feed(data)

    def feed(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        max_size = self.settings.max_size
        for event in ws.events():
            kind = type(event)
            if kind is BytesMessage or kind is TextMessage:
                part = event.data
                self.fragment_size += len(part)
                if max_size and self.fragment_size > max_size:
                    self.fail(TOO_BIG, "message too big")
                    return
                if not event.message_finished:
                    self.fragments.append(part)
                    continue
                if self.fragments:
                    self.fragments.append(part)
                    part = ("" if kind is TextMessage else b"").join(self.fragments)
                    self.fragments = []
                size, self.fragment_size = self.fragment_size, 0
                if kind is TextMessage:
                    message = {"type": "websocket.receive", "text": part, "size": size}
                else:
                    message = {"type": "websocket.receive", "bytes": bytes(part), "size": size}
                self.enqueue(message)
            elif kind is Ping:
                self.write(ws.send(event.response()))
            elif kind is Pong:
                self.ping_sent_at = None
            elif kind is CloseConnection:
                self.set_disconnect(event.code, event.reason or "")
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    self.write(ws.send(event.response()))  # answer the client's close
                elif ws.state is ConnectionState.OPEN:
                    # wsproto reports a protocol violation as a close: send it, then go.
                    self.write(ws.send(CloseConnection(code=event.code, reason=event.reason)))
                self.close()
                return

    def enqueue(self, message: dict) -> None:
        self.messages.append(message)
        self.queued_bytes += message["size"]
        if len(self.messages) >= QUEUE_MESSAGES or self.queued_bytes >= QUEUE_BYTES:
            self.pause_reading()
        self._wake()

    def fail(self, code: int, reason: str) -> None:
        """Close the connection because of what the client sent."""
        log.debug("closing WebSocket from %s: %d %s", self.client, code, reason)
        self.send_close(code, reason)
        self.set_disconnect(code, reason)
        self.close()

    def send_close(self, code: int, reason: str) -> None:
        """Start the close handshake; the transport closes once the client answers."""
        if self.close_sent or self.closed:
            return
        if self.ws.state is ConnectionState.OPEN:
            self.write(self.ws.send(CloseConnection(code=code, reason=reason or None)))
        self.close_sent = True
        self.close_sent_at = self.state.loop.time()
        self.set_disconnect(code, reason)

    def set_disconnect(self, code: int, reason: str) -> None:
        if self.disconnect is None:
            self.disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- shutdown and the once-a-second sweep -------------------------------------------

    def going_away(self) -> None:
        """The worker is draining: close with 1001 now (or right after a pending accept)."""
        if self.accepted:
            self.send_close(GOING_AWAY, "server shutting down")
            self.resume_reading()  # the client's close answer must be read

    def check_timeouts(self, now: float) -> None:
        if self.closed or not self.accepted:
            return
        if self.close_sent:
            if now - self.close_sent_at >= CLOSE_TIMEOUT:
                log.debug("WebSocket client %s did not answer our close frame", self.client)
                self.abort()
            return
        settings = self.settings
        if not settings.ping_interval or self.read_paused:
            return  # while we do not read, the peer's pong could not be seen
        if self.ping_sent_at is not None:
            if settings.ping_timeout and now - self.ping_sent_at >= settings.ping_timeout:
                log.debug("WebSocket client %s did not answer a ping in %.0f s: closing",
                          self.client, settings.ping_timeout)
                self.set_disconnect(INTERNAL_ERROR, "keepalive ping timeout")
                self.abort()
        elif now >= self.next_ping_at:
            self.write(self.ws.send(Ping(payload=os.urandom(4))))
            self.ping_sent_at = now
            self.next_ping_at = now + settings.ping_interval

    # --- transport (write, pause/resume, close: FlowControlledProtocol) ----------------------

    async def drain(self) -> None:
        await super().drain()
        if self.closed and self.accepted:
            raise ClientDisconnected("WebSocket closed")

    def eof_received(self) -> bool:
        self.set_disconnect(ABNORMAL, "")
        return False  # nothing more can arrive; let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.set_disconnect(ABNORMAL, "")
        self.state.websockets.discard(self)
        self.wake_drain()  # a send() waiting for drain goes on, and raises ClientDisconnected
        self.state.check_drained()

    def abort(self) -> None:
        self.set_disconnect(ABNORMAL, "")
        super().abort()

    def log_access(self, status: int) -> None:
        access_log = self.state.handler.access_log
        if access_log is not None:
            request = self.request
            access_log.write(self.client, request.method, request.target.decode("latin-1"),
                             request.http_version, status, 0,
                             self.state.loop.time() - self.start_time)
