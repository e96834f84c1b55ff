"""The routes of tests.apps.basic, plus a look inside the worker that serves them.

GET /stats           JSON measured in the worker's own event loop, after gc.collect():
    tasks              asyncio.all_tasks(), this /stats request's task excluded
    request_tasks      ServerState.tasks, this request's task excluded
    connections        ServerState.connections, this request's connection excluded
    http_connections   live http1.connection.HttpConnection objects (gc), this one excluded
    request_data       live http1.stream.Http1Stream objects (gc), this request's excluded
    requests           live asgi.pipeline.Request objects (gc), this request's excluded
    transports         live transport objects of the type this request's transport has (gc),
                       this one excluded
    pending_futures    live, not done asyncio.Future objects (tasks not included)
    timers             pending timer handles: the loop's own registry of scheduled timers
                       (see _pending_timers), so cancelled and fired handles do not count
    timer_handles      live, not cancelled handle objects of the type loop.call_later()
                       returns (gc; a handle that fired but is still referenced counts)
    states             open connections by what they are waiting for (see _state_of)
    gc_objects         len(gc.get_objects())
    allocated_blocks   sys.getallocatedblocks()
    rss                the worker's resident set size, bytes
    pid                the worker's pid
GET /stats?quick=1   only tasks, request_tasks, connections, states and pid: no gc pass, cheap
                     enough to poll while connections are being set up.

GET /flood?n=N       a chunked response of N (default 10000) chunks of 64 KiB, sent as fast
                     as the client reads them: a client that stops reading leaves the app
                     waiting on the server's backpressure (drain).

Everything else goes to tests.apps.basic.app (/slow, /stream, /echo, / ...).

The numbers exclude the /stats request itself, so that an idle worker reads as 0
connections, 0 request tasks, and 1 asyncio task (the worker's main serve() task).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys

import psutil

from duck_prefork.asgi.pipeline import Request
from duck_prefork.http1.connection import HttpConnection, ServerState
from duck_prefork.http1.stream import Http1Stream
from tests.apps.basic import app as basic_app

FLOOD_CHUNK = bytes(64 * 1024)

def _pending_timers(loop: asyncio.AbstractEventLoop) -> int:
    """Timers scheduled and neither fired nor cancelled.

    uvloop's TimerHandle is a Cython class, visible to gc, but gc cannot tell a pending handle
    from one that fired or was cancelled and is merely still referenced (and a cancelled one
    lives on until the loop closes its libuv timer). What is exact is the loop's registry: uvloop
    adds each TimerHandle to the set `Loop._timers` when scheduled and removes it when it fires
    or is cancelled. That attribute is not reachable from Python, but the set is one of the
    loop's gc referents; it is the one that contains a sentinel timer scheduled just for this.
    asyncio's own loops keep `_scheduled`, a heap that also holds cancelled handles.
    """
    scheduled = getattr(loop, "_scheduled", None)
    if scheduled is not None:  # a pure-asyncio loop
        return sum(1 for handle in scheduled if not handle.cancelled())
    sentinel = loop.call_later(3600, lambda: None)
    try:
        registries = [o for o in gc.get_referents(loop) if type(o) is set and sentinel in o]
        if len(registries) != 1:
            raise RuntimeError(f"cannot find the loop's timer registry ({len(registries)} "
                               "candidate sets)")
        return len(registries[0]) - 1
    finally:
        sentinel.cancel()


def _state_of(connection: HttpConnection) -> str:
    if connection.closed:
        return "closing"  # close() was called, connection_lost() not yet
    if connection.request is not None:
        return "request"  # a request task is running (or its response is being written)
    if connection.served == 0:
        return "partial_head" if connection.head_started else "fresh"
    return "partial_head" if connection.head_started else "idle"


def _states(connections) -> dict:
    states = {"fresh": 0, "partial_head": 0, "request": 0, "idle": 0, "closing": 0,
              "write_paused": 0}
    for connection in connections:
        states[_state_of(connection)] += 1
        if connection.write_paused:
            states["write_paused"] += 1
    return states


def _stats(own_data: Http1Stream, quick: bool) -> dict:
    loop = asyncio.get_running_loop()
    own_task = asyncio.current_task()
    own_connection = own_data.connection
    state: ServerState = own_connection.state  # the worker's, shared by its connections
    others = [c for c in state.connections if c is not own_connection]
    stats = {
        "pid": os.getpid(),
        "tasks": sum(1 for t in asyncio.all_tasks() if t is not own_task),
        "request_tasks": sum(1 for t in state.tasks if t is not own_task),
        "connections": len(others),
        "states": _states(others),
    }
    if quick:
        return stats
    gc.collect()
    future_type = type(loop.create_future())
    sentinel = loop.call_later(3600, lambda: None)
    handle_type = type(sentinel)
    sentinel.cancel()
    transport_type = type(own_connection.transport)
    counts = {"http_connections": 0, "request_data": 0, "requests": 0, "transports": 0,
              "pending_futures": 0, "timer_handles": 0}
    objects = gc.get_objects()
    for o in objects:
        kind = type(o)
        if kind is HttpConnection:
            counts["http_connections"] += o is not own_connection
        elif kind is Http1Stream:
            counts["request_data"] += o is not own_data
        elif kind is Request:
            counts["requests"] += o.stream is not own_data
        elif kind is transport_type:
            counts["transports"] += o is not own_connection.transport
        elif kind is future_type:
            counts["pending_futures"] += not o.done()
        elif kind is handle_type:
            counts["timer_handles"] += not o.cancelled()
    stats.update(counts)
    stats["gc_objects"] = len(objects)
    del objects
    stats["timers"] = _pending_timers(loop)
    stats["allocated_blocks"] = sys.getallocatedblocks()
    stats["rss"] = psutil.Process().memory_info().rss
    return stats


async def app(scope, receive, send):
    if scope["type"] != "http":
        return await basic_app(scope, receive, send)
    path = scope["path"]
    if path == "/stats":
        quick = b"quick=1" in scope["query_string"].split(b"&")
        body = json.dumps(_stats(receive.__self__.stream, quick)).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/flood":
        params = dict(p.split("=") for p in scope["query_string"].decode().split("&") if p)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        for _ in range(int(params.get("n", 10000))):
            await send({"type": "http.response.body", "body": FLOOD_CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await basic_app(scope, receive, send)
