"""The HTTP/2 machine (duck_prefork/http2/machine.py), held to h2 as h11 holds our HTTP/1.1
parser: the same client bytes go to both, whole and split anywhere, and what each reports must
agree; where the machine differs on purpose (a malformed request is a stream error, not the
connection's end), the test says so. Then the refusals, each a hand-made frame."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duck_prefork.errors import Http2ConnectionError, Http2StreamClosed
from duck_prefork.http2 import machine as m
from duck_prefork.http2.machine import Http2Machine

LIMITS = {"max_concurrent_streams": 100, "max_header_list_size": 65536,
          "stream_window": 65535, "connection_window": 1 << 24}
GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"),
       (b":path", b"/a?b")]


def ours() -> Http2Machine:
    machine = Http2Machine(**LIMITS)
    machine.initiate_connection()
    machine.data_to_send()
    return machine


def reference() -> h2.connection.H2Connection:
    """h2 as the first HTTP/2 build ran it, with the same settings."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None, validate_inbound_headers=True,
        normalize_inbound_headers=False))
    conn.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: LIMITS["max_concurrent_streams"],
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: LIMITS["max_header_list_size"],
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: LIMITS["stream_window"]})
    conn.initiate_connection()
    conn.increment_flow_control_window(LIMITS["connection_window"] - 65535)
    conn.data_to_send()
    return conn


def client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                               header_encoding=None))
    conn.initiate_connection()
    server = Http2Machine(**LIMITS)  # our SETTINGS, so that the client keeps to our limits
    server.initiate_connection()
    conn.receive_data(server.data_to_send())
    return conn


def normal_ours(events: list) -> list:
    out = []
    for e in events:
        if isinstance(e, m.RequestReceived):
            out.append(("request", e.stream_id, list(e.headers), e.stream_ended))
        elif isinstance(e, m.DataReceived):
            out.append(("data", e.stream_id, e.data, e.flow_controlled_length, e.stream_ended))
        elif isinstance(e, m.TrailersReceived):
            out.append(("trailers", e.stream_id, list(e.headers)))
        elif isinstance(e, m.StreamReset):
            out.append(("reset", e.stream_id, e.error_code, e.remote_reset))
        elif isinstance(e, m.WindowUpdated):
            out.append(("window", e.stream_id, e.delta))
        elif isinstance(e, m.RemoteSettingsChanged):
            out.append(("settings", dict(e.changed_settings)))
        elif isinstance(e, m.PingReceived):
            out.append(("ping", e.ping_data))
        elif isinstance(e, m.ConnectionTerminated):
            out.append(("goaway", e.error_code, e.last_stream_id))
    return out


def normal_h2(events: list) -> list:
    """h2's events in the machine's terms: END_STREAM folded into the event that carried it."""
    out = []
    for e in events:
        if isinstance(e, h2.events.RequestReceived):
            out.append(("request", e.stream_id, [(bytes(n), bytes(v)) for n, v in e.headers],
                        e.stream_ended is not None))
        elif isinstance(e, h2.events.DataReceived):
            out.append(("data", e.stream_id, e.data, e.flow_controlled_length,
                        e.stream_ended is not None))
        elif isinstance(e, h2.events.TrailersReceived):
            out.append(("trailers", e.stream_id, [(bytes(n), bytes(v)) for n, v in e.headers]))
        elif isinstance(e, h2.events.StreamReset):
            out.append(("reset", e.stream_id, int(e.error_code), e.remote_reset))
        elif isinstance(e, h2.events.WindowUpdated):
            out.append(("window", e.stream_id, e.delta))
        elif isinstance(e, h2.events.RemoteSettingsChanged):
            out.append(("settings", {int(k): v.new_value for k, v in e.changed_settings.items()}))
        elif isinstance(e, h2.events.PingReceived):
            out.append(("ping", e.ping_data))
        elif isinstance(e, h2.events.ConnectionTerminated):
            out.append(("goaway", int(e.error_code), e.last_stream_id))
    return out


