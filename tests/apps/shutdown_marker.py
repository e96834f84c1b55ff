"""An app whose lifespan shutdown leaves a file behind (DUCK_TEST_MARKER_DIR/<pid>)."""

import os

from tests.apps.basic import app as basic_app


async def app(scope, receive, send):
    if scope["type"] != "lifespan":
        return await basic_app(scope, receive, send)
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            path = os.path.join(os.environ["DUCK_TEST_MARKER_DIR"], str(os.getpid()))
            with open(path, "w") as marker:
                marker.write("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
