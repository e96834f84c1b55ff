"""The built-in demo app, served when no APP is given: proof that the server works."""

from __future__ import annotations

import html
import os
from typing import Any

from . import __version__

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>duck-prefork</title></head>
<body>
<h1>duck-prefork {version}</h1>
<p>This page was served by worker pid <b id="pid">{pid}</b>, one of <b id="workers">{workers}</b>
worker processes.</p>
<p>Serve your own app with <code>duck-prefork module.path:app</code>; see <code>--help</code>.</p>
<p>Request: <code>{method} {path}</code></p>
</body></html>
"""


def create_demo_app(workers: int) -> Any:
    """An ASGI app answering every HTTP request with the demo page."""

    async def demo_app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].replace("lifespan.", "", 1)
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        page = PAGE.format(version=__version__, pid=os.getpid(), workers=workers,
                           method=html.escape(scope["method"]), path=html.escape(scope["path"]))
        body = page.encode("utf-8")
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"x-worker-pid", str(os.getpid()).encode()),
        ]})
        await send({"type": "http.response.body", "body": body})

    return demo_app