def reported(events: list) -> list:
    """The machine's events but the SETTINGS every connection starts with."""
    return [e for e in normal_ours(events) if e[0] != "settings"]


def feed(server, data: bytes, cuts: list[int]) -> list:
    """`data` in pieces cut at `cuts`; the events of all of them."""
    events: list = []
    at = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        if at < cut <= len(data):
            events += server.receive_data(data[at:cut])
            at = cut
    return events


# --- what a well-behaved client sends: the machine reports what h2 reports ------------------

header_names = st.sampled_from([b"accept", b"user-agent", b"x-a", b"cookie", b"content-type",
                                b"accept-encoding", b"x-long-name-for-a-header"])
header_values = st.binary(min_size=0, max_size=40).map(
    lambda v: v.replace(b"\r", b"r").replace(b"\n", b"n").replace(b"\0", b"0").strip(b" \t"))
request_headers = st.lists(st.tuples(header_names, header_values), max_size=8)
actions = st.lists(st.one_of(
    st.tuples(st.just("get"), request_headers),
    st.tuples(st.just("post"), request_headers, st.lists(st.binary(max_size=5000), max_size=4),
              st.booleans()),
    st.tuples(st.just("ping"), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just("settings"), st.integers(0, 100000), st.integers(16384, 1 << 20),
              st.integers(0, 8192)),
    st.tuples(st.just("window"), st.integers(1, 1 << 20)),
    st.tuples(st.just("reset_last"), st.sampled_from([0, 8])),
), max_size=12)


def client_bytes(script) -> bytes:
    conn = client()
    out = conn.data_to_send()
    stream_id = 1
    open_streams: list[int] = []
    for action in script:
        kind = action[0]
        if kind == "get":
            conn.send_headers(stream_id, GET + action[1], end_stream=True)
        elif kind == "post":
            _, headers, chunks, trailers = action
            conn.send_headers(stream_id, [(b":method", b"POST"), *GET[1:], *headers])
            for chunk in chunks:
                conn.send_data(stream_id, chunk)
            if trailers:
                conn.send_headers(stream_id, [(b"x-checksum", b"abc")], end_stream=True)
            else:
                conn.end_stream(stream_id)
        elif kind == "ping":
            conn.ping(action[1])
        elif kind == "settings":
            conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: action[1],
                                  h2.settings.SettingCodes.MAX_FRAME_SIZE: action[2],
                                  h2.settings.SettingCodes.HEADER_TABLE_SIZE: action[3]})
        elif kind == "window":
            conn.increment_flow_control_window(action[1])
        elif kind == "reset_last" and open_streams:
            stream = open_streams.pop()
            if stream in conn.streams and not conn.streams[stream].closed:
                conn.reset_stream(stream, action[1])
        if kind in ("get", "post"):
            open_streams.append(stream_id)
            stream_id += 2
        out += conn.data_to_send()
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions, st.lists(st.integers(0, 60000), max_size=6))
def test_the_machine_reports_what_h2_reports(script, cuts):
    data = client_bytes(script)
    assert normal_ours(feed(ours(), data, cuts)) == normal_h2(feed(reference(), data, []))


def test_byte_by_byte_equals_whole():
    data = client_bytes([("post", [(b"accept", b"*/*")], [b"x" * 3000, b"y" * 10], True),
                         ("get", [(b"cookie", b"a=1"), (b"cookie", b"b=2")]),
                         ("ping", b"12345678")])
    whole = normal_ours(ours().receive_data(data))
    assert normal_ours(feed(ours(), data, list(range(len(data))))) == whole
    assert [e[0] for e in whole] == ["settings", "request", "data", "data", "trailers",
                                     "request", "ping"]


# --- what the machine sends: an h2 client reads it ------------------------------------------


