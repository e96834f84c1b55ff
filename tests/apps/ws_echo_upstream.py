"""A small upstream WebSocket echo server (the websockets library), for the tunnel tests.

    python -m tests.apps.ws_echo_upstream --port N

prints "ready PORT" once it listens (--port 0: a free port).

Echoes every message; a message "close" makes it close the connection (code 1000).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from websockets.asyncio.server import serve


async def echo(websocket) -> None:
    async for message in websocket:
        if message == "close":
            await websocket.close(1000, "asked to")
            return
        await websocket.send(message)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(echo, "127.0.0.1", port, ping_interval=None) as server:
        print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
