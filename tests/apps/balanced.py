"""The app behind the balancer tests (tests/integration/balancers.py): every request, whatever
its path or method, is answered 200 with the address the instance listens on, so a test can
tell which host served it; the request body is read in full first."""

from tests.apps.common import answer_lifespan, read_body


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    await read_body(receive)
    body = scope["server"][0].encode("ascii")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