def served() -> tuple[Http2Machine, h2.connection.H2Connection]:
    """Our machine with an h2 client that has sent it one request (stream 1) and read our
    preface."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                               header_encoding=None))
    conn.initiate_connection()
    server = Http2Machine(**LIMITS)
    server.initiate_connection()
    conn.send_headers(1, GET, end_stream=True)
    server.receive_data(conn.data_to_send())
    conn.receive_data(server.data_to_send())
    return server, conn


def test_a_response_as_h2_reads_it():
    server, conn = served()
    fields = [(b":status", b"200"), (b"content-type", b"text/plain"),
              (b"x-big", b"v" * 40000)]  # more than one frame: HEADERS + CONTINUATION
    server.send_headers(1, fields)
    server.send_data(1, b"hello")
    server.send_data(1, b"", end_stream=True)
    events = conn.receive_data(server.data_to_send())
    (response,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert response.headers == fields
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"hello"
    assert [e for e in events if isinstance(e, h2.events.StreamEnded)]
    assert 1 not in server.streams  # both sides ended: forgotten
    with pytest.raises(Http2StreamClosed):
        server.send_data(1, b"more")


def test_sending_keeps_to_the_clients_windows():
    server, conn = served()
    assert server.local_flow_control_window(1) == 65535
    server.send_headers(1, [(b":status", b"200")])
    for _ in range(3):
        server.send_data(1, b"x" * 16384)
    assert server.local_flow_control_window(1) == 65535 - 3 * 16384
    with pytest.raises(ValueError):
        server.send_data(1, b"x" * 16384)  # past the window: the caller's bug
    conn.receive_data(server.data_to_send())
    conn.increment_flow_control_window(10, stream_id=1)
    conn.increment_flow_control_window(10)
    events = server.receive_data(conn.data_to_send())
    assert normal_ours(events) == [("window", 1, 10), ("window", 0, 10)]
    assert server.local_flow_control_window(1) == 65535 - 3 * 16384 + 10


def test_the_clients_initial_window_moves_open_streams():
    server, conn = served()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
    server.receive_data(conn.data_to_send())
    assert server.local_flow_control_window(1) == 100


def test_the_request_window_reopens_as_the_app_reads():
    server = ours()
    conn = client()
    conn.send_headers(1, [(b":method", b"POST"), *GET[1:]])
    conn.send_data(1, b"x" * 16384)
    conn.send_data(1, b"x" * 16384)
    events = server.receive_data(conn.data_to_send())
    assert [e.flow_controlled_length for e in events if isinstance(e, m.DataReceived)] == \
        [16384, 16384]
    assert [type(f) for f in parse(server.data_to_send())] == [SettingsFrame]  # the ACK only:
    # nothing read yet, nothing returned
    server.acknowledge_received_data(16384, 1)
    assert server.data_to_send() == b""  # less than half a window owed
    server.acknowledge_received_data(16384, 1)
    back = conn.receive_data(server.data_to_send())
    assert [(e.stream_id, e.delta) for e in back if isinstance(e, h2.events.WindowUpdated)] \
        == [(1, 32768)]


def test_drain_goaway_lets_the_streams_below_it_finish():
    server, conn = served()
    server.send_goaway(1)
    server.send_headers(1, [(b":status", b"204")], end_stream=True)  # still allowed
    data = server.data_to_send()
    frames = parse(data)
    assert [type(f).__name__ for f in frames] == ["GoAwayFrame", "HeadersFrame"]
    assert frames[0].last_stream_id == 1 and frames[0].error_code == 0
    server.close_connection(0)
    assert isinstance(parse(server.data_to_send())[0], GoAwayFrame)
    assert server.receive_data(b"anything") == []  # closed: nothing more is read


def parse(data: bytes) -> list[Frame]:
    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    return frames


# --- refusals: connection errors (GOAWAY) and stream errors (RST_STREAM) ----------------------

def block(headers) -> bytes:
    return hpack.Encoder().encode(headers)


def started(*frames: Frame | bytes) -> bytes:
    return m.PREFACE + SettingsFrame(0).serialize() + b"".join(
        f if isinstance(f, bytes) else f.serialize() for f in frames)


def headers_frame(stream_id, headers=GET, flags=("END_HEADERS", "END_STREAM")):
    return HeadersFrame(stream_id, data=block(headers), flags=list(flags))


CONNECTION_ERRORS = [
    ("not the preface", b"GET / HTTP/1.1\r\n\r\n" + b"x" * 30, m.PROTOCOL_ERROR),
    ("no SETTINGS first", m.PREFACE + PingFrame(0, opaque_data=b"12345678").serialize(),
     m.PROTOCOL_ERROR),
    ("a frame above our size", started(b"\x00\x40\x01\x00\x00\x00\x00\x00\x01"),
     m.FRAME_SIZE_ERROR),
    ("HEADERS on stream 0", started(b"\x00\x00\x00\x01\x05\x00\x00\x00\x00"),
     m.PROTOCOL_ERROR),
    ("HEADERS on an even stream", started(headers_frame(2)), m.PROTOCOL_ERROR),
    ("a stream id going down", started(headers_frame(5), headers_frame(3)), m.STREAM_CLOSED),
    ("DATA on an idle stream", started(DataFrame(1, data=b"x")), m.PROTOCOL_ERROR),
    ("DATA on stream 0", started(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"), m.PROTOCOL_ERROR),
    ("padding longer than the DATA", started(
        headers_frame(1, [(b":method", b"POST"), *GET[1:]], ["END_HEADERS"]),
        b"\x00\x00\x02\x00\x08\x00\x00\x00\x01\x05x"), m.PROTOCOL_ERROR),
    ("DATA past the stream's window", started(
        headers_frame(1, [(b":method", b"POST"), *GET[1:]], ["END_HEADERS"]),
        *[DataFrame(1, data=b"x" * 16384) for _ in range(4)], DataFrame(1, data=b"x")),
     m.FLOW_CONTROL_ERROR),
    ("an interrupted header block", started(
        HeadersFrame(1, data=block(GET)[:3]), PingFrame(0, opaque_data=b"12345678")),
     m.PROTOCOL_ERROR),
    ("CONTINUATION on another stream", started(
        HeadersFrame(1, data=block(GET)[:3]), ContinuationFrame(3, data=b"",
                                                               flags=["END_HEADERS"])),
     m.PROTOCOL_ERROR),
    ("CONTINUATION without a block", started(ContinuationFrame(1, data=b"")),
     m.PROTOCOL_ERROR),
    ("endless CONTINUATION", started(HeadersFrame(1, data=b""), *[ContinuationFrame(
        1, data=b"") for _ in range(17)]), m.ENHANCE_YOUR_CALM),
    ("a header block above the list size", started(HeadersFrame(1, data=b"\x00" * 16000), *[
        ContinuationFrame(1, data=b"\x00" * 16000) for _ in range(4)]), m.ENHANCE_YOUR_CALM),
    ("an HPACK bomb", started(
        headers_frame(1, [*GET, (b"x-a", b"v" * 4000)], ["END_HEADERS", "END_STREAM"]),
        # :authority added to the table (62), then the 4 KB field (now 63) 20 times
        HeadersFrame(3, data=b"\x82\x87\x84\x41\x0bexample.com" + b"\xbf" * 20,
                     flags=["END_HEADERS", "END_STREAM"])), m.ENHANCE_YOUR_CALM),
    ("broken HPACK", started(HeadersFrame(1, data=b"\xff\xff\xff\xff\xff\xff\xff",
                                          flags=["END_HEADERS"])), m.COMPRESSION_ERROR),
    ("PUSH_PROMISE from a client", started(PushPromiseFrame(1, promised_stream_id=2,
                                                            flags=["END_HEADERS"])),
     m.PROTOCOL_ERROR),
    ("SETTINGS on a stream", started(b"\x00\x00\x00\x04\x00\x00\x00\x00\x01"),
     m.PROTOCOL_ERROR),
    ("a SETTINGS ACK with a payload", started(
        b"\x00\x00\x06\x04\x01\x00\x00\x00\x00" + b"\x00\x01\x00\x00\x00\x00"),
     m.FRAME_SIZE_ERROR),
    ("SETTINGS of a wrong length", started(b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\0" * 5),
     m.FRAME_SIZE_ERROR),
    ("ENABLE_PUSH 2", started(SettingsFrame(0, settings={2: 2})), m.PROTOCOL_ERROR),
    ("an initial window too large", started(SettingsFrame(0, settings={4: 2**31})),
     m.FLOW_CONTROL_ERROR),
    ("a frame size too small", started(SettingsFrame(0, settings={5: 100})),
     m.PROTOCOL_ERROR),
    ("PING of a wrong length", started(b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"x" * 7),
     m.FRAME_SIZE_ERROR),
    ("PING on a stream", started(b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"x" * 8),
     m.PROTOCOL_ERROR),
    ("WINDOW_UPDATE of 0", started(WindowUpdateFrame(0, window_increment=0)),
     m.PROTOCOL_ERROR),
    ("the connection's window overflowing", started(WindowUpdateFrame(
        0, window_increment=2**31 - 1)), m.FLOW_CONTROL_ERROR),
    ("WINDOW_UPDATE on an idle stream", started(WindowUpdateFrame(9, window_increment=1)),
     m.PROTOCOL_ERROR),
    ("RST_STREAM on an idle stream", started(RstStreamFrame(9)), m.PROTOCOL_ERROR),
    ("PRIORITY of a wrong length on an idle stream",
     started(b"\x00\x00\x04\x02\x00\x00\x00\x00\x09abcd"), m.FRAME_SIZE_ERROR),
    ("an idle stream depending on itself", started(PriorityFrame(9, depends_on=9)),
     m.PROTOCOL_ERROR),
    ("RST_STREAM of a wrong length", started(b"\x00\x00\x03\x03\x00\x00\x00\x00\x01abc"),
     m.FRAME_SIZE_ERROR),
    ("more streams than we allow", started(*[headers_frame(i) for i in range(1, 204, 2)]),
     m.PROTOCOL_ERROR),
]


@pytest.mark.parametrize("why, data, code", CONNECTION_ERRORS,
                         ids=[case[0] for case in CONNECTION_ERRORS])
def test_connection_errors_end_in_goaway(why, data, code):
    server = ours()
    with pytest.raises(Http2ConnectionError) as caught:
        server.receive_data(data)
    assert caught.value.code == code
    frames = parse(server.data_to_send())
    assert isinstance(frames[-1], GoAwayFrame) and frames[-1].error_code == code
    assert server.closed and server.receive_data(b"more") == []


def test_a_header_block_in_progress_is_known():
    server = ours()
    data = started(HeadersFrame(1, data=block(GET)))  # no END_HEADERS
    server.receive_data(data[:-5])
    assert server.receiving_headers()  # the HEADERS frame in part
    server.receive_data(data[-5:])
    assert server.receiving_headers()  # whole, its block waiting for CONTINUATION
    server.receive_data(ContinuationFrame(1, data=b"", flags=["END_HEADERS"]).serialize())
    assert not server.receiving_headers()
    server.receive_data(DataFrame(1, data=b"x" * 100).serialize()[:50])
    assert not server.receiving_headers()  # a DATA frame in part is not a head


def test_connection_errors_split_anywhere():
    for why, data, code in CONNECTION_ERRORS:
        server = ours()
        with pytest.raises(Http2ConnectionError) as caught:
            for at in range(len(data)):
                server.receive_data(data[at:at + 1])
        assert caught.value.code == code, why


MALFORMED = [
    ("an uppercase name", [*GET, (b"Accept", b"x")]),
    ("a name that is no token", [*GET, (b"a b", b"x")]),
    ("a colon inside a name", [*GET, (b"a:b", b"x")]),
    ("a value with a newline", [*GET, (b"x", b"a\nb")]),
    ("a value with NUL", [*GET, (b"x", b"a\0b")]),
    ("a value with leading space", [*GET, (b"x", b" a")]),
    ("a connection-specific field", [*GET, (b"connection", b"close")]),
    ("transfer-encoding", [*GET, (b"transfer-encoding", b"chunked")]),
    ("te other than trailers", [*GET, (b"te", b"gzip")]),
    ("a pseudo-header after a field", [*GET[:3], (b"x", b"1"), GET[3]]),
    ("a pseudo-header twice", [*GET, (b":path", b"/b")]),
    ("an unknown pseudo-header", [*GET, (b":foo", b"x")]),
    ("a response pseudo-header", [*GET, (b":status", b"200")]),
    ("no :method", GET[1:]),
    ("no :path", GET[:3]),
    ("no :scheme", [GET[0], *GET[2:]]),
    ("an empty :path", [*GET[:3], (b":path", b"")]),
    ("CONNECT with a :path", [(b":method", b"CONNECT"), (b":authority", b"a:1"),
                              (b":path", b"/")]),
    ("CONNECT without :authority", [(b":method", b"CONNECT")]),
    (":protocol not advertised", [(b":method", b"CONNECT"), (b":protocol", b"websocket"),
                                  *GET[1:]]),
    (":protocol without CONNECT", [*GET, (b":protocol", b"websocket")]),
    ("a bad Content-Length", [*GET, (b"content-length", b"1x")]),
    ("two Content-Lengths", [*GET, (b"content-length", b"1"), (b"content-length", b"2")]),
    ("a Content-Length and no body", [*GET, (b"content-length", b"3")]),
    ("host and :authority differ", [*GET, (b"host", b"other.com")]),
]


@pytest.mark.parametrize("why, headers", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_a_malformed_request_is_a_stream_error(why, headers):
    """RFC 9113 8.1.1: RST_STREAM PROTOCOL_ERROR, not reported, and the connection goes on
    (h2 ends the connection for most of these)."""
    server = ours()
    data = started(headers_frame(1, headers), headers_frame(3))
    events = reported(server.receive_data(data))
    assert events == [("request", 3, GET, True)]
    (reset,) = [f for f in parse(server.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert reset.stream_id == 1 and reset.error_code == 1
    if why not in H2_LETS_THROUGH:
        with pytest.raises(h2.exceptions.ProtocolError):
            reference().receive_data(data)


# h2 4.4 takes these: :protocol whether or not the server advertised RFC 8441, and a
# Content-Length on a HEADERS frame that ends the stream.
H2_LETS_THROUGH = {":protocol not advertised", "a Content-Length and no body"}


def test_content_length_is_held_to_the_data():
    server = ours()
    post = [(b":method", b"POST"), *GET[1:], (b"content-length", b"3")]
    events = server.receive_data(started(
        headers_frame(1, post, ["END_HEADERS"]), DataFrame(1, data=b"abcd")))
    assert reported(events)[-1] == ("reset", 1, m.PROTOCOL_ERROR, False)
    server = ours()
    events = server.receive_data(started(
        headers_frame(1, post, ["END_HEADERS"]), DataFrame(1, data=b"ab", flags=["END_STREAM"])))
    assert reported(events)[-1] == ("reset", 1, m.PROTOCOL_ERROR, False)


def test_stream_errors_that_leave_the_connection_up():
    server = ours()
    post = [(b":method", b"POST"), *GET[1:]]
    events = server.receive_data(started(
        headers_frame(1, post, ["END_HEADERS"]), headers_frame(3, post, ["END_HEADERS"]),
        WindowUpdateFrame(1, window_increment=0),  # a zero increment on a stream
        PriorityFrame(3, depends_on=3),  # a stream depending on itself
        headers_frame(5)))
    assert reported(events) == [("request", 1, post, False), ("request", 3, post, False),
                                ("reset", 1, m.PROTOCOL_ERROR, False),
                                ("reset", 3, m.PROTOCOL_ERROR, False),
                                ("request", 5, GET, True)]
    resets = [f for f in parse(server.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in resets] == [(1, 1), (3, 1)]


def test_frames_on_a_stream_we_reset_are_ignored_and_their_credit_returned():
    server = ours()
    post = [(b":method", b"POST"), *GET[1:]]
    server.receive_data(started(headers_frame(1, post, ["END_HEADERS"])))
    server.reset_stream(1, m.CANCEL)
    server.data_to_send()
    before = server.in_window
    assert server.receive_data(DataFrame(1, data=b"x" * 1000).serialize()) == []
    assert server.in_window == before - 1000 and server.in_owed == 1000
    assert server.receive_data(WindowUpdateFrame(1, window_increment=5).serialize()) == []
    assert server.receive_data(RstStreamFrame(1).serialize()) == []
    # trailers sent before the client saw our RST_STREAM: decoded (HPACK's table goes on),
    # ignored, and the connection goes on
    trailers = HeadersFrame(1, data=block([(b"x-sum", b"1")]), flags=["END_HEADERS",
                                                                      "END_STREAM"])
    assert server.receive_data(trailers.serialize()) == []
    with pytest.raises(Http2StreamClosed):
        server.reset_stream(1, m.CANCEL)
    # a stream that ended both ways is another matter: HEADERS on it break the protocol
    server = ours()
    server.receive_data(started(headers_frame(1)))
    server.send_headers(1, [(b":status", b"204")], end_stream=True)
    with pytest.raises(Http2ConnectionError) as caught:
        server.receive_data(headers_frame(1).serialize())
    assert caught.value.code == m.STREAM_CLOSED


def test_extended_connect_when_advertised():
    server = Http2Machine(connect_protocol=True)
    server.initiate_connection()
    settings_frame = parse(server.data_to_send())[0]
    assert settings_frame.settings[m.ENABLE_CONNECT_PROTOCOL] == 1
    headers = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), *GET[1:],
               (b"sec-websocket-version", b"13")]
    events = reported(server.receive_data(started(headers_frame(1, headers,
                                                                 ["END_HEADERS"]))))
    assert events == [("request", 1, headers, False)]


def test_a_ping_is_answered_and_goaway_from_the_client_ends_reading():
    server = ours()
    events = server.receive_data(started(PingFrame(0, opaque_data=b"abcdefgh"),
                                         GoAwayFrame(0, last_stream_id=0, error_code=0),
                                         PingFrame(0, opaque_data=b"never...")))
    assert normal_ours(events) == [("settings", {}), ("ping", b"abcdefgh"), ("goaway", 0, 0)]
    frames = parse(server.data_to_send())
    assert [type(f).__name__ for f in frames] == ["SettingsFrame", "PingFrame"]
    assert "ACK" in frames[1].flags and frames[1].opaque_data == b"abcdefgh"


# --- anything at all: the machine answers with its own error, never another -----------------

frames = st.lists(st.tuples(st.integers(0, 10), st.integers(0, 255), st.integers(0, 9),
                            st.binary(max_size=300)), max_size=20)


@settings(max_examples=500, deadline=None)
@given(frames, st.lists(st.integers(0, 3000), max_size=5))
def test_any_frames_end_only_in_the_machines_own_error(script, cuts):
    data = started(headers_frame(1, [(b":method", b"POST"), *GET[1:]], ["END_HEADERS"]),
                   *[m.frame_head(len(payload), kind, flags, stream_id) + payload
                     for kind, flags, stream_id, payload in script])
    server = ours()
    try:
        feed(server, data, cuts)
    except Http2ConnectionError:
        assert server.closed
        assert isinstance(parse(server.data_to_send())[-1], GoAwayFrame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_any_bytes_end_only_in_the_machines_own_error(data):
    server = ours()
    try:
        server.receive_data(started() + data)
    except Http2ConnectionError:
        assert server.closed
