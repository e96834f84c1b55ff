"""Benchmark app: answers every HTTP request with the pid of the worker process that served it.

For bench/balance: if BENCH_COUNTS_DIR is set, each worker counts the requests it served and
the distinct client addresses (connections, under keep-alive load) it saw, and writes them as
JSON to BENCH_COUNTS_DIR/<pid>.json at lifespan shutdown. Counting in the app costs a counter
and a set insert per request, and the load generator stays on its fast path.
"""

import json
import os

COUNTS_DIR = os.environ.get("BENCH_COUNTS_DIR", "")
HEADERS = [(b"content-type", b"text/plain")]

requests = 0
clients: set = set()


async def lifespan(receive, send):
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            if COUNTS_DIR:
                write_counts()
            await send({"type": "lifespan.shutdown.complete"})
            return


def write_counts():
    pid = os.getpid()
    path = os.path.join(COUNTS_DIR, f"{pid}.json")
    with open(path + ".tmp", "w") as file:
        json.dump({"pid": pid, "requests": requests, "connections": len(clients)}, file)
    os.replace(path + ".tmp", path)


async def app(scope, receive, send):
    global requests
    if scope["type"] == "http":
        requests += 1
        clients.add(scope.get("client"))
        body = b"%d" % os.getpid()  # not cached: a worker forked from a --preload master
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*HEADERS, (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "lifespan":
        await lifespan(receive, send)
