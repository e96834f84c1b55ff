"""The upstream pool's decisions, in one process against a loopback asyncio upstream: reuse,
--upstream-max-connections with waiting exchanges, an idle connection the upstream closed is
forgotten, the idle timeout, and the sweep's 504 for an upstream that does not answer."""

from __future__ import annotations

import asyncio

import pytest

from duck_prefork.upstream.codec import END_OF_MESSAGE
from duck_prefork.upstream.pool import IDLE_TIMEOUT, Pool, UpstreamFailure
from duck_prefork.upstream.routes import Upstream

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Responder(asyncio.Protocol):
    """Answers each request head with OK, except /silent (never), /bye (OK, then closes) and
    /more (OK and bytes past its Content-Length)."""

    opened = 0

    def connection_made(self, transport):
        Responder.opened += 1
        self.transport = transport

    def data_received(self, data):
        if b"/silent" in data:
            return
        self.transport.write(OK + b"X" if b"/more" in data else OK)
        if b"/bye" in data:
            self.transport.close()


async def exchange(pool: Pool, path: str = "/") -> tuple[int, bytes]:
    connection = await pool.acquire()
    try:
        codec = connection.codec
        connection.write(codec.request(b"GET", path.encode(), [(b"host", b"u")], False, None))
        codec.end()
        response = await connection.next_event()
        body = b""
        while True:
            event = await connection.next_event()
            if event is END_OF_MESSAGE:
                return response.status, body
            body += event
    finally:
        pool.release(connection)


async def with_pool(test, max_connections: int = 0, timeout: float = 5.0):
    loop = asyncio.get_running_loop()
    Responder.opened = 0
    server = await loop.create_server(Responder, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool(Upstream(f"http://127.0.0.1:{port}", "127.0.0.1", port), max_connections,
                timeout, loop)
    try:
        await asyncio.wait_for(test(pool), 20)
    finally:
        pool.close()
        server.close()


def run(test, **kwargs) -> None:
    asyncio.run(with_pool(test, **kwargs))


def test_a_keep_alive_connection_is_reused():
    async def test(pool):
        for _ in range(5):
            assert await exchange(pool) == (200, b"ok")
        assert (pool.opened, Responder.opened, len(pool.idle)) == (1, 1, 1)
        assert pool.idle[0].reused

    run(test)


def test_max_connections_makes_exchanges_wait_their_turn():
    async def test(pool):
        results = await asyncio.gather(*(exchange(pool) for _ in range(6)))
        assert results == [(200, b"ok")] * 6
        assert pool.opened == 1 and not pool.waiters and not pool.busy

    run(test, max_connections=1)


def test_a_connection_the_upstream_closed_is_never_reused():
    async def test(pool):
        assert await exchange(pool, "/bye") == (200, b"ok")
        for _ in range(50):
            if not pool.idle:
                break
            await asyncio.sleep(0.01)
        assert not pool.idle
        assert await exchange(pool) == (200, b"ok")
        assert pool.opened == 2

    run(test)


def test_a_connection_with_bytes_past_its_response_is_not_reused():
    """An upstream out of step (more than its Content-Length): the bytes are not taken as the
    next response; the connection is closed and the next exchange gets a new one."""
    async def test(pool):
        assert await exchange(pool, "/more") == (200, b"ok")
        assert not pool.idle
        assert await exchange(pool) == (200, b"ok")
        assert pool.opened == 2

    run(test)


def test_idle_connections_are_closed_after_the_idle_timeout():
    async def test(pool):
        await exchange(pool)
        pool.sweep(asyncio.get_running_loop().time() + IDLE_TIMEOUT - 1)
        assert len(pool.idle) == 1
        pool.sweep(asyncio.get_running_loop().time() + IDLE_TIMEOUT)
        assert not pool.idle and pool.size == 0

    run(test)


def test_the_sweep_answers_504_for_an_upstream_that_says_nothing():
    async def test(pool):
        loop = asyncio.get_running_loop()
        task = loop.create_task(exchange(pool, "/silent"))
        while not pool.busy or next(iter(pool.busy)).waiting_since is None:
            await asyncio.sleep(0.01)
        pool.sweep(loop.time() + 0.5)
        assert not task.done()
        pool.sweep(loop.time() + 1.0)
        with pytest.raises(UpstreamFailure) as failure:
            await task
        assert failure.value.status == 504 and "--upstream-timeout 1 s" in str(failure.value)
        assert pool.size == 0

    run(test, timeout=1.0)


def test_a_refused_connection_is_502():
    async def test(pool):
        server_port = pool.upstream.port
        refused = Pool(Upstream("http://127.0.0.1:1", "127.0.0.1", 1), 0, 5.0,
                       asyncio.get_running_loop())
        with pytest.raises(UpstreamFailure) as failure:
            await refused.acquire()
        assert failure.value.status == 502 and refused.size == 0
        assert server_port

    run(test)
