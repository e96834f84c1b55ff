"""The WebSocket opening handshake, over HTTP/1.1 (RFC 6455) or over HTTP/2 (RFC 8441): the
rules a request must meet (decisions, testable without a socket) and the answers.

A handshake arrives as a stream's head: an HTTP/1.1 GET with Upgrade (http1.stream.Http1Stream,
whose connection the session then takes over) or an HTTP/2 extended CONNECT with :protocol
websocket (http2.tunnel.TunnelStream, whose DATA frames then carry the frames). Either way the
head is first held to its RFC's rules (handshake_refusal, http2_handshake_refusal): a broken
rule is answered 400, or 426 for a version other than 13, before the app sees anything. A
good one becomes a session (websocket.WebSocketSession) with one of the handshakes below, which
know how to answer on their own wire; the session itself never does:

  Http1Handshake  wsproto's HTTP/1.1 handshake (H11Handshake inside WSConnection): 101 with
                  Sec-WebSocket-Accept, or an HTTP/1.1 response that closes the connection;
                  after the 101 the same WSConnection is the frame layer.
  Http2Handshake  HEADERS on the stream: :status 200 (no Sec-WebSocket-Key/Accept over HTTP/2,
                  RFC 8441 5), or the refusal's status; its body, like every byte after the
                  head, goes out as DATA through the stream's transport. The frame layer is
                  wsproto's Connection without a handshake of its own.

Both negotiate Sec-WebSocket-Protocol and Sec-WebSocket-Extensions the same way (wsproto's
server_extensions_handshake), and both answer with the server's Server and Date unless the
app gave its own.
"""

from __future__ import annotations

import binascii
from typing import TYPE_CHECKING, Any

from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, RejectConnection, RejectData
from wsproto.events import Request as HandshakeRequest
from wsproto.extensions import Extension
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import LocalProtocolError, split_comma_header

from ..http1.stream import encode_error
from ..stream import SERVER, ClientDisconnected, error_response

if TYPE_CHECKING:
    from ..http1.stream import Http1Stream
    from ..http2.tunnel import TunnelStream

Headers = list[tuple[bytes, bytes]]

# --- the rules (RFC 6455 4.2.1 over HTTP/1.1, RFC 8441 4-5 over HTTP/2) ---------------------


def has_token(values: list[bytes], token: bytes) -> bool:
    """Whether comma-separated header `values` list `token` (ASCII case-insensitive)."""
    return any(part.strip().lower() == token for value in values for part in value.split(b","))


def is_key(values: list[bytes]) -> bool:
    """One Sec-WebSocket-Key that is the base64 of 16 bytes (4.2.1 item 5)."""
    if len(values) != 1:
        return False
    try:
        return len(binascii.a2b_base64(values[0], strict_mode=True)) == 16
    except binascii.Error:
        return False


def _fields(headers: Headers, names: tuple[bytes, ...]) -> dict[bytes, list[bytes]]:
    fields: dict[bytes, list[bytes]] = {name: [] for name in names}
    for name, value in headers:
        values = fields.get(name)
        if values is not None:
            values.append(value)
    return fields


_HANDSHAKE_FIELDS = (b"host", b"upgrade", b"connection", b"sec-websocket-key",
                     b"sec-websocket-version")


