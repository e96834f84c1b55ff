"""A WebSocket test app: one behaviour per path (see tests/integration/test_websocket.py).

Where a test needs to know what the app saw (the close code of websocket.disconnect), the app
appends a line to the file named by DUCK_TEST_EVENTS.
"""

import asyncio
import json
import os
from urllib.parse import parse_qs

from tests.apps.common import answer_lifespan


def record(line: str) -> None:
    path = os.environ.get("DUCK_TEST_EVENTS")
    if path:
        with open(path, "a") as events:
            events.write(line + "\n")


async def echo_until_disconnect(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            record(f"disconnect {message['code']} {os.getpid()}")
            return
        if message.get("text") is not None:
            if message["text"] == "close-4000":
                await send({"type": "websocket.close", "code": 4000, "reason": "asked to"})
                continue
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    if scope["type"] == "http":
        if scope["method"] == "CONNECT":  # (an extended CONNECT with --ws none: no route)
            await send({"type": "http.response.start", "status": 405, "headers": []})
            await send({"type": "http.response.body", "body": b"no CONNECT here"})
            return
        body = b"plain HTTP, upgrade ignored" if any(
            name == b"upgrade" for name, _ in scope["headers"]) else b"plain HTTP"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})
        return
    assert scope["type"] == "websocket"
    message = await receive()
    assert message["type"] == "websocket.connect", message
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode())
    if path == "/echo":
        wanted = [p for p in scope["subprotocols"] if p in ("chat", "superchat")]
        await send({"type": "websocket.accept", "subprotocol": wanted[0] if wanted else None,
                    "headers": [(b"x-accepted-by", b"ws-test-app")]})
        record(f"accepted {os.getpid()}")
        await echo_until_disconnect(receive, send)
    elif path == "/scope":
        await send({"type": "websocket.accept"})
        info = {key: value for key, value in scope.items()
                if key not in ("headers", "raw_path", "query_string", "state")}
        info["headers"] = [[k.decode("latin-1"), v.decode("latin-1")]
                           for k, v in scope["headers"]]
        info["raw_path"] = scope["raw_path"].decode("latin-1")
        info["query_string"] = scope["query_string"].decode("latin-1")
        info["state"] = scope["state"]
        await send({"type": "websocket.send", "text": json.dumps(info)})
        await send({"type": "websocket.close"})
    elif path == "/reject":
        await send({"type": "websocket.close"})
    elif path == "/deny":
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"x-denied", b"yes")]})
        await send({"type": "websocket.http.response.body", "body": b"denied: ",
                    "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"no token"})
    elif path == "/raise-before-accept":
        raise RuntimeError("websocket app exploded before accept")
    elif path == "/raise-after-accept":
        await send({"type": "websocket.accept"})
        await receive()
        raise RuntimeError("websocket app exploded after accept")
    elif path == "/return-without-accept":
        return
    elif path == "/close-after-accept":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4001, "reason": "done here"})
    elif path == "/send-stream":
        # ?count=N&size=B: send N binary messages of B bytes as fast as send() allows, then
        # record how many went out (a client that does not read must stall us).
        count, size = int(query["count"][0]), int(query["size"][0])
        await send({"type": "websocket.accept"})
        payload = b"x" * size
        sent = 0
        record("sent 0")
        try:
            for _ in range(count):
                await send({"type": "websocket.send", "bytes": payload})
                sent += 1
                if sent % 16 == 0:
                    record(f"sent {sent}")
        except OSError:
            record(f"send raised after {sent}")
            return
        record(f"sent all {sent}")
        await send({"type": "websocket.close"})
    elif path == "/no-receive":
        # accepts and then does not call receive() until told by a file: inbound backpressure
        await send({"type": "websocket.accept"})
        record(f"accepted {os.getpid()}")
        release = query["release"][0]
        while not os.path.exists(release):
            await asyncio.sleep(0.05)
        received = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                record(f"received {received} then disconnect {message['code']}")
                return
            received += 1
    elif path == "/never-accept":
        # neither accepts nor refuses: --ws-accept-timeout answers for it and cancels us
        record(f"undecided {os.getpid()}")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            record("never-accept cancelled")
            raise
    else:
        await send({"type": "websocket.close", "code": 4004})
