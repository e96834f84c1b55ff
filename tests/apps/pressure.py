"""An ASGI app for the limits, timeouts and flow-control tests.

If the environment variable DUCK_TEST_CALLS names a file, every HTTP request the app is called
for appends one line "METHOD PATH?QUERY" to it as soon as the app starts, before it reads any
body: a test can tell whether (and in which order) requests reached the app.

Routes:
  /echo                  the request body, read in full, sent back
  /hold?release=FILE     waits until FILE exists, then answers "held" (a request kept in
                         flight for as long as the test wants, without a timed sleep)
  /slow?delay=S          sleeps S seconds, then answers "slow"
  /stream?size=N&chunk=C N bytes (Content-Length: N) sent as body messages of C bytes each;
                         &progress=FILE rewrites FILE with the number of bytes handed to send()
                         so far after each message
  /slow-read?pause=S     reads the body one receive() at a time, sleeping S seconds per 64 KiB
                         received (at least S after each receive()): an app slower than the
                         network. Answers the number of bytes received (and the number of
                         receive() calls in the header x-receive-calls)
  anything else          "ok"
"""

import asyncio
import os

from tests.apps.common import answer_lifespan, read_body


def _params(scope) -> dict:
    return dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p)


async def _respond(send, body: bytes, status: int = 200, headers=()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def _record(scope) -> None:
    calls = os.environ.get("DUCK_TEST_CALLS")
    if not calls:
        return
    line = scope["method"] + " " + scope["path"]
    if scope["query_string"]:
        line += "?" + scope["query_string"].decode("latin-1")
    fd = os.open(calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    _record(scope)
    path = scope["path"]
    params = _params(scope)
    if path == "/echo":
        await _respond(send, await read_body(receive))
    elif path == "/hold":
        release = params["release"]
        while not os.path.exists(release):
            await asyncio.sleep(0.01)
        await _respond(send, b"held")
    elif path == "/slow":
        await asyncio.sleep(float(params.get("delay", 1)))
        await _respond(send, b"slow")
    elif path == "/stream":
        size, chunk_size = int(params["size"]), int(params.get("chunk", 65536))
        progress = params.get("progress")
        chunk = b"x" * chunk_size
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(size).encode())]})
        sent = 0
        while sent < size:
            piece = chunk if size - sent >= chunk_size else chunk[:size - sent]
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece,
                        "more_body": sent < size})
            if progress:
                with open(progress + ".tmp", "w") as f:
                    f.write(str(sent))
                os.replace(progress + ".tmp", progress)
    elif path == "/slow-read":
        pause = float(params.get("pause", 0.001))
        total = calls = 0
        while True:
            message = await receive()
            calls += 1
            if message["type"] == "http.disconnect":
                raise ConnectionError("client disconnected")
            size = len(message.get("body", b""))
            total += size
            if not message.get("more_body"):
                break
            # an app that takes `pause` seconds per 64 KiB (at least one pause per call), so it
            # is slower than the network however much one receive() returns
            await asyncio.sleep(pause * max(1.0, size / 65536))
        await _respond(send, str(total).encode(), headers=[(b"x-receive-calls", b"%d" % calls)])
    else:
        await _respond(send, b"ok")
