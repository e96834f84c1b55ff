"""Benchmark app: answers every HTTP request with 200 text/plain "Hello, world!"."""

GREETING = b"Hello, world!"
RESPONSE_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/plain"),
        (b"content-length", b"%d" % len(GREETING)),
    ],
}
RESPONSE_BODY = {"type": "http.response.body", "body": GREETING}


async def lifespan(receive, send):
    """Acknowledge startup and shutdown; there is nothing to set up."""
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "http":
        # The messages are built once at import: the benchmark measures the server, not the app.
        await send(RESPONSE_START)
        await send(RESPONSE_BODY)
    elif scope["type"] == "lifespan":
        await lifespan(receive, send)
