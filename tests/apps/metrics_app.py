"""tests.apps.basic, plus /block?s=SECONDS: blocks the worker's event loop (time.sleep, on
purpose) for the loop-lag test."""

import time

from tests.apps.basic import app as basic


async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/block":
        time.sleep(float(scope["query_string"].decode().partition("=")[2] or 1))
    return await basic(scope, receive, send)
