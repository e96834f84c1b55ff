"""HTTP/2's server side as a state machine with no socket (RFC 9113): bytes in, events out,
what to send queued as bytes. Compiled with the hot path (build.py).

Why not h2, which the first HTTP/2 build ran on: h2, hpack and hyperframe are pure Python and
made an HTTP/2 request cost ~690,000 instructions where granian spends ~67,000 and our
HTTP/1.1 ~48,000 (bench/instr_h2.py, valgrind). h2 stays what h11 is to the HTTP/1.1 parser:
the reference the tests hold this machine to (tests/unit/test_http2_machine.py feeds both
the same frames), not the code on the path.

The interface is the part of h2's that the connection (connection.py) used: receive_data()
returns events, send_headers / send_data / reset_stream / acknowledge_received_data /
close_connection queue frames, data_to_send() hands them over. Differences, each on purpose:
END_STREAM is a flag on the event that carried it (RequestReceived, DataReceived;
TrailersReceived always ends the stream), not a separate event; a malformed request (RFC 9113
8.1.1) is a stream error (RST_STREAM PROTOCOL_ERROR: the other streams go on), never seen by
the connection; send_goaway() sends a GOAWAY and goes on serving the streams below it (the
graceful drain, which h2 could not do).

What the machine enforces, each a connection error (GOAWAY, then Http2ConnectionError from
receive_data) unless said otherwise: the preface and a first SETTINGS; frame sizes (ours is
the default 16,384, never raised) and per-type lengths; stream ids (odd, increasing; frames
on idle streams); the header block as a run of HEADERS + CONTINUATION on one stream, its
CONTINUATION frames and compressed size bounded as they arrive (ENHANCE_YOUR_CALM: the 2024
CONTINUATION floods) and its decoded size bounded while decoding (ENHANCE_YOUR_CALM: HPACK
bombs; hpack.py); more streams open than we advertise (PROTOCOL_ERROR, as h2); both
flow-control windows each way, with overflow; SETTINGS values; the request's form (stream
error): pseudo-headers, lowercase token names, values without CR, LF, NUL or surrounding
whitespace, no connection-specific fields, TE only "trailers", Content-Length against the DATA
received, :protocol only as RFC 8441's extended CONNECT when we advertise it. Rates (resets,
PING, SETTINGS) are the connection's to judge, from the events (limits.py).

Flow control inbound: the connection's credit is returned as bytes arrive on streams nobody
will read, and as the app reads (acknowledge_received_data); a stream's only as the app reads;
a WINDOW_UPDATE goes out once half a window is owed, not per read.
"""

from __future__ import annotations

import struct
from typing import Final, NoReturn

from ..errors import Http2ConnectionError, Http2StreamClosed
from .hpack import Decoder, Encoder, HeaderListTooLarge, HpackError

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 6).
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# Flags.
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# Error codes (RFC 9113 7).
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

# Settings (RFC 9113 6.5.2; RFC 8441 3).
HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6
ENABLE_CONNECT_PROTOCOL: Final = 0x8

DEFAULT_WINDOW: Final = 65535
FRAME_SIZE: Final = 16384  # the largest frame we accept: the default, never raised
MAX_WINDOW: Final = 2**31 - 1
MAX_FRAME_SIZE_LIMIT: Final = 2**24 - 1

_HEAD: Final = struct.Struct(">BHBBI")  # a frame header: length (24 bits), type, flags, stream

# Request fields HTTP/2 forbids (RFC 9113 8.2.2); TE is allowed with "trailers" only.
_CONNECTION_SPECIFIC: Final = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                                         b"transfer-encoding", b"upgrade"))
_METHOD: Final = 1
_SCHEME: Final = 2
_AUTHORITY: Final = 4
_PATH: Final = 8
_PROTOCOL: Final = 16
_PSEUDO_BITS: Final = {b":method": _METHOD, b":scheme": _SCHEME, b":authority": _AUTHORITY,
                       b":path": _PATH, b":protocol": _PROTOCOL}
