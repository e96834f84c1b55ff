"""A FastAPI app exercising the server end to end (see tests/integration/test_frameworks.py)."""

from pathlib import Path
from typing import Annotated

from fastapi import (
    BackgroundTasks,
    Depends,
    FastAPI,
    Header,
    HTTPException,
    WebSocket,
    WebSocketDisconnect,
    WebSocketException,
    status,
)
from pydantic import BaseModel

app = FastAPI()


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


def require_token(x_token: Annotated[str | None, Header()] = None) -> str:
    if x_token != "secret":
        raise HTTPException(status_code=401, detail="bad token")
    return x_token


def write_marker(path: Path, content: str) -> None:
    path.write_text(content)


# FastAPI does not add HEAD to @app.get routes by itself (it answers 405), so ask for it.
@app.api_route("/items/{item_id}", methods=["GET", "HEAD"])
async def read_item(item_id: int, q: str | None = None, limit: int = 10):
    return {"item_id": item_id, "q": q, "limit": limit}


@app.post("/items", status_code=201)
async def create_item(item: Item):
    return {"created": item.model_dump(), "tag_count": len(item.tags)}


@app.get("/private")
async def private(token: Annotated[str, Depends(require_token)]):
    return {"token": token, "access": "granted"}


@app.post("/background")
async def background(tmpdir: str, name: str, tasks: BackgroundTasks):
    tasks.add_task(write_marker, Path(tmpdir) / name, f"written for {name}")
    return {"scheduled": name}


@app.websocket("/ws")
async def ws_counter(websocket: WebSocket, token: str | None = None):
    """Counts the bytes of each binary message; refuses a missing token before accepting."""
    if token != "secret":
        raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION)
    await websocket.accept()
    total = 0
    try:
        while True:
            data = await websocket.receive_bytes()
            total += len(data)
            await websocket.send_text(f"{len(data)} bytes, {total} in all")
    except WebSocketDisconnect:
        pass
