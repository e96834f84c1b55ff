"""An ASGI app that answers every request with what it saw: the conformance corpus checks
which requests reached the app, and how they were parsed.

Each request gets a 200 after its whole body has been read, with the header `x-recorded: 1`
and a JSON body {"method", "path", "body"}: path is scope["raw_path"], plus "?" and the query
string if there is one; body is the request body decoded as latin-1 (one character per byte).
The same JSON is repeated in the header `x-recorded-json` (json.dumps escapes everything
outside printable ASCII, so it is a valid field value): a response to HEAD has no body, and
a client that parses a pipelined response stream needs to know which responses have none.
"""

import json

from tests.apps.common import answer_lifespan, read_body


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    try:
        body = await read_body(receive)
    except ConnectionError:
        return  # the client went away mid-body: there is nobody to answer
    path = scope["raw_path"].decode("latin-1")
    if scope["query_string"]:
        path += "?" + scope["query_string"].decode("latin-1")
    record = json.dumps({"method": scope["method"], "path": path,
                         "body": body.decode("latin-1")}).encode("ascii")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(record)).encode()),
                            (b"x-recorded", b"1"),
                            (b"x-recorded-json", record)]})
    await send({"type": "http.response.body", "body": record})
