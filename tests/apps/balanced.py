"""The app behind the balancer tests (tests/integration/balancers.py): every request, whatever
its path or method, is answered 200 with the name of the host that served it (the environment
variable BALANCED_HOST, set per instance: with the PROXY protocol, scope["server"] is the
balancer's address, not ours), so a test can tell which host served it; the request body is
read in full first."""

import os

from tests.apps.common import answer_lifespan, read_body

HOST = os.environ.get("BALANCED_HOST", "")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    await read_body(receive)
    body = (HOST or scope["server"][0]).encode("ascii")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