def handshake_refusal(method: str, http_version: str, headers: Headers,
                      has_body: bool) -> tuple[int, str] | None:
    """What RFC 6455 4.2.1 has a server verify before it answers 101, and wsproto does not
    (it takes any method and version, an Upgrade that is exactly "websocket", any key): None
    for a good handshake, else (status, why) for the first rule broken, in the RFC's order.
    `headers` are (lowercase name, value) pairs. A body is refused too: a handshake has none,
    and its bytes would be read as frames."""
    fields = _fields(headers, _HANDSHAKE_FIELDS)
    rules = (
        (method == "GET", 400, "the method of a WebSocket handshake is GET"),
        (http_version not in ("0.9", "1.0"), 400, "a WebSocket handshake is HTTP/1.1 or later"),
        (not has_body, 400, "a WebSocket handshake has no body"),
        (bool(fields[b"host"]), 400, "no Host header"),
        (has_token(fields[b"upgrade"], b"websocket"), 400, "Upgrade does not name websocket"),
        (has_token(fields[b"connection"], b"upgrade"), 400, "Connection does not list Upgrade"),
        (is_key(fields[b"sec-websocket-key"]), 400,
         "Sec-WebSocket-Key is not one base64-encoded 16-byte value"),
        (fields[b"sec-websocket-version"] == [b"13"], 426, "Sec-WebSocket-Version is not 13"),
    )
    return next(((status, why) for ok, status, why in rules if not ok), None)


_HTTP2_FIELDS = (b":scheme", b":path", b":authority", b"content-length",
                 b"sec-websocket-version")


def http2_handshake_refusal(headers: Headers, ended: bool) -> tuple[int, str] | None:
    """The same for an HTTP/2 extended CONNECT with :protocol websocket (RFC 8441 4-5; h2 has
    checked that :protocol comes with CONNECT only, and that :scheme and :path are there):
    None for a good handshake, else (status, why). `headers` are the stream's fields as h2
    decoded them, pseudo-headers first; `ended`: the client ended the stream with its head,
    so no frame can follow. Sec-WebSocket-Key is not used over HTTP/2, nor refused."""
    fields = _fields(headers, _HTTP2_FIELDS)
    rules = (
        (bool(fields[b":scheme"]) and bool(fields[b":path"]), 400,
         "an extended CONNECT names :scheme and :path"),
        (bool(fields[b":authority"]), 400, "no :authority"),
        (not fields[b"content-length"] and not ended, 400,
         "a WebSocket handshake has no body, and leaves the stream open"),
        (fields[b"sec-websocket-version"] == [b"13"], 426, "Sec-WebSocket-Version is not 13"),
    )
    return next(((status, why) for ok, status, why in rules if not ok), None)


def refusal_response(status: int, why: str, date_header: bytes) -> bytes:
    """The HTTP/1.1 answer to a handshake we will not take (the server's own error response,
    closing the connection); a 426 names the version we speak (RFC 6455 4.4)."""
    return encode_error(status, date_header, why, refusal_headers(status))


def refusal_headers(status: int) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"Sec-WebSocket-Version", b"13"),) if status == 426 else ()


def own_headers(app_headers: Any, date: bytes) -> Headers:
    """Server and Date for a handshake answer (101 or 200, the app's denial response), unless
    the app gave its own: the values every response of the worker has."""
    names = {name.lower() for name, _ in app_headers}
    own = []
    if b"server" not in names:
        own.append((b"server", SERVER))
    if b"date" not in names:
        own.append((b"date", date))
    return own


def offered(headers: Headers, name: bytes) -> list[str]:
    """The comma-separated tokens of every `name` field (subprotocols, extension offers)."""
    tokens: list[str] = []
    for field, value in headers:
        if field == name:
            tokens.extend(split_comma_header(value))
    return tokens


# --- the answers --------------------------------------------------------------------------

