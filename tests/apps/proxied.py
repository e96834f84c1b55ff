"""What a request learned from its connection's PROXY header, as JSON (test_proxy_protocol.py).

Every HTTP request and every WebSocket (accepted, one text message, closed) gets
{"type", "path", "client", "server", "scheme", "headers", "tls", "proxy_protocol"}, where
proxy_protocol is scope["extensions"]["proxy_protocol"] with bytes as latin-1 text (JSON has no
bytes) and TLV types as decimal keys; "tls" says whether the TLS extension is there.
"""

from __future__ import annotations

import json

from tests.apps.common import answer_lifespan, read_body


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def describe(scope: dict) -> bytes:
    extensions = scope.get("extensions") or {}
    proxy = extensions.get("proxy_protocol")
    return json.dumps({
        "type": scope["type"], "path": scope["path"], "client": scope["client"],
        "server": scope["server"], "scheme": scope["scheme"],
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "tls": "tls" in extensions,
        "proxy_protocol": None if proxy is None else _plain(proxy),
    }).encode()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": describe(scope).decode()})
        await send({"type": "websocket.close"})
        return
    await read_body(receive)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": describe(scope)})
