"""The once-a-second tick: a failure inside it is logged (once per distinct failure, with its
traceback) and neither stops the heartbeat nor the timeout sweep of the other connections."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from duck_prefork.asgi.pipeline import ASGI
from duck_prefork.config import Config
from duck_prefork.http1.connection import ServerState
from duck_prefork.http1.parser_h11 import H11Parser
from duck_prefork.worker import channel
from duck_prefork.worker.process import Worker

pytestmark = pytest.mark.timeout(30)


def errors(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [record for record in records if record.levelno >= logging.ERROR]


class BrokenState:
    """A ServerState whose tick always fails the same way."""

    requests_served = 0
    tasks: set = set()

    def tick(self, now: float) -> None:
        raise RuntimeError("the sweep is broken")


def test_a_failing_tick_still_beats_and_comes_again(records):
    async def main():
        read_end, write_end = os.pipe()
        try:
            worker = Worker(Config(""), [], 1, write_end, "test")
            loop = asyncio.get_running_loop()
            for _ in range(3):  # three seconds' ticks
                worker._tick(loop, BrokenState())
                assert worker._ticker is not None and not worker._ticker.cancelled()
                assert worker._ticker.when() > loop.time()
            worker._ticker.cancel()
            assert os.read(read_end, 100) == channel.busy_message(0) * 3
        finally:
            os.close(read_end)
            os.close(write_end)

    asyncio.run(main())
    logged = errors(records)
    assert len(logged) == 1  # once per distinct failure, not once a second
    assert logged[0].exc_info and "the sweep is broken" in str(logged[0].exc_info[1])


class Connection:
    """A connection as ServerState.tick sees it."""

    def __init__(self, fails: bool = False):
        self.fails = fails
        self.checked = 0
        self.aborted = False

    def check_timeouts(self, now: float) -> None:
        self.checked += 1
        if self.fails:
            raise ValueError("this connection's state is broken")

    def abort(self) -> None:
        self.aborted = True


async def app(scope, receive, send):
    pass


def test_one_connection_failing_its_check_does_not_skip_the_others(records):
    async def main():
        state = ServerState(app, ASGI(), H11Parser, 5.0, timing=False)
        fine = [Connection() for _ in range(5)]
        broken = Connection(fails=True)
        websocket = Connection()
        state.connections.update([*fine[:2], broken, *fine[2:]])
        state.websockets.add(websocket)
        state.tick(1.0)
        state.tick(2.0)
        return fine, broken, websocket

    fine, broken, websocket = asyncio.run(main())
    assert [connection.checked for connection in fine] == [2] * 5
    assert websocket.checked == 2
    assert broken.aborted  # its timeouts cannot be enforced: it is closed
    logged = errors(records)
    assert len(logged) == 1
    assert "this connection's state is broken" in str(logged[0].exc_info[1])


def test_distinct_failures_are_each_logged(records):
    class Failing:
        def __init__(self, exc):
            self.exc = exc

        def check_timeouts(self, now):
            raise self.exc

        def abort(self):
            pass

    async def main():
        state = ServerState(app, ASGI(), H11Parser, 5.0, timing=False)
        state.connections.update([Failing(ValueError("a")), Failing(KeyError("b"))])
        state.tick(1.0)

    asyncio.run(main())
    assert sorted(type(r.exc_info[1]).__name__ for r in errors(records)) == ["KeyError",
                                                                             "ValueError"]
