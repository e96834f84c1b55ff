"""Benchmark app: answers every HTTP request with its own request body (POST echo)."""

from hello import lifespan  # the servers run with bench/ as the working directory


async def read_body(receive):
    """The whole request body, or None if the client went away first."""
    parts = []
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return None
        parts.append(event.get("body", b""))
        if not event.get("more_body", False):
            return b"".join(parts)


async def app(scope, receive, send):
    if scope["type"] == "http":
        body = await read_body(receive)
        if body is None:
            return
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", b"%d" % len(body)),
            ],
        })
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "lifespan":
        await lifespan(receive, send)
