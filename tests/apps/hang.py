"""An app whose /block route blocks the worker's event loop for 30 s, for --timeout."""

import time

from tests.apps.basic import app as basic


async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/block":
        time.sleep(30)  # deliberately blocking: the heartbeat must stop
    return await basic(scope, receive, send)
