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
"""

from __future__ import annotations

from dataclasses import dataclass


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
