"""A Starlette app exercising the server end to end (see tests/integration/test_frameworks.py)."""

import contextlib
import os

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

STREAM_CHUNKS = 5


@contextlib.asynccontextmanager
async def lifespan(app):
    # Yielded state is copied into every request's scope["state"] by the server.
    yield {"thing": "made by lifespan", "lifespan_pid": os.getpid()}


async def plain(request: Request) -> Response:
    return PlainTextResponse("hello from starlette")


async def json_route(request: Request) -> Response:
    return JSONResponse({"framework": "starlette", "numbers": [1, 2, 3], "nested": {"ok": True}})


async def echo(request: Request) -> Response:
    body = await request.body()
    media_type = request.headers.get("content-type", "application/octet-stream")
    return Response(body, media_type=media_type, headers={"x-body-length": str(len(body))})


async def stream(request: Request) -> Response:
    async def chunks():
        for i in range(STREAM_CHUNKS):
            yield f"chunk {i}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


async def state(request: Request) -> Response:
    return JSONResponse({"thing": request.state.thing,
                         "lifespan_pid": request.state.lifespan_pid,
                         "pid": os.getpid()})


async def boom(request: Request) -> Response:
    raise RuntimeError("starlette route exploded")


async def _fail_in_background() -> None:
    # async: runs right after the last body message, before the event loop can flush more
    raise RuntimeError("background task failed after the response")


async def complete_then_raise(request: Request) -> Response:
    # The response goes out in full; then its background task raises, so the exception reaches
    # the server after the response is complete (Starlette lets background errors propagate).
    size = int(request.query_params.get("size", "13"))
    return Response(b"x" * size, media_type="application/octet-stream",
                    background=BackgroundTask(_fail_in_background))


async def query(request: Request) -> Response:
    return JSONResponse({"items": list(request.query_params.multi_items()),
                         "raw": request.url.query})


async def item(request: Request) -> Response:
    return JSONResponse({"name": request.path_params["name"], "path": request.url.path})


async def ws_chat(websocket: WebSocket) -> None:
    """Echoes text with the lifespan state's value and the room from the path; JSON echoed
    as JSON; closes with 4003 when asked for a forbidden room."""
    room = websocket.path_params["room"]
    if room == "forbidden":
        await websocket.close(code=4003)
        return
    await websocket.accept(subprotocol="chat" if "chat" in websocket.scope["subprotocols"]
                           else None)
    try:
        while True:
            message = await websocket.receive_json()
            await websocket.send_json({"room": room, "echo": message,
                                       "thing": websocket.state.thing})
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[
        Route("/", plain),
        Route("/json", json_route),
        Route("/echo", echo, methods=["POST"]),
        Route("/stream", stream),
        Route("/state", state),
        Route("/boom", boom),
        Route("/complete-then-raise", complete_then_raise),
        Route("/query", query),
        Route("/items/{name}", item),
        WebSocketRoute("/ws/{room}", ws_chat),
    ],
    lifespan=lifespan,
)
