"""Small ASGI apps exercising the server, one attribute per behaviour under test."""

import asyncio
import json
import os

from tests.apps.common import read_body


async def _start(send, status=200, headers=()):
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})



async def app(scope, receive, send):
    """Routes by path; see the branches below."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["booted_by"] = os.getpid()
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"][len(scope["root_path"]):]  # routing as ASGI apps do behind a prefix
    if path == "/scope":
        body = await read_body(receive)
        info = {k: v for k, v in scope.items() if k not in ("headers", "raw_path", "query_string",
                                                            "state", "extensions")}
        info["headers"] = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        info["raw_path"] = scope["raw_path"].decode("latin-1")
        info["query_string"] = scope["query_string"].decode("latin-1")
        info["state"] = scope.get("state", {})
        if "tls" in scope.get("extensions", {}):
            info["extensions"] = {"tls": scope["extensions"]["tls"]}
        info["body_length"] = len(body)
        info["pid"] = os.getpid()
        data = json.dumps(info).encode()
        await _start(send, 200, [(b"content-type", b"application/json")])
        await send({"type": "http.response.body", "body": data})
    elif path == "/echo":
        body = await read_body(receive)
        await _start(send, 200, [(b"content-type", b"application/octet-stream")])
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        # ?n=chunks&delay=seconds between chunks; no Content-Length: sent chunked
        params = dict(p.split("=") for p in scope["query_string"].decode().split("&") if p)
        n, delay = int(params.get("n", 5)), float(params.get("delay", 0))
        await _start(send, 200, [(b"content-type", b"text/plain")])
        for i in range(n):
            await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
            if delay:
                await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/slow":
        params = dict(p.split("=") for p in scope["query_string"].decode().split("&") if p)
        await asyncio.sleep(float(params.get("delay", 1)))
        await _start(send, 200, [(b"content-length", b"4")])
        await send({"type": "http.response.body", "body": b"slow"})
    elif path == "/raise-before":
        raise ValueError("boom before start")
    elif path == "/raise-after":
        await _start(send, 200, [(b"content-length", b"100")])
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom after start")
    elif path == "/no-response":
        return
    elif path == "/double-start":
        await _start(send)
        await _start(send)
    elif path == "/body-before-start":
        await send({"type": "http.response.body", "body": b"x"})
    elif path == "/pid":
        await _start(send, 200, [(b"content-type", b"text/plain")])
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
    elif path == "/exit":
        os._exit(17)
    elif path == "/disconnect":
        # Waits for the client to go away, then records it in a file named by ?file=
        params = dict(p.split("=") for p in scope["query_string"].decode().split("&") if p)
        while (await receive())["type"] != "http.disconnect":
            pass
        with open(params["file"], "w") as f:
            f.write("disconnected")
    elif path == "/header-injection":
        await _start(send, 200, [(b"x-bad", b"a\r\nx-injected: yes")])
        await send({"type": "http.response.body", "body": b"no"})
    else:
        body = b"Hello, world!"
        await _start(send, 200, [(b"content-type", b"text/plain"),
                                 (b"content-length", str(len(body)).encode())])
        await send({"type": "http.response.body", "body": body})
