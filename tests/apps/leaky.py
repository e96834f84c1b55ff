"""An app whose /grow route keeps 8 MiB more each call, for --max-worker-memory."""

import os

from tests.apps.basic import app as basic_app

_kept = []


async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/grow":
        _kept.append(os.urandom(8 * 1024 * 1024))
        body = str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    await basic_app(scope, receive, send)
