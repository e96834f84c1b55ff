"""The ASGI lifespan protocol for one worker: startup before accepting, shutdown before exit."""

from __future__ import annotations

import asyncio
from typing import Any

from ..logs import log


class LifespanFailure(Exception):
    """Lifespan startup failed; str() is the app's message (or its exception)."""


class Lifespan:
    """Runs the app's lifespan coroutine in a task and talks to it through two queues."""

    def __init__(self, app: Any, mode: str, state: dict):
        self.app = app
        self.mode = mode  # "auto", "on" or "off"
        self.state = state
        self.supported = mode != "off"
        self._to_app: asyncio.Queue = asyncio.Queue()
        self._from_app: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": self.state}
        try:
            await self.app(scope, self._to_app.get, self._send)
        except BaseException as exc:  # reported to startup()/shutdown() through the queue
            await self._from_app.put(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            await self._from_app.put(None)  # the app returned

    async def _send(self, message: dict) -> None:
        await self._from_app.put(message)

    async def _exchange(self, event: str) -> Any:
        await self._to_app.put({"type": f"lifespan.{event}"})
        return await self._from_app.get()

    async def startup(self) -> None:
        """Raise LifespanFailure if the app reports (or, with lifespan on, raises) a failure."""
        if not self.supported:
            return
        self._task = asyncio.get_running_loop().create_task(self._run())
        reply = await self._exchange("startup")
        kind = reply.get("type") if isinstance(reply, dict) else None
        if kind == "lifespan.startup.complete":
            return
        if kind == "lifespan.startup.failed":
            raise LifespanFailure(f"lifespan startup failed: {reply.get('message') or ''}")
        self.supported = False
        if self.mode == "auto":
            # An app without lifespan support raises on the unknown scope type, returns, or
            # answers as if it were an HTTP request.
            log.info("the app does not support the ASGI lifespan protocol (%s); serving "
                     "without lifespan startup and shutdown (--lifespan auto)",
                     _why_unsupported(reply, kind))
            return
        if kind is not None:
            raise LifespanFailure(f"lifespan startup failed: unexpected message {kind!r}")
        if reply is None:
            raise LifespanFailure("lifespan startup failed: the app returned without answering "
                                  "lifespan.startup")
        raise LifespanFailure(f"lifespan startup failed: {type(reply).__name__}: {reply}") \
            from reply

    async def shutdown(self, timeout: float) -> None:
        """Tell the app to shut down and wait up to `timeout` seconds; log a failure."""
        if not self.supported or self._task is None:
            return
        try:
            reply = await asyncio.wait_for(self._exchange("shutdown"), timeout)
        except TimeoutError:
            log.error("lifespan shutdown did not complete within %.0f s", timeout)
            self._task.cancel()
            return
        if isinstance(reply, dict) and reply.get("type") == "lifespan.shutdown.failed":
            log.error("lifespan shutdown failed: %s", reply.get("message") or "")
        elif isinstance(reply, BaseException):
            log.error("lifespan shutdown raised %s: %s", type(reply).__name__, reply)
        await asyncio.wait([self._task], timeout=1.0)


def _why_unsupported(reply: object, kind: object) -> str:
    """What the app did with the lifespan scope, for the log line of --lifespan auto."""
    if isinstance(reply, BaseException):
        return f"it raised {type(reply).__name__}: {reply}" if str(reply) else \
            f"it raised {type(reply).__name__}"
    if reply is None:
        return "it returned without answering lifespan.startup"
    return f"it answered lifespan.startup with {kind!r}"
