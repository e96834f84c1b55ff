"""The ASGI websocket protocol over wsproto, on a connection taken over from HTTP/1.1 or on an
HTTP/2 stream (RFC 8441 extended CONNECT).

One session (WebSocketSession) serves both; what differs sits on either side of it:

  the handshake  an HTTP/1.1 GET with Upgrade: websocket, or an HTTP/2 CONNECT with :protocol
                 websocket. Its rules and its answers (101 or HEADERS 200, the refusals) are
                 websocket_handshake.py's; the session asks its handshake object to answer.
  the transport  the connection's own (the session is its protocol after switch_protocol), or
                 the HTTP/2 stream (http2.tunnel.TunnelStream), which looks to the session like
                 an asyncio transport: data_received with the DATA frames (their window
                 reopened as they are handed over), write() as DATA frames (waiting for the
                 client's windows in order), close() as END_STREAM, abort() as RST_STREAM, and
                 a client's RST_STREAM or a lost connection as connection_lost.

A request whose Connection lists "upgrade" and whose Upgrade names "websocket" is a WebSocket
handshake; any other request is plain HTTP (RFC 9110 7.8 lets a server ignore Upgrade). A
handshake is held to RFC 6455 4.2.1 first (handshake_refusal): one that breaks a rule is
answered 400, or 426 for a version other than 13, with Connection: close, and never reaches
the app (uvicorn, through websockets, also refuses such a request rather than passing it on;
it says 405 and 505 where we say 400); over HTTP/2, RFC 8441's rules
(http2_handshake_refusal) with the same statuses. A good one makes the HttpConnection hand its
transport to a WebSocketSession (net.stages.switch_protocol), with the bytes that followed the
head and the connection's facts, or the stream to one (over_http2); the handshake is answered
once the app has decided: websocket.accept -> 101 (HTTP/2: 200), websocket.close before accept
-> 403, websocket.http.response.* -> the app's own response, no decision within
--ws-accept-timeout -> 500. Then frames <-> messages.

Limits: a message is at most --ws-max-size bytes (else close 1009), counted across its frames
and, when permessage-deflate is on, enforced while it is inflated (CappedPerMessageDeflate): a
few hundred KB of deflated zeros never become hundreds of MiB before the size is checked.

Flow control: complete incoming messages wait in a queue for receive(); past QUEUE_MESSAGES
or QUEUE_BYTES the transport stops being read until the app catches up, so a client cannot
flood a worker that the app does not read from (over HTTP/2: the stream's window is not
reopened meanwhile). Outgoing, send() awaits the transport's drain once its buffer is full
(HTTP/2: once the client's window is shut): a slow reader slows the app down instead of growing
the worker, and one that reads nothing for --send-timeout seconds is dropped (as for HTTP:
FlowControlledProtocol; over HTTP/2 the connection enforces it, as for its other streams).

No timer per connection: ServerState.tick calls check_timeouts once a second, which answers
handshakes the app left undecided, drops peers whose writes make no progress, sends the
keepalive pings, closes peers that do not answer them, and drops peers that never complete a
close handshake.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, Opcode, RsvBits
from wsproto.utilities import RemoteProtocolError

from ..http1.connection import FlowControlledProtocol, HttpConnection, ServerState
from ..http1.stream import Http1Stream
from ..logs import log
from ..net.stages import ConnectionFacts, switch_protocol
from ..stream import ClientDisconnected, Waiter, error_response
from .websocket_handshake import (
    Http1Handshake,
    Http2Handshake,
    handshake_refusal,
    has_token,
    http2_handshake_refusal,
    refusal_headers,
    refusal_response,
)

if TYPE_CHECKING:
    from ..http2.tunnel import TunnelStream

__all__ = ["CappedPerMessageDeflate", "WebSocketSession", "WebSocketUpgrade",
           "handshake_refusal", "http2_handshake_refusal"]

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
    """The worker's WebSocket settings, and the hooks that start a session: the one
    HttpConnection calls with a request that asks for a protocol switch (ServerState.upgrade),
    and the one Http2Connection calls with an extended CONNECT for "websocket" (over_http2)."""

    max_size: int = 16 * 1024 * 1024  # largest message, else close 1009 (0: no limit)
    ping_interval: float = 20.0  # seconds between keepalive pings (0: none)
    ping_timeout: float = 20.0  # seconds a ping may go unanswered (0: no limit)
    per_message_deflate: bool = True
    accept_timeout: float = 10.0  # seconds the app has to accept or refuse (0: no limit)

    def __call__(self, connection: HttpConnection, request: Http1Stream) -> bool:
        """Take `connection` over if `request` asks for a WebSocket (read_head has checked
        that Connection asks for an upgrade): start the session, or refuse a bad handshake.
        False: serve it as plain HTTP (an upgrade to something else)."""
        assert request.upgrade is not None  # HttpConnection offers requests with Upgrade only
        if not has_token([request.upgrade], b"websocket"):
            return False
        refusal = handshake_refusal(request.method, request.http_version, request.headers,
                                    bool(request.chunked or request.content_length))
        if refusal is not None:
            state = connection.state
            status, why = refusal
            log.debug("refused a WebSocket handshake from %s: %d %s", connection.client,
                      status, why)
            connection.write(refusal_response(status, why, state.date_header))
            state.handler.write_access_log(request, request.client, status, 0)
            connection.close()
            return True
        data = connection.parser.take_upgrade_data()
        read_paused = connection.hand_over()
        session = WebSocketSession(self, connection.state, request, Http1Handshake())
        switch_protocol(connection.transport, session, connection.facts, data, read_paused,
                        connection.write_paused)
        return True

    def over_http2(self, stream: TunnelStream, headers: list[tuple[bytes, bytes]],
                   ended: bool) -> None:
        """An HTTP/2 stream whose head is a CONNECT with :protocol websocket (RFC 8441; the
        connection's tunnels table): start the session on it, or refuse a bad handshake on
        the stream. `headers` are the head's fields with its pseudo-headers; `ended`: it came
        with END_STREAM."""
        state = stream.connection.state
        refusal = http2_handshake_refusal(headers, ended)
        if refusal is not None:
            status, why = refusal
            log.debug("refused a WebSocket handshake (HTTP/2) from %s: %d %s", stream.client,
                      status, why)
            fields, body = error_response(status, why)
            stream.respond(status, [*fields, *refusal_headers(status)], body)
            state.handler.write_access_log(stream, stream.client, status, 0)
            return
        stream.start(WebSocketSession(self, state, stream, Http2Handshake(stream)))


# --- permessage-deflate with the size limit inside the inflater -----------------------------

class CappedPerMessageDeflate(PerMessageDeflate):
    """wsproto's permessage-deflate (RFC 7692), but its inflater never produces more than the
    message may still grow by: each decompress call is bounded by zlib's max_length, so a
    message over `max_size` (0: no limit) is refused with 1009 after at most max_size bytes,
    however small it is on the wire. wsproto inflates each piece of a frame as it arrives and
    then checks nothing; we count across the frames of a message.

    Also: a control frame between the fragments of a compressed message leaves the message's
    compression alone (wsproto forgets it, and then passes the rest of the message through
    still deflated)."""

    # wsproto's Optional[zlib._Decompress]: set by frame_inbound_header for a compressed
    # message, which is all _inflate is called for (typed so, for that per-frame path).
    _decompressor: Any

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self.max_size = max_size
        self.inflated = 0  # bytes the current message has inflated to so far

    def frame_inbound_header(self, proto, opcode: Opcode, rsv: RsvBits,
                             payload_length: int) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
            self._inbound_is_compressible = False
            return RsvBits(True, False, False)
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(self, proto, data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        return self._inflate(bytes(data))

    def frame_inbound_complete(self, proto, fin: bool) -> bytes | CloseReason | None:
        if not fin or not self._inbound_is_compressible:
            return None  # a message goes on past a frame without FIN, and past a control frame
        if not self._inbound_compressed:
            self._inbound_compressed = None
            return None
        data = self._inflate(b"\x00\x00\xff\xff")  # RFC 7692 7.2.2: the tail not sent
        if proto.client:
            no_context_takeover = self.server_no_context_takeover
        else:
            no_context_takeover = self.client_no_context_takeover
        if no_context_takeover:
            self._decompressor = None
        self._inbound_compressed = None
        self.inflated = 0
        return data

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        max_size = self.max_size
        try:
            if not max_size:
                return self._decompressor.decompress(data)
            # One byte more than the message may still take: getting it means over the limit.
            out = self._decompressor.decompress(data, max_size - self.inflated + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self.inflated += len(out)
        if self.inflated > max_size:
            return CloseReason.MESSAGE_TOO_BIG
        return out


class WebSocketSession(FlowControlledProtocol):
    """One WebSocket: the handshake's decision, then ASGI messages <-> wsproto events, on
    either transport (see the module docstring)."""

    __slots__ = ("state", "settings", "client", "server", "request", "handshake", "ws",
                 "scope", "accepted", "refused", "denial_started", "close_sent",
                 "close_sent_at", "disconnect", "connect_delivered",
                 "messages", "queued_bytes", "fragments", "fragment_size", "pending", "receiver",
                 "ping_sent_at", "next_ping_at", "denial", "start_time", "task", "facts")

    facts: ConnectionFacts  # and client, server: set by take_over

    def __init__(self, settings: WebSocketUpgrade, state: ServerState,
                 request: Http1Stream | TunnelStream,
                 handshake: Http1Handshake | Http2Handshake):
        super().__init__()
        self.state = state
        self.settings = settings
        self.request = request
        self.handshake = handshake
        # The frame layer once accepted (over HTTP/1.1, the handshake's WSConnection, which
        # is that already; over HTTP/2, a wsproto Connection made at accept).
        self.ws: Any = handshake.ws if type(handshake) is Http1Handshake else None
        self.scope: dict = {}
        self.accepted = False  # 101 (HTTP/2: 200) sent: frames flow
        self.refused = False  # answered with an HTTP response instead (403, denial, 500)
        self.denial_started = False  # the head of the app's denial response has been sent
        self.close_sent = False
        self.close_sent_at = 0.0
        self.disconnect: dict | None = None  # the websocket.disconnect the app will receive
        self.connect_delivered = False
        self.messages: deque[dict] = deque()
        self.queued_bytes = 0
        self.fragments: list = []  # the parts of the message being received
        self.fragment_size = 0
        self.pending: list[bytes] = []  # frames that came before accept
        self.receiver = Waiter()  # receive() waiting for a message or the disconnect
        self.ping_sent_at: float | None = None
        self.next_ping_at = 0.0
        self.denial: tuple | None = None  # (status, headers) of a websocket.http.response
        self.start_time = self.state.loop.time()
        self.task: asyncio.Task | None = None  # the app's, for the accept timeout to cancel

    def take_over(self, transport: Any, facts: ConnectionFacts,
                  read_paused: bool, write_paused: bool) -> None:
        """The connection is ours (switch_protocol; or the HTTP/2 stream, TunnelStream.start,
        which is an asyncio transport to us); then the bytes after the head arrive."""
        self.transport = transport
        self.facts = facts
        self.client = facts.client
        self.server = facts.server
        self.read_paused = read_paused
        self.write_paused = write_paused
        self.start()

    def start(self) -> None:
        state = self.state
        state.websockets.add(self)
        request = self.request
        try:
            subprotocols = self.handshake.begin(request)  # type: ignore[arg-type]
        except (RemoteProtocolError, h11.ProtocolError) as exc:
            # wsproto re-serializes the head with h11, which may refuse what our parser let
            # through (read_head's rules are not h11's in every corner): still a bad request.
            self.refused = True
            self.write(refusal_response(400, "not a valid HTTP/1.1 request", state.date_header))
            log.debug("refused a WebSocket handshake from %s: %s", self.client, exc)
            self.log_access(400)
            self.close()
            return
        self.scope = state.handler.get_websocket_scope(request, subprotocols)
        self.resume_reading()  # frames that arrive now wait in self.pending, bounded below
        state.start_task(self.run(state.app))

    # --- the app ------------------------------------------------------------------------

    async def run(self, app: Any) -> None:
        """Run the app for this connection; every failure ends in a close or a response."""
        self.task = asyncio.current_task()
        try:
            await self.run_app(app)
        finally:
            self.task = None
            if self.closed:
                self.state.websockets.discard(self)  # kept while the app had not decided

    async def run_app(self, app: Any) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            return  # the app let our "the client is gone" propagate: nothing to report
        except asyncio.CancelledError:
            if not self.closed:
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
            await self.receiver.wait(self.state.loop)

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

    def awaiting_app(self) -> bool:
        """The app has neither accepted nor refused yet (nor begun a denial response)."""
        return not (self.accepted or self.refused or self.denial_started)

    def _check_handshake_open(self, kind: str) -> None:
        if self.accepted or self.refused or self.denial is not None:
            raise RuntimeError(f"ASGI: {kind!r} after the handshake was answered")
        if self.closed:
            raise ClientDisconnected("WebSocket client left before the handshake was answered")

    # --- the handshake ------------------------------------------------------------------

    def accept(self, subprotocol: str | None, headers) -> None:
        settings = self.settings
        extensions: list[Extension] = [CappedPerMessageDeflate(settings.max_size)] \
            if settings.per_message_deflate else []
        handshake = self.handshake
        data, self.ws = handshake.accept(subprotocol, extensions, list(headers),
                                         self.state.date)
        self.write(data)
        self.accepted = True
        self.log_access(handshake.accepted_status)
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

    def refuse(self, status: int) -> None:
        """Answer the handshake with the server's own HTTP response (403 on close, 500 on an
        error), as the HTTP/1.1 codec writes it for every error."""
        self.refused = True
        self.set_disconnect(ABNORMAL, "")
        state = self.state
        self.write(self.handshake.refuse(status, state.date_header, state.date))
        self.log_access(status)
        self.close()

    def send_denial_body(self, body: bytes, more_body: bool) -> None:
        if self.refused:
            raise RuntimeError("ASGI: 'websocket.http.response.body' after the response ended")
        assert self.denial is not None  # send() checked: websocket.http.response.start came first
        handshake = self.handshake
        if not self.denial_started:
            self.denial_started = True
            status, headers = self.denial
            self.write(handshake.deny(status, headers, self.state.date))
        self.write(handshake.deny_body(body, not more_body))
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
        event: Any  # a wsproto event, dispatched on type(event) below
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
                if ws.state is ConnectionState.OPEN:
                    # wsproto reports a protocol violation as a close: send it, then go. (1009
                    # comes from the inflater: said as for a message too big uncompressed.)
                    self.fail(event.code, "message too big" if event.code == TOO_BIG
                              else event.reason or "")
                    return
                self.set_disconnect(event.code, event.reason or "")
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    self.write(ws.send(event.response()))  # answer the client's close
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
        self.receiver.wake()

    # --- shutdown and the once-a-second sweep -------------------------------------------

    def going_away(self) -> None:
        """The worker is draining: close with 1001 now (or right after a pending accept)."""
        if self.accepted:
            self.send_close(GOING_AWAY, "server shutting down")
            self.resume_reading()  # the client's close answer must be read

    def check_timeouts(self, now: float) -> None:
        state = self.state
        if (self.closed or self.write_paused) and state.send_timeout \
                and self.send_stalled(now, state.send_timeout):
            log.debug("send timeout: WebSocket client %s read nothing for %.0f s", self.client,
                      state.send_timeout)
            self.abort()  # the app's send() raises ClientDisconnected, receive() gets 1006
            return
        if not self.accepted:
            timeout = self.settings.accept_timeout
            if timeout and now - self.start_time >= timeout and self.awaiting_app():
                self.accept_timed_out()
            return
        if self.closed:
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

    def accept_timed_out(self) -> None:
        """The app took longer than --ws-accept-timeout to decide: answer 500 for it, and
        cancel it (the handshake is over: there is nothing left for it to do)."""
        left = self.closed
        log.error("ASGI app neither accepted nor refused the WebSocket handshake for %s within "
                  "--ws-accept-timeout %g s: %s, app cancelled", self.scope.get("path"),
                  self.settings.accept_timeout,
                  "the client had left" if left else "answered 500")
        if left:
            self.refused = True
        else:
            self.refuse(500)
        if self.task is not None:
            self.task.cancel()
        else:
            self.state.websockets.discard(self)

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
        if not (self.awaiting_app() and self.task is not None):
            # (an app still deciding stays in the sweep, for the accept timeout; run() ends it)
            self.state.websockets.discard(self)
        self.wake_drain()  # a send() waiting for drain goes on, and raises ClientDisconnected
        self.state.check_drained()

    def abort(self) -> None:
        self.set_disconnect(ABNORMAL, "")
        super().abort()

    def log_access(self, status: int) -> None:
        self.state.handler.write_access_log(self.request, self.scope.get("client", self.client),
                                            status, 0)