class Http1Handshake:
    """The handshake of an HTTP/1.1 upgrade: wsproto's, which writes the 101 (or the refusal)
    and is then the frame layer. Each answer is bytes for the session to write."""

    __slots__ = ("ws",)

    accepted_status = 101  # for the access log

    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)

    def begin(self, request: Http1Stream) -> list[str]:
        """Read the head (handshake_refusal has checked it): the subprotocols offered. Raises
        wsproto's RemoteProtocolError or h11's ProtocolError for a head h11 will not take."""
        # wsproto reads Upgrade and Connection more narrowly than handshake_refusal (one
        # value, exactly "websocket"; the last Connection field only).
        headers = [(name, value) for name, value in request.headers
                   if name != b"upgrade" and name != b"connection"]
        headers += ((b"upgrade", b"websocket"), (b"connection", b"Upgrade"))
        self.ws.initiate_upgrade_connection(headers, request.target)
        # the Request event of the handshake initiate_upgrade_connection was given
        event: HandshakeRequest = next(self.ws.events())  # type: ignore[assignment]
        return event.subprotocols

    def accept(self, subprotocol: str | None, extensions: list[Extension], headers: Headers,
               date: bytes) -> tuple[bytes, Any]:
        """The 101 and the frame layer (the same WSConnection, open now)."""
        data = self.ws.send(AcceptConnection(
            subprotocol=subprotocol, extensions=extensions,
            extra_headers=own_headers(headers, date) + list(headers)))
        return data, self.ws

    def refuse(self, status: int, date_header: bytes, date: bytes) -> bytes:
        """The server's own response for `status` (403 on close, 500 on an error)."""
        return encode_error(status, date_header)

    def deny(self, status: int, headers: Headers, date: bytes) -> bytes:
        """The head of the app's denial response (websocket.http.response.start)."""
        headers = [(name, value) for name, value in headers if name.lower() != b"connection"]
        headers.append((b"connection", b"close"))  # the connection cannot go on
        headers[:0] = own_headers(headers, date)
        return self.ws.send(RejectConnection(status_code=status, headers=headers,
                                             has_body=True))

    def deny_body(self, body: bytes, finished: bool) -> bytes:
        return self.ws.send(RejectData(data=body, body_finished=finished))


class Http2Handshake:
    """The handshake of an HTTP/2 extended CONNECT (RFC 8441): the answer's head goes on the
    stream as HEADERS, its body and then the frames as DATA through the stream's transport
    (each answer returns the bytes for the session to write)."""

    __slots__ = ("stream", "extensions")

    accepted_status = 200

    def __init__(self, stream: TunnelStream) -> None:
        self.stream = stream
        self.extensions: list[str] = []  # offered

    def begin(self, request: TunnelStream) -> list[str]:
        headers = request.headers
        self.extensions = offered(headers, b"sec-websocket-extensions")
        return offered(headers, b"sec-websocket-protocol")

    def accept(self, subprotocol: str | None, extensions: list[Extension], headers: Headers,
               date: bytes) -> tuple[bytes, Any]:
        """HEADERS :status 200 (the stream stays open), and the frame layer."""
        fields: Headers = []
        if subprotocol is not None:
            if subprotocol not in offered(self.stream.headers, b"sec-websocket-protocol"):
                raise LocalProtocolError(f"unexpected subprotocol {subprotocol}")  # as wsproto
            fields.append((b"sec-websocket-protocol", subprotocol.encode("ascii")))
        if extensions:
            accepts = server_extensions_handshake(self.extensions, extensions)
            if accepts:
                fields.append((b"sec-websocket-extensions", accepts))
        self.head(200, [*fields, *headers])
        return b"", Connection(ConnectionType.SERVER, extensions)

    def refuse(self, status: int, date_header: bytes, date: bytes) -> bytes:
        headers, body = error_response(status)
        self.head(status, [*headers, (b"content-length", b"%d" % len(body))])
        return body

    def deny(self, status: int, headers: Headers, date: bytes) -> bytes:
        self.head(status, headers)
        return b""

    def head(self, status: int, headers: Headers) -> None:
        """The answer's HEADERS (the stream stays open for DATA). A stream the client has
        reset meanwhile takes nothing, as a closed socket does: the session hears of it from
        the transport (connection_lost)."""
        try:
            self.stream.send_head(status, headers, b"", True)
        except ClientDisconnected:
            pass

    def deny_body(self, body: bytes, finished: bool) -> bytes:
        return body  # the stream's END_STREAM, once the session closes it, ends the response
