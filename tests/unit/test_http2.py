"""HTTP/2 without sockets: the limits' decisions (reset and control-frame budgets, header block
bounds), the prior-knowledge stage, a stream's head rules, and the connection driven by an h2
client in the same process (flow control tied to the app's reads, trailers, the drain, the
reset budget)."""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import pytest

from duck_prefork.asgi.pipeline import ASGI
from duck_prefork.errors import ParseError
from duck_prefork.http1.connection import HttpConnection, ServerState
from duck_prefork.http1.parser_h11 import H11Parser
from duck_prefork.http1.request_head import DEFAULT_LIMITS, Limits
from duck_prefork.http2.connection import Http2Connection
from duck_prefork.http2.limits import Http2Limits, RateBudget
from duck_prefork.http2.stream import Http2Stream
from duck_prefork.net.stages import H2_PREFACE as PREFACE
from duck_prefork.net.stages import ConnectionFacts, is_h2_preface

from .fakes import FakeTransport

pytestmark = pytest.mark.timeout(30)


# --- budgets --------------------------------------------------------------------------------


def test_rate_budget_allows_a_burst_then_refills_with_time():
    budget = RateBudget(10, now=100.0)
    assert all(budget.spend(100.0) for _ in range(10))
    assert not budget.spend(100.0)  # the burst is spent
    assert budget.spend(100.2)  # 0.2 s: two more (one was overdrawn above)
    assert not budget.spend(100.2)
    assert all(budget.spend(102.0) for _ in range(10))  # a full bucket again, no more


def test_rate_budget_zero_is_no_limit():
    budget = RateBudget(0, now=0.0)
    assert all(budget.spend(0.0) for _ in range(10000))


# --- prior knowledge: a trusted peer's HTTP/1.1 connection that starts with the preface ------


def test_is_h2_preface():
    assert is_h2_preface(PREFACE + b"rest") is True
    assert is_h2_preface(PREFACE[:10]) is None
    assert is_h2_preface(b"") is None
    assert is_h2_preface(b"GET / HTTP/1.1\r\n") is False
    assert is_h2_preface(b"PRI * HTTP/1.1\r\n\r\n" + b"x" * 10) is False


class Peer10002(FakeTransport):
    def get_extra_info(self, name: str, default=None):
        return {"peername": ("10.0.0.2", 5555), "sockname": ("127.0.0.1", 80)}.get(name, default)


class Recorder:
    """The HTTP/2 protocol's stand-in: records what it was handed."""

    def __init__(self, log: list) -> None:
        self.log = log

    def take_over(self, transport, facts, read_paused, write_paused) -> None:
        self.log.append(("h2", facts.protocol))

    def data_received(self, data: bytes) -> None:
        self.log.append(data)


def trusted_only(client) -> bool:
    return client is not None and client[0] == "10.0.0.2"


async def sniffed(transport_class: type, pieces: list[bytes]) -> tuple[list, bytes, bool]:
    """What the HTTP/2 side was handed, what HTTP/1.1 answered, and whether the connection is
    still HTTP/1.1's."""
    log: list = []
    state = ServerState(None, ASGI(), lambda: H11Parser(Limits()), 5.0, timing=False)
    state.h2c = lambda: Recorder(log)
    state.h2c_trusts = trusted_only
    connection = HttpConnection(state)
    transport = transport_class()
    transport.protocol = connection
    connection.connection_made(transport)
    for piece in pieces:
        transport.protocol.data_received(piece)
    await asyncio.sleep(0)
    return log, transport.take(), connection in state.connections


