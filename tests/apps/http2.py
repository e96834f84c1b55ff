"""The HTTP/2 tests' app: downloads, an echo that streams back as it reads, trailers, waits."""

import asyncio
import os

from tests.apps.common import answer_lifespan


def _params(scope) -> dict:
    return dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    path, params = scope["path"], _params(scope)
    if path == "/big":  # ?size=N bytes, sent in 64 KiB messages
        size = int(params.get("size", 1 << 20))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % size)]})
        chunk = b"x" * 65536
        while size > 0:
            piece = chunk[:size]
            size -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": size > 0})
    elif path == "/echo":  # the body back, each piece as it is read
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            await send({"type": "http.response.body", "body": message.get("body", b""),
                        "more_body": True})
            if not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b""})
    elif path == "/trailers":
        offered = "http.response.trailers" in scope.get("extensions", {})
        await send({"type": "http.response.start", "status": 200, "trailers": offered,
                    "headers": [(b"Content-Type", b"text/plain"), (b"Connection", b"x")]})
        await send({"type": "http.response.body", "body": b"body"})
        if offered:
            await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")],
                        "more_trailers": True})
            await send({"type": "http.response.trailers",
                        "headers": [(b"X-Checksum", b"abc")]})
    elif path == "/slow":  # ?delay=S
        await asyncio.sleep(float(params.get("delay", 1)))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"slow"})
    else:
        body = b"%s %d %s" % (scope["http_version"].encode(), os.getpid(),
                              dict(scope["headers"]).get(b"host", b"-"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
