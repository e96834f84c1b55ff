"""--health-path and --ready-path: answered by the worker, before the app, which never sees them.

    liveness   200 while this worker's event loop runs (it is answering, so it does)
    readiness  200 when this worker serves (it accepts only after lifespan startup), at least
               --min-ready workers serve as the master counts them, and no stop has begun;
               503 otherwise, from the first instant of a stop (the lame duck included)

The master's count and its stop reach the worker as the master's view over the channel
(channel.py: "view S D"), read by the worker's loop when the master sends one; answering a
probe asks no one.

Cost: with neither option the pipeline is not wrapped at all; with one, every request pays
one dict look-up of its target (the exact path, no query string: what balancers and
Kubernetes send) and one call.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from ..errors import ClientDisconnected
from ..stream import Stream, StreamHandler

HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]


class MasterView:
    """What this worker knows of the master's state (updated from the channel)."""

    __slots__ = ("serving", "stopping")

    def __init__(self) -> None:
        self.serving = 0  # workers serving, as the master last said
        self.stopping = False  # a stop has begun (lame duck or graceful stop)


def readiness(serving: int, min_ready: int, stopping: bool) -> tuple[int, bytes]:
    """The readiness answer: (status, body)."""
    if stopping:
        return 503, b"stopping\n"
    if serving < min_ready:
        return 503, b"%d of --min-ready %d workers serving\n" % (serving, min_ready)
    return 200, b"ready\n"


class Probes:
    """The request handler in front of the pipeline when a probe path is configured."""

    def __init__(self, handler: StreamHandler, view: MasterView, lame_duck: Callable[[], bool],
                 health_path: str, ready_path: str, min_ready: int, log_answers: bool):
        self.handler = handler
        self.view = view
        self.lame_duck = lame_duck  # the worker's own stop, or the master's
        self.min_ready = min_ready
        self.log_answers = log_answers
        self.answers: dict[bytes, Callable[[], tuple[int, bytes]]] = {}
        if health_path:
            self.answers[health_path.encode("ascii")] = self.liveness
        if ready_path:
            self.answers[ready_path.encode("ascii")] = self.readiness

    def __call__(self, application: Any, stream: Stream) -> Coroutine[Any, Any, Any]:
        answer = self.answers.get(stream.target)
        if answer is None:
            return self.handler(application, stream)
        status, body = answer()
        return self.respond(stream, status, body)

    def liveness(self) -> tuple[int, bytes]:
        return 200, b"alive\n"

    def readiness(self) -> tuple[int, bytes]:
        view = self.view
        return readiness(view.serving, self.min_ready, view.stopping or self.lame_duck())

    async def respond(self, stream: Stream, status: int, body: bytes) -> None:
        try:
            stream.send_head(status, HEADERS, body)
            if self.log_answers:
                self.handler.write_access_log(stream, stream.client, status, stream.bytes_sent)
        except ClientDisconnected:
            pass
        finally:
            stream.release()

    # The rest of the pipeline's interface, for the WebSocket adapter.

    def write_access_log(self, stream: Stream, client: tuple | None, status: int,
                         size: int) -> None:
        self.handler.write_access_log(stream, client, status, size)

    def get_websocket_scope(self, stream: Stream, subprotocols: list[str]) -> dict:
        return self.handler.get_websocket_scope(stream, subprotocols)