# The bytes a field name may hold (RFC 9110 tchar, lowercase only: RFC 9113 8.2.1).
_TOKEN_LOWER: Final = bytes(sorted(set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")))
# Field names found valid so far (bounded): a client sends the same few names on every stream.
_GOOD_NAMES: Final[set[bytes]] = set()
_GOOD_NAMES_MAX: Final = 4096
_MALFORMED: Final = -2  # _check_request's answer for a request to refuse
_RESET_MEMORY: Final = 128  # streams we reset whose late frames are ignored, not errors


def frame_head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return _HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


# --- events -----------------------------------------------------------------------------


class Event:
    """What receive_data() found, one per frame that matters to the connection."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class RequestReceived(Event):
    __slots__ = ("headers", "stream_ended")

    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                 stream_ended: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.stream_ended = stream_ended


class DataReceived(Event):
    __slots__ = ("data", "flow_controlled_length", "stream_ended")

    def __init__(self, stream_id: int, data: bytes, flow_controlled_length: int,
                 stream_ended: bool) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_controlled_length = flow_controlled_length
        self.stream_ended = stream_ended


class TrailersReceived(Event):
    """The request's trailers, which end its stream."""

    __slots__ = ("headers",)

    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.stream_id = stream_id
        self.headers = headers


class StreamReset(Event):
    """The stream ended without finishing: reset by the client (remote_reset) or by us for
    breaking the protocol after its request was announced."""

    __slots__ = ("error_code", "remote_reset")

    def __init__(self, stream_id: int, error_code: int, remote_reset: bool) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote_reset = remote_reset


class WindowUpdated(Event):
    """The client opened a window: the stream's, or the connection's (stream_id 0)."""

    __slots__ = ("delta",)

    def __init__(self, stream_id: int, delta: int) -> None:
        self.stream_id = stream_id
        self.delta = delta


class RemoteSettingsChanged(Event):
    __slots__ = ("changed_settings",)

    def __init__(self, changed_settings: dict[int, int]) -> None:
        self.stream_id = 0
        self.changed_settings = changed_settings


class PingReceived(Event):
    __slots__ = ("ping_data",)

    def __init__(self, ping_data: bytes) -> None:
        self.stream_id = 0
        self.ping_data = ping_data


class ConnectionTerminated(Event):
    """The client's GOAWAY: nothing more will be read or sent."""

    __slots__ = ("error_code", "last_stream_id", "additional_data")

    def __init__(self, error_code: int, last_stream_id: int, additional_data: bytes) -> None:
        self.stream_id = 0
        self.error_code = error_code
        self.last_stream_id = last_stream_id
        self.additional_data = additional_data


# --- the machine ------------------------------------------------------------------------


class _Stream:
    """What the machine keeps of an open (or half-closed) stream."""

    __slots__ = ("remote_open", "local_open", "in_window", "in_owed", "out_window",
                 "expected", "received")

    def __init__(self, in_window: int, out_window: int, expected: int, remote_open: bool):
        self.remote_open = remote_open  # the client may still send DATA
        self.local_open = True  # we may still send
        self.in_window = in_window  # what the client may still send on it
        self.in_owed = 0  # read by the app, not yet returned with a WINDOW_UPDATE
        self.out_window = out_window
        self.expected = expected  # the request's Content-Length, or -1
        self.received = 0


class Http2Machine:
    """One server-side HTTP/2 connection, sans-IO (see the module docstring)."""

    def __init__(self, max_concurrent_streams: int = 100, max_header_list_size: int = 65536,
                 stream_window: int = DEFAULT_WINDOW, connection_window: int = DEFAULT_WINDOW,
                 max_continuation_frames: int = 16, connect_protocol: bool = False) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_list_size = max_header_list_size
        self.stream_window = stream_window
        self.connection_window = max(connection_window, DEFAULT_WINDOW)
        self.max_continuation_frames = max_continuation_frames
        self.connect_protocol = connect_protocol
        self.decoder = Decoder(4096, max_header_list_size)
        self.encoder = Encoder()
        self.streams: dict[int, _Stream] = {}
        self.highest_inbound_stream_id = 0
        self.closed = False  # a GOAWAY has been sent or received: nothing more is read
        self.out: list[bytes] = []
        self._buffer = b""
        self._stage = 0  # 0: the preface is due, 1: the client's first SETTINGS, 2: frames
        self.settings_acked = False
        # Sending: the client's settings and the connection's window.
        self.max_outbound_frame_size = FRAME_SIZE
        self.peer_initial_window = DEFAULT_WINDOW
        self.out_window = DEFAULT_WINDOW
        # Receiving: the connection's credit, and what the app has read but we still owe.
        self.in_window = DEFAULT_WINDOW
        self.in_owed = 0
        # A header block in progress (HEADERS without END_HEADERS, then CONTINUATIONs).
        self._block_stream = 0
        self._block_parts: list[bytes] = []
        self._block_frames = 0
        self._block_size = 0
        self._block_end_stream = False
        self._block_refused = False
        # The last streams we reset, oldest first: what the client sent on them before it
        # saw the RST_STREAM is ignored rather than taken for an error.
        self._reset_by_us: dict[int, None] = {}

    # --- the start ----------------------------------------------------------------------

    def initiate_connection(self) -> None:
        """Queue our preface: SETTINGS (and the connection window, when larger)."""
        values = [(MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
                  (INITIAL_WINDOW_SIZE, self.stream_window)]
        if self.max_header_list_size:
            values.append((MAX_HEADER_LIST_SIZE, self.max_header_list_size))
        if self.connect_protocol:
            values.append((ENABLE_CONNECT_PROTOCOL, 1))
        payload = b"".join([struct.pack(">HI", code, value) for code, value in values])
        self.out.append(frame_head(len(payload), SETTINGS, 0, 0) + payload)
        extra = self.connection_window - DEFAULT_WINDOW
        if extra > 0:
            self.in_window += extra
            self.out.append(frame_head(4, WINDOW_UPDATE, 0, 0) + struct.pack(">I", extra))

    # --- receiving ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """The events in `data` (and what came before it unparsed). Raises
        Http2ConnectionError once the client has broken the protocol (GOAWAY queued)."""
        events: list[Event] = []
        if self.closed:
            return events
        buffer = self._buffer + data if self._buffer else data
        pos = 0
        end = len(buffer)
        if self._stage == 0:
            size = len(PREFACE)
            if end < size:
                if buffer != PREFACE[:end]:
                    self.fail(PROTOCOL_ERROR, "not the HTTP/2 preface")
                self._buffer = buffer
                return events
            if buffer[:size] != PREFACE:
                self.fail(PROTOCOL_ERROR, "not the HTTP/2 preface")
            pos = size
            self._stage = 1
        while end - pos >= 9:
            length = buffer[pos] << 16 | buffer[pos + 1] << 8 | buffer[pos + 2]
            if length > FRAME_SIZE:
                self.fail(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            if end - pos - 9 < length:
                break
            kind = buffer[pos + 3]
            flags = buffer[pos + 4]
            stream_id = ((buffer[pos + 5] & 0x7F) << 24 | buffer[pos + 6] << 16
                         | buffer[pos + 7] << 8 | buffer[pos + 8])
            payload = buffer[pos + 9:pos + 9 + length]
            pos += 9 + length
            self.frame(kind, flags, stream_id, payload, events)
            if self.closed:
                return events  # the client's GOAWAY
        self._buffer = buffer[pos:] if pos < end else b""
        return events

    def receiving_headers(self) -> bool:
        """Whether a header block has begun and not ended: a HEADERS frame in part, or a
        block waiting for its CONTINUATION frames (the connection bounds how long by
        --header-timeout, whatever its other streams do)."""
        if self._block_stream:
            return True
        buffer = self._buffer
        return len(buffer) >= 4 and (buffer[3] == HEADERS or buffer[3] == CONTINUATION)

    def frame(self, kind: int, flags: int, stream_id: int, payload: bytes,
              events: list[Event]) -> None:
        """One frame. A chain of tests rather than a table of methods: compiled, a test is a
        few instructions and a call through a table is hundreds (this runs per frame)."""
        if self._block_stream:
            if kind != CONTINUATION or stream_id != self._block_stream:
                self.fail(PROTOCOL_ERROR, "a header block interrupted")
            self.on_continuation(flags, payload, events)
            return
        if self._stage == 1:
            if kind != SETTINGS or flags & ACK:
                self.fail(PROTOCOL_ERROR, "the preface is not followed by SETTINGS")
            self._stage = 2
        if kind == HEADERS:
            self.on_headers(flags, stream_id, payload, events)
        elif kind == DATA:
            self.on_data(flags, stream_id, payload, events)
        elif kind == WINDOW_UPDATE:
            self.on_window_update(stream_id, payload, events)
        elif kind == SETTINGS:
            self.on_settings(flags, stream_id, payload, events)
        elif kind == RST_STREAM:
            self.on_rst_stream(stream_id, payload, events)
        elif kind == PING:
            self.on_ping(flags, stream_id, payload, events)
        elif kind == PRIORITY:
            self.on_priority(stream_id, payload, events)
        elif kind == GOAWAY:
            self.on_goaway(stream_id, payload, events)
        elif kind == CONTINUATION:
            self.fail(PROTOCOL_ERROR, "CONTINUATION without a header block")
        elif kind == PUSH_PROMISE:
            self.fail(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # any other type: ignored (RFC 9113 5.5)

    def on_headers(self, flags: int, stream_id: int, payload: bytes,
                   events: list[Event]) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            self.fail(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        start = 0
        stop = len(payload)
        if flags & PADDED:
            if not stop:
                self.fail(FRAME_SIZE_ERROR, "a padded frame without its padding length")
            start = 1
            stop -= payload[0]
        refused = False
        if flags & PRIORITY_FLAG:
            if stop - start < 5:
                self.fail(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            depends = ((payload[start] & 0x7F) << 24 | payload[start + 1] << 16
                       | payload[start + 2] << 8 | payload[start + 3])
            refused = depends == stream_id  # a stream depending on itself: a stream error
            start += 5
        if stop < start:
            self.fail(PROTOCOL_ERROR, "padding longer than the frame")
        fragment = payload[start:stop] if start or stop != len(payload) else payload
        if flags & END_HEADERS:
            self.header_block(stream_id, fragment, bool(flags & END_STREAM), refused, events)
            return
        self.check_block(0, len(fragment))
        self._block_stream = stream_id
        self._block_parts = [fragment]
        self._block_frames = 0
        self._block_size = len(fragment)
        self._block_end_stream = bool(flags & END_STREAM)
        self._block_refused = refused

    def on_continuation(self, flags: int, payload: bytes, events: list[Event]) -> None:
        self._block_frames += 1
        self._block_size += len(payload)
        self.check_block(self._block_frames, self._block_size)
        self._block_parts.append(payload)
        if flags & END_HEADERS:
            stream_id = self._block_stream
            block = b"".join(self._block_parts)
            self._block_stream = 0
            self._block_parts = []
            self.header_block(stream_id, block, self._block_end_stream, self._block_refused,
                              events)

    def check_block(self, continuations: int, size: int) -> None:
        """A header block in progress is refused as soon as it passes a bound, before it is
        buffered whole or decoded."""
        if self.max_continuation_frames and continuations > self.max_continuation_frames:
            self.fail(ENHANCE_YOUR_CALM,
                      f"more than {self.max_continuation_frames} CONTINUATION frames")
        if self.max_header_list_size and size > self.max_header_list_size:
            self.fail(ENHANCE_YOUR_CALM,
                      f"a header block of more than {self.max_header_list_size} bytes")

    def header_block(self, stream_id: int, block: bytes, end_stream: bool, refused: bool,
                     events: list[Event]) -> None:
        """A whole header block: decoded whatever happens to its stream (HPACK's table is
        the connection's), then a request, trailers, or a refusal."""
        try:
            headers = self.decoder.decode(block)
        except HeaderListTooLarge:
            self.fail(ENHANCE_YOUR_CALM, "a header list larger than we advertise")
        except HpackError as exc:
            self.fail(COMPRESSION_ERROR, f"HPACK: {exc}")
        stream = self.streams.get(stream_id)
        if stream is not None:
            self.trailers(stream_id, stream, headers, end_stream, events)
            return
        if stream_id <= self.highest_inbound_stream_id:
            if stream_id in self._reset_by_us:
                return  # trailers the client sent before it saw our RST_STREAM (RFC 9113 5.1)
            self.fail(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        self.highest_inbound_stream_id = stream_id
        if len(self.streams) >= self.max_concurrent_streams:
            self.fail(PROTOCOL_ERROR, f"more than {self.max_concurrent_streams} streams open")
        expected = self.check_request(headers)
        if refused or expected == _MALFORMED:
            self.queue_reset(stream_id, PROTOCOL_ERROR)  # malformed: a stream error
            return
        window = self.stream_window
        if not self.settings_acked and window < DEFAULT_WINDOW:
            window = DEFAULT_WINDOW  # the client may not have our SETTINGS yet
        if end_stream and expected > 0:
            self.queue_reset(stream_id, PROTOCOL_ERROR)  # a Content-Length and no body
            return
        self.streams[stream_id] = _Stream(window, self.peer_initial_window, expected,
                                          not end_stream)
        events.append(RequestReceived(stream_id, headers, end_stream))

    def trailers(self, stream_id: int, stream: _Stream, headers: list[tuple[bytes, bytes]],
                 end_stream: bool, events: list[Event]) -> None:
        if not stream.remote_open:
            self.stream_error(stream_id, STREAM_CLOSED, events)
        elif not end_stream or not _trailers_valid(headers):
            self.stream_error(stream_id, PROTOCOL_ERROR, events)
        elif stream.expected >= 0 and stream.received != stream.expected:
            self.stream_error(stream_id, PROTOCOL_ERROR, events)
        else:
            self.end_remote(stream_id, stream)
            events.append(TrailersReceived(stream_id, headers))

    def check_request(self, headers: list[tuple[bytes, bytes]]) -> int:
        """The request's Content-Length (-1: none), or _MALFORMED (RFC 9113 8.1.1, 8.2, 8.3;
        RFC 8441 4)."""
        method = scheme = path = authority = protocol = host = b""
        seen = 0  # the pseudo-headers met, one bit each
        regular = False
        length = -1
        for name, value in headers:
            if value and (value[0] == 32 or value[0] == 9 or value[-1] == 32
                          or value[-1] == 9):
                return _MALFORMED
            if 0 in value or 10 in value or 13 in value:
                return _MALFORMED
            if name and name[0] == 58:  # b":"
                bit = _PSEUDO_BITS.get(name, 0)
                if regular or not bit or seen & bit:
                    return _MALFORMED
                seen |= bit
                if bit == _METHOD:
                    method = value
                elif bit == _PATH:
                    path = value
                elif bit == _SCHEME:
                    scheme = value
                elif bit == _AUTHORITY:
                    authority = value
                else:
                    protocol = value
                continue
            regular = True
            if name not in _GOOD_NAMES:
                if not name or name.translate(None, _TOKEN_LOWER):
                    return _MALFORMED
                if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
                    _GOOD_NAMES.add(name)
            if name in _CONNECTION_SPECIFIC:
                return _MALFORMED
            if name == b"content-length":
                if not value.isdigit() or len(value) > 18:
                    return _MALFORMED
                size = int(value)
                if length >= 0 and size != length:
                    return _MALFORMED
                length = size
            elif name == b"te":
                if value != b"trailers":
                    return _MALFORMED
            elif name == b"host":
                host = value
        if not method:
            return _MALFORMED
        if method == b"CONNECT" and not seen & _PROTOCOL:
            if seen & (_SCHEME | _PATH) or not authority:
                return _MALFORMED
        elif seen & _PROTOCOL:
            if method != b"CONNECT" or not self.connect_protocol or not protocol \
                    or not scheme or not path or not authority:
                return _MALFORMED
        elif not scheme or not path:
            return _MALFORMED
        if host and authority and host != authority:
            return _MALFORMED
        return length

    def on_data(self, flags: int, stream_id: int, payload: bytes,
                events: list[Event]) -> None:
        if stream_id == 0:
            self.fail(PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        data = payload
        if flags & PADDED:
            if not flow:
                self.fail(FRAME_SIZE_ERROR, "a padded frame without its padding length")
            if payload[0] >= flow:
                self.fail(PROTOCOL_ERROR, "padding longer than the frame")
            data = payload[1:flow - payload[0]]
        if flow > self.in_window:
            self.fail(FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        self.in_window -= flow
        stream = self.streams.get(stream_id)
        if stream is None or not stream.remote_open:
            if stream_id > self.highest_inbound_stream_id:
                self.fail(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            self.return_credit(flow)  # nobody will read it
            if stream is not None:  # after its END_STREAM
                self.stream_error(stream_id, STREAM_CLOSED, events)
            return  # else closed, reset by one side: ignored (RFC 9113 5.1)
        if flow > stream.in_window:
            self.fail(FLOW_CONTROL_ERROR, "DATA beyond the stream's window")
        stream.in_window -= flow
        stream.received += len(data)
        ended = bool(flags & END_STREAM)
        expected = stream.expected
        if expected >= 0 and (stream.received > expected
                              or (ended and stream.received != expected)):
            self.return_credit(flow)
            self.stream_error(stream_id, PROTOCOL_ERROR, events)
            return
        if ended:
            self.end_remote(stream_id, stream)
        events.append(DataReceived(stream_id, data, flow, ended))

    def on_window_update(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            self.fail(FRAME_SIZE_ERROR, "WINDOW_UPDATE of a wrong length")
        delta = ((payload[0] & 0x7F) << 24 | payload[1] << 16 | payload[2] << 8
                 | payload[3])
        if stream_id == 0:
            if not delta:
                self.fail(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self.out_window += delta
            if self.out_window > MAX_WINDOW:
                self.fail(FLOW_CONTROL_ERROR, "the connection's window overflowed")
            events.append(WindowUpdated(0, delta))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.highest_inbound_stream_id:
                self.fail(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return  # closed: allowed, ignored
        if not delta:
            self.stream_error(stream_id, PROTOCOL_ERROR, events)
            return
        stream.out_window += delta
        if stream.out_window > MAX_WINDOW:
            self.stream_error(stream_id, FLOW_CONTROL_ERROR, events)
            return
        events.append(WindowUpdated(stream_id, delta))

    def on_settings(self, flags: int, stream_id: int, payload: bytes,
                    events: list[Event]) -> None:
        if stream_id:
            self.fail(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                self.fail(FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
            self.settings_acked = True
            return
        if len(payload) % 6:
            self.fail(FRAME_SIZE_ERROR, "SETTINGS of a wrong length")
        changed: dict[int, int] = {}
        for at in range(0, len(payload), 6):
            code = payload[at] << 8 | payload[at + 1]
            value = (payload[at + 2] << 24 | payload[at + 3] << 16 | payload[at + 4] << 8
                     | payload[at + 5])
            if code == HEADER_TABLE_SIZE:
                self.encoder.set_max_table_size(value)
            elif code == ENABLE_PUSH or code == ENABLE_CONNECT_PROTOCOL:
                if value > 1:
                    self.fail(PROTOCOL_ERROR, f"setting {code} = {value}")
            elif code == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self.fail(FLOW_CONTROL_ERROR, f"an initial window of {value}")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.out_window += delta
                    if stream.out_window > MAX_WINDOW:
                        self.fail(FLOW_CONTROL_ERROR, "a stream's window overflowed")
            elif code == MAX_FRAME_SIZE:
                if value < FRAME_SIZE or value > MAX_FRAME_SIZE_LIMIT:
                    self.fail(PROTOCOL_ERROR, f"a maximum frame size of {value}")
                self.max_outbound_frame_size = value
            changed[code] = value
        self.out.append(frame_head(0, SETTINGS, ACK, 0))
        events.append(RemoteSettingsChanged(changed))

    def on_rst_stream(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            self.fail(FRAME_SIZE_ERROR, "RST_STREAM of a wrong length")
        if stream_id == 0:
            self.fail(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if self.streams.pop(stream_id, None) is None:
            if stream_id > self.highest_inbound_stream_id:
                self.fail(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
            return
        code = payload[0] << 24 | payload[1] << 16 | payload[2] << 8 | payload[3]
        events.append(StreamReset(stream_id, code, True))

    def on_ping(self, flags: int, stream_id: int, payload: bytes,
                events: list[Event]) -> None:
        if len(payload) != 8:
            self.fail(FRAME_SIZE_ERROR, "PING of a wrong length")
        if stream_id:
            self.fail(PROTOCOL_ERROR, "PING on a stream")
        if not flags & ACK:
            self.out.append(frame_head(8, PING, ACK, 0) + payload)
            events.append(PingReceived(payload))

    def on_priority(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        """Priorities are not used (RFC 9113 deprecates them); the frame is checked. (On an
        idle stream, which may not be reset, an error is the connection's.)"""
        if stream_id == 0:
            self.fail(PROTOCOL_ERROR, "PRIORITY on stream 0")
        idle = stream_id > self.highest_inbound_stream_id
        if len(payload) != 5:
            if idle:
                self.fail(FRAME_SIZE_ERROR, "PRIORITY of a wrong length")
            self.stream_error(stream_id, FRAME_SIZE_ERROR, events)
            return
        depends = (payload[0] & 0x7F) << 24 | payload[1] << 16 | payload[2] << 8 | payload[3]
        if depends == stream_id:
            if idle:
                self.fail(PROTOCOL_ERROR, "a stream depending on itself")
            self.stream_error(stream_id, PROTOCOL_ERROR, events)

    def on_goaway(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            self.fail(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            self.fail(FRAME_SIZE_ERROR, "GOAWAY too short")
        last = (payload[0] & 0x7F) << 24 | payload[1] << 16 | payload[2] << 8 | payload[3]
        code = payload[4] << 24 | payload[5] << 16 | payload[6] << 8 | payload[7]
        self.closed = True
        events.append(ConnectionTerminated(code, last, payload[8:]))

    # --- decisions shared by the frames ---------------------------------------------------

    def fail(self, code: int, reason: str) -> NoReturn:
        """A connection error: GOAWAY with `code`, and nothing more is read."""
        if not self.closed:
            self.queue_goaway(self.highest_inbound_stream_id, code)
            self.closed = True
        raise Http2ConnectionError(code, reason)

    def stream_error(self, stream_id: int, code: int, events: list[Event]) -> None:
        """RST_STREAM; the connection hears of it if it had the stream's request."""
        self.queue_reset(stream_id, code)
        if self.streams.pop(stream_id, None) is not None:
            events.append(StreamReset(stream_id, code, False))

    def end_remote(self, stream_id: int, stream: _Stream) -> None:
        stream.remote_open = False
        if not stream.local_open:
            del self.streams[stream_id]

    def return_credit(self, size: int) -> None:
        """Give the connection's window back, in one WINDOW_UPDATE once half of it is owed."""
        self.in_owed += size
        if self.in_owed >= self.connection_window >> 1:
            self.out.append(frame_head(4, WINDOW_UPDATE, 0, 0) + struct.pack(">I", self.in_owed))
            self.in_window += self.in_owed
            self.in_owed = 0

    # --- sending --------------------------------------------------------------------------

    def sendable(self, stream_id: int) -> _Stream:
        stream = self.streams.get(stream_id)
        if stream is None or not stream.local_open or self.closed:
            raise Http2StreamClosed(f"stream {stream_id} is closed")
        return stream

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                     end_stream: bool = False) -> None:
        stream = self.sendable(stream_id)
        block = self.encoder.encode(headers)
        flags = END_STREAM if end_stream else 0
        size = self.max_outbound_frame_size
        if len(block) <= size:
            self.out.append(frame_head(len(block), HEADERS, flags | END_HEADERS, stream_id))
            self.out.append(block)
        else:
            self.out.append(frame_head(size, HEADERS, flags, stream_id))
            self.out.append(block[:size])
            for at in range(size, len(block), size):
                piece = block[at:at + size]
                last = END_HEADERS if at + size >= len(block) else 0
                self.out.append(frame_head(len(piece), CONTINUATION, last, stream_id))
                self.out.append(piece)
        if end_stream:
            self.end_local(stream_id, stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """One DATA frame: `data` must fit the windows and the frame size (the caller
        splits; local_flow_control_window and max_outbound_frame_size say how)."""
        stream = self.sendable(stream_id)
        size = len(data)
        if size > self.max_outbound_frame_size or size > self.out_window \
                or size > stream.out_window:
            raise ValueError("DATA larger than the windows or the frame size allow")
        self.out_window -= size
        stream.out_window -= size
        self.out.append(frame_head(size, DATA, END_STREAM if end_stream else 0, stream_id))
        if size:
            self.out.append(data)
        if end_stream:
            self.end_local(stream_id, stream)

    def end_local(self, stream_id: int, stream: _Stream) -> None:
        stream.local_open = False
        if not stream.remote_open:
            del self.streams[stream_id]

    def local_flow_control_window(self, stream_id: int) -> int:
        """How much DATA the stream may send now."""
        stream = self.sendable(stream_id)
        return min(self.out_window, stream.out_window)

    def acknowledge_received_data(self, size: int, stream_id: int) -> None:
        """The app has read `size` flow-controlled bytes of the stream: the client may send
        as much again."""
        if self.closed or size <= 0:
            return
        self.return_credit(size)
        stream = self.streams.get(stream_id)
        if stream is not None and stream.remote_open:
            stream.in_owed += size
            if stream.in_owed >= max(self.stream_window >> 1, 1):
                self.out.append(frame_head(4, WINDOW_UPDATE, 0, stream_id)
                                + struct.pack(">I", stream.in_owed))
                stream.in_window += stream.in_owed
                stream.in_owed = 0

    def reset_stream(self, stream_id: int, code: int) -> None:
        """RST_STREAM on an open stream; Http2StreamClosed if it has ended."""
        if self.streams.pop(stream_id, None) is None or self.closed:
            raise Http2StreamClosed(f"stream {stream_id} is closed")
        self.queue_reset(stream_id, code)

    def queue_reset(self, stream_id: int, code: int) -> None:
        self.out.append(frame_head(4, RST_STREAM, 0, stream_id) + struct.pack(">I", code))
        reset = self._reset_by_us
        reset[stream_id] = None
        if len(reset) > _RESET_MEMORY:
            del reset[next(iter(reset))]  # the oldest

    def send_goaway(self, last_stream_id: int, code: int = NO_ERROR) -> None:
        """A GOAWAY that lets the streams up to `last_stream_id` finish (the drain)."""
        if not self.closed:
            self.queue_goaway(last_stream_id, code)

    def close_connection(self, code: int = NO_ERROR, last_stream_id: int = -1) -> None:
        """The final GOAWAY: nothing more is sent or read."""
        if not self.closed:
            last = self.highest_inbound_stream_id if last_stream_id < 0 else last_stream_id
            self.queue_goaway(last, code)
            self.closed = True

    def queue_goaway(self, last_stream_id: int, code: int) -> None:
        self.out.append(frame_head(8, GOAWAY, 0, 0) + struct.pack(">II", last_stream_id, code))

    def data_to_send(self) -> bytes:
        out = self.out
        if not out:
            return b""
        self.out = []
        return out[0] if len(out) == 1 else b"".join(out)


def _trailers_valid(headers: list[tuple[bytes, bytes]]) -> bool:
    """Trailers: no pseudo-headers, lowercase token names, clean values (RFC 9113 8.1)."""
    for name, value in headers:
        if not name or name.translate(None, _TOKEN_LOWER) or name in _CONNECTION_SPECIFIC:
            return False
        if 0 in value or 10 in value or 13 in value:
            return False
    return True
