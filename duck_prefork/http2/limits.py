"""HTTP/2's limits as data and decisions, with no socket: what a connection may ask of a worker.

Each limit is an option (config.py, --http2-*) with a safe default, gathered once per worker in
Http2Limits. The decisions the connection (connection.py) takes on them live here, testable
alone:

  RateBudget         a token bucket: so many events a second, a burst of as many. Client
                     resets (rapid reset, CVE-2023-44487: a stream opened and reset at once
                     costs the server a task and the client nothing) and the control frames
                     that make us answer (PING, SETTINGS: a flood of them fills our outbound
                     buffer) each spend from one; an empty budget ends the connection with
                     GOAWAY ENHANCE_YOUR_CALM.
  HeaderBlockBuffer  h2's frame buffer, counting a header block's CONTINUATION frames and its
                     compressed bytes as they arrive, before HPACK decodes anything: an
                     endless CONTINUATION (the 2024 floods) or an oversized block is refused
                     as soon as it passes the bound, not after it has been buffered in full.
                     (hpack then bounds the decoded size, which is what stops an HPACK bomb:
                     a small block that references a large table entry over and over.)
"""

from __future__ import annotations

from dataclasses import dataclass

from h2.exceptions import DenialOfServiceError
from h2.frame_buffer import FrameBuffer
from hyperframe.frame import ContinuationFrame, Frame


@dataclass(frozen=True)
class Http2Limits:
    """A worker's HTTP/2 limits (the --http2-* options; 0 means no limit where allowed)."""

    max_concurrent_streams: int = 100  # SETTINGS_MAX_CONCURRENT_STREAMS, and tasks per connection
    max_header_list_size: int = 64 * 1024  # SETTINGS_MAX_HEADER_LIST_SIZE, compressed and decoded
    max_continuation_frames: int = 16  # CONTINUATION frames in one header block
    max_resets: int = 200  # client resets (and streams we refuse) a second, as a burst too
    max_control_frames: int = 100  # PING and SETTINGS frames a second, as a burst too
    max_streams: int = 10000  # streams per connection, then a graceful GOAWAY (0: no limit)
    # The client's credit for request bodies, per stream; reopened as the app reads.
    stream_window: int = 65535
    # The connection-level window (reopened as bodies arrive: the streams' windows bound memory).
    connection_window: int = 16 * 1024 * 1024


class RateBudget:
    """So many events a second (`rate`), with a burst of as many: spend() returns False once
    the bucket is empty. Refilled continuously from the time given, so no timer is needed."""

    __slots__ = ("rate", "tokens", "last")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.last = now

    def spend(self, now: float, cost: float = 1.0) -> bool:
        if not self.rate:
            return True  # no limit
        tokens = min(self.rate, self.tokens + (now - self.last) * self.rate) - cost
        self.last = now
        self.tokens = tokens
        return tokens >= 0


class HeaderBlockBuffer(FrameBuffer):
    """h2's FrameBuffer with our bounds on a header block (HEADERS + CONTINUATION frames):
    at most `max_frames` CONTINUATION frames and `max_size` compressed bytes, checked as each
    frame arrives. Past either: DenialOfServiceError, which h2 answers with GOAWAY
    ENHANCE_YOUR_CALM."""

    def __init__(self, max_frames: int, max_size: int) -> None:
        super().__init__(server=True)
        self.max_frames = max_frames
        self.max_size = max_size
        self.block_size = 0  # compressed bytes of the header block in progress

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        if self._headers_buffer:  # a block in progress: f must be its next CONTINUATION
            if isinstance(f, ContinuationFrame):
                self.check(len(self._headers_buffer), self.block_size + len(f.data))
        elif f is not None and f.type in (0x1, 0x5) and "END_HEADERS" not in f.flags:
            self.block_size = 0  # a HEADERS (or PUSH_PROMISE) frame starting a block
            self.check(0, len(f.data))  # type: ignore[attr-defined]
        return super()._update_header_buffer(f)

    def check(self, continuations: int, size: int) -> None:
        """Refuse the block in progress if it has passed a bound (sans-IO: the decision)."""
        if self.max_frames and continuations > self.max_frames:
            raise DenialOfServiceError(
                f"more than {self.max_frames} CONTINUATION frames in a header block")
        if self.max_size and size > self.max_size:
            raise DenialOfServiceError(
                f"a header block of more than {self.max_size} bytes (compressed)")
        self.block_size = size
