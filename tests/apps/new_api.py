"""The new ASGI app of the migration example: it serves /api/v2, the legacy Django app the rest."""

import json

from tests.apps.common import answer_lifespan


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    body = json.dumps({"served_by": "asgi", "path": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
