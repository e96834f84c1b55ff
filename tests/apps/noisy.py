"""An app that prints and logs on every request without configuring logging: what
--capture-output sends to the error log."""

import logging
import sys


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    print(f"print from the app: {scope['path']}")
    print(f"stderr from the app: {scope['path']}", file=sys.stderr)
    logging.getLogger("noisy").warning("logging from the app: %s", scope["path"])
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
