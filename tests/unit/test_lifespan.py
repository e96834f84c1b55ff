"""The lifespan protocol: startup, failure reporting, auto/on/off, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from duck_prefork.asgi.lifespan import Lifespan, LifespanFailure

pytestmark = pytest.mark.timeout(30)


def lifespan_app(received: list, startup_reply: dict | None = None):
    """A well-behaved app recording what it receives."""
    async def app(scope, receive, send):
        assert scope["type"] == "lifespan"
        received.append(("scope", scope))
        while True:
            message = await receive()
            received.append(message["type"])
            if message["type"] == "lifespan.startup":
                scope["state"]["ready"] = True
                await send(startup_reply or {"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    return app


async def raising_app(scope, receive, send):
    if scope["type"] != "http":
        raise ValueError(f"unsupported scope type {scope['type']}")


async def http_only_app(scope, receive, send):
    # Answers any scope as if it were an HTTP request.
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def returning_app(scope, receive, send):
    return None


def run(coroutine_function):
    return asyncio.run(coroutine_function())


def test_startup_complete_and_state_is_shared():
    received: list = []
    state: dict = {}

    async def main():
        lifespan = Lifespan(lifespan_app(received), "auto", state)
        await lifespan.startup()
        assert lifespan.supported
        await lifespan.shutdown(timeout=5)

    run(main)
    scope = received[0][1]
    assert scope["asgi"]["version"] == "3.0"
    assert scope["state"] is state
    assert state == {"ready": True}
    assert received[1:] == ["lifespan.startup", "lifespan.shutdown"]


def test_shutdown_sends_lifespan_shutdown_and_waits_for_the_app():
    received: list = []

    async def main():
        lifespan = Lifespan(lifespan_app(received), "on", {})
        await lifespan.startup()
        assert received[-1] == "lifespan.startup"
        await lifespan.shutdown(timeout=5)
        assert received[-1] == "lifespan.shutdown"
        assert lifespan._task.done()

    run(main)


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_startup_failed_raises_with_the_app_message(mode):
    reply = {"type": "lifespan.startup.failed", "message": "database unreachable: db:5432"}

    async def main():
        await Lifespan(lifespan_app([], reply), mode, {}).startup()

    with pytest.raises(LifespanFailure) as info:
        run(main)
    assert "database unreachable: db:5432" in str(info.value)


def test_auto_mode_with_an_app_raising_on_lifespan_is_unsupported_without_error():
    async def main():
        lifespan = Lifespan(raising_app, "auto", {})
        await lifespan.startup()
        assert not lifespan.supported
        await lifespan.shutdown(timeout=5)  # nothing to do, returns at once

    run(main)


def test_on_mode_with_an_app_raising_is_a_failure_naming_the_exception():
    async def main():
        await Lifespan(raising_app, "on", {}).startup()

    with pytest.raises(LifespanFailure) as info:
        run(main)
    assert "ValueError" in str(info.value)
    assert "unsupported scope type lifespan" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_auto_mode_with_an_http_only_app_is_unsupported():
    async def main():
        lifespan = Lifespan(http_only_app, "auto", {})
        await lifespan.startup()
        assert not lifespan.supported

    run(main)


def test_on_mode_with_an_http_only_app_is_a_failure():
    async def main():
        await Lifespan(http_only_app, "on", {}).startup()

    with pytest.raises(LifespanFailure, match="http.response.start"):
        run(main)


def test_auto_mode_with_an_app_that_returns_is_unsupported():
    async def main():
        lifespan = Lifespan(returning_app, "auto", {})
        await lifespan.startup()
        assert not lifespan.supported

    run(main)


def test_on_mode_with_an_app_that_returns_is_a_failure():
    async def main():
        await Lifespan(returning_app, "on", {}).startup()

    with pytest.raises(LifespanFailure, match="returned without answering"):
        run(main)


def test_off_mode_never_calls_the_app():
    calls = []

    async def app(scope, receive, send):
        calls.append(scope)

    async def main():
        lifespan = Lifespan(app, "off", {})
        await lifespan.startup()
        await lifespan.shutdown(timeout=5)
        await asyncio.sleep(0)
        assert not lifespan.supported

    run(main)
    assert calls == []


def test_shutdown_timeout_cancels_the_app():
    cancelled = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        try:
            await asyncio.sleep(60)  # never completes shutdown
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        lifespan = Lifespan(app, "on", {})
        await lifespan.startup()
        await lifespan.shutdown(timeout=0.05)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert cancelled == [True]  # by shutdown, not by asyncio.run's cleanup

    run(main)


def test_shutdown_failure_is_logged_not_raised(caplog):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.failed", "message": "could not flush"})

    async def main():
        lifespan = Lifespan(app, "on", {})
        await lifespan.startup()
        await lifespan.shutdown(timeout=5)

    caplog.set_level("ERROR", logger="duck_prefork")
    run(main)
    assert "could not flush" in caplog.text