@pytest.mark.parametrize("transport, pieces, handed, answered, http1", [
    # a trusted peer's preface, in two pieces and with what follows: HTTP/2 gets it all
    (Peer10002, [PREFACE[:5], PREFACE[5:] + b"x"], [("h2", "h2"), PREFACE + b"x"], b"", False),
    # an untrusted peer's preface is an HTTP/1.1 request line, answered and closed
    (FakeTransport, [PREFACE], [], b"HTTP/1.1 505 ", True),
    # a trusted peer speaking HTTP/1.1: nothing waits
    (Peer10002, [b"GET / HTTP/1.1\r\n"], [], b"", True),
    (Peer10002, [b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"], [], b"HTTP/1.1 505 ", True),
])
def test_prior_knowledge_switches_only_a_trusted_peers_preface(transport, pieces, handed,
                                                                answered, http1):
    log, written, still_http1 = asyncio.run(sniffed(transport, pieces))
    assert log == handed
    assert written.startswith(answered)
    assert still_http1 is http1


# --- a stream's head ------------------------------------------------------------------------


def head(path=b"/", extra=(), method=b"GET", limits=DEFAULT_LIMITS) -> Http2Stream:
    """A stream of a real connection (the compiled stream takes nothing else)."""
    async def make() -> Http2Stream:
        state = ServerState(None, ASGI(), lambda: H11Parser(limits), 5.0, timing=False,
                            limits=limits)
        connection = Http2Connection(state, Http2Limits())
        connection.facts = ConnectionFacts(("10.0.0.1", 1), ("127.0.0.1", 80))
        fields = [(b":method", method), (b":scheme", b"http"), (b":authority", b"example.com"),
                  (b":path", path), *extra]
        return Http2Stream(connection, 1, fields)
    return asyncio.run(make())


def test_head_fields_host_and_cookies():
    stream = head(b"/a?b", [(b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2"),
                            (b"x-forwarded-for", b"1.2.3.4")])
    assert stream.method == "GET" and stream.target == b"/a?b" and stream.http_version == "2"
    assert stream.headers == [(b"accept", b"*/*"), (b"x-forwarded-for", b"1.2.3.4"),
                              (b"cookie", b"a=1; b=2"), (b"host", b"example.com")]
    assert stream.forwarded


def test_head_keeps_its_own_host():
    stream = head(extra=[(b"host", b"other")])
    assert [value for name, value in stream.headers if name == b"host"] == [b"other"]


@pytest.mark.parametrize("kwargs, status", [
    ({"path": b"/" + b"a" * 200, "limits": Limits(request_line=100)}, 414),
    ({"extra": [(b"x-%d" % i, b"v") for i in range(5)], "limits": Limits(fields=4)}, 431),
    ({"extra": [(b"x", b"v" * 100)], "limits": Limits(field_size=50)}, 431),
    ({"extra": [(b"content-length", b"2000")], "limits": Limits(body=1000)}, 413),
])
def test_head_limits(kwargs, status):
    with pytest.raises(ParseError) as caught:
        head(**kwargs)
    assert caught.value.status == status


# --- the connection, driven by an h2 client in the same process -------------------------------


class Peer:
    """An h2 client wired to an Http2Connection through a fake transport."""

    def __init__(self, app, limits: Http2Limits | None = None, tunnels=None,
                 **state_options) -> None:
        self.state = ServerState(app, ASGI(), lambda: H11Parser(Limits()), keep_alive=5.0,
                                 timing=False, **state_options)
        self.transport = FakeTransport()
        self.transport.get_write_buffer_size = lambda: 0  # type: ignore[attr-defined]
        self.server = Http2Connection(self.state, limits or Http2Limits(), tunnels)
        self.server.take_over(self.transport,  # type: ignore[arg-type]
                              ConnectionFacts(("10.0.0.1", 5), ("127.0.0.1", 80)))
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.events: list = []
        self.pump()

    def pump(self) -> list:
        """Both ways until neither side has anything to send; the client's new events."""
        new = []
        while True:
            out = self.client.data_to_send()
            if out:
                self.server.data_received(out)
            self.server.flush()
            back = self.transport.take()
            if back:
                events = self.client.receive_data(back)
                if any(isinstance(e, h2.events.ConnectionTerminated) and not e.error_code
                       for e in events):
                    # h2 (as a client too) takes nothing after a GOAWAY; RFC 9113 6.8 has the
                    # streams below its last id go on, which is what the drain tests.
                    self.client.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
                new += events
            if not out and not back:
                break
        self.events += new
        return new

    async def settle(self) -> list:
        """Let the app's tasks run, then pump."""
        new = []
        for _ in range(5):
            await asyncio.sleep(0)
            new += self.pump()
        return new

    def request(self, stream_id: int, path: str, body: bytes = b"", end: bool = True) -> None:
        self.client.send_headers(stream_id, [(b":method", b"POST" if body else b"GET"),
                                             (b":path", path.encode()), (b":scheme", b"http"),
                                             (b":authority", b"x")],
                                 end_stream=end and not body)
        for at in range(0, len(body), 16384):
            self.client.send_data(stream_id, body[at:at + 16384],
                                  end_stream=end and at + 16384 >= len(body))

    def of(self, kind, stream_id=None) -> list:
        return [e for e in self.events if isinstance(e, kind)
                and (stream_id is None or e.stream_id == stream_id)]


def test_request_window_reopens_only_as_the_app_reads():
    gate = asyncio.Event()
    read: list[bytes] = []

    async def app(scope, receive, send):
        await gate.wait()
        message = await receive()
        read.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def run():
        peer = Peer(app)
        peer.request(1, "/", b"x" * 30000, end=False)
        await peer.settle()
        window = peer.client.local_flow_control_window(1)
        assert window == 65535 - 30000  # buffered here, not acknowledged: the app has not read
        gate.set()
        await peer.settle()
        assert read == [b"x" * 30000]
        assert peer.of(h2.events.ResponseReceived, 1)
        # The app answered without the end of the body: the client is told to stop sending.
        assert [e.error_code for e in peer.of(h2.events.StreamReset, 1)] == [0]

    asyncio.run(run())


def test_a_body_the_app_never_reads_goes_back_to_the_connections_window():
    """An app that answers without reading the body: the stream ends, and the bytes it had
    received are returned to the connection (else a long connection of such requests would
    shrink the connection's window for good)."""
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def run():
        peer = Peer(app, Http2Limits(connection_window=65535))
        for stream_id in (1, 3, 5):  # 3 x 30,000 bytes: more than the connection's window
            peer.request(stream_id, "/", b"x" * 30000, end=False)
            await peer.settle()
            assert peer.of(h2.events.ResponseReceived, stream_id)
        assert peer.server.machine.in_window + peer.server.machine.in_owed == 65535

    asyncio.run(run())


def test_trailers_end_the_stream():
    async def app(scope, receive, send):
        assert "http.response.trailers" in scope["extensions"]
        await send({"type": "http.response.start", "status": 200, "trailers": True,
                    "headers": [(b"X-A", b"1"), (b"Transfer-Encoding", b"chunked")]})
        await send({"type": "http.response.body", "body": b"data"})
        await send({"type": "http.response.trailers", "headers": [(b"Grpc-Status", b"0")]})

    async def run():
        peer = Peer(app)
        peer.request(1, "/")
        await peer.settle()
        (response,) = peer.of(h2.events.ResponseReceived, 1)
        headers = dict(response.headers)
        assert headers[b"x-a"] == b"1" and b"transfer-encoding" not in headers
        assert b"content-length" not in headers  # the trailers follow: no length given
        (trailers,) = peer.of(h2.events.TrailersReceived, 1)
        assert trailers.headers == [(b"grpc-status", b"0")]
        assert peer.of(h2.events.StreamEnded, 1)

    asyncio.run(run())


def test_reset_budget_ends_a_rapid_reset_with_enhance_your_calm():
    async def app(scope, receive, send):
        await asyncio.sleep(10)

    async def run():
        peer = Peer(app, Http2Limits(max_resets=20))
        for stream_id in range(1, 100, 2):
            peer.request(stream_id, "/")
            peer.client.reset_stream(stream_id)
        peer.pump()
        (goaway,) = peer.of(h2.events.ConnectionTerminated)
        assert goaway.error_code == 11  # ENHANCE_YOUR_CALM
        assert peer.transport.closed
        for task in list(peer.state.tasks):
            task.cancel()

    asyncio.run(run())


def test_drain_goaway_then_the_final_one_once_streams_finish():
    gate = asyncio.Event()

    async def app(scope, receive, send):
        await gate.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def run():
        peer = Peer(app)
        peer.request(1, "/")
        peer.request(3, "/")
        await peer.settle()
        peer.state.start_draining()
        peer.pump()
        (goaway,) = peer.of(h2.events.ConnectionTerminated)
        assert goaway.last_stream_id == 3 and goaway.error_code == 0
        assert not peer.transport.closed
        gate.set()
        await peer.settle()
        assert [e.stream_id for e in peer.of(h2.events.ResponseReceived)] == [1, 3]
        assert peer.transport.closed  # (connection_lost, from a real transport, counts it out)

    asyncio.run(run())
