"""A worker's own counters, kept on the hot path: additions to plain attributes and lists of
one object, nothing else per request (no lock, system call, file or dict per request). The
worker copies them into its shared-memory cell once a second (layout.CellWriter); the master
reads the cells. Compiled with the hot path (build.COMPILED): the connection calls count()
directly.

The order of every table here is the order of the words in a cell (layout.py).
"""

from __future__ import annotations

from typing import Final

# http.request.method as OpenTelemetry's HTTP conventions name it: the common methods, and
# _OTHER for the rest (a client may make methods up: the series must stay bounded).
METHODS: Final = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "_OTHER")
_METHOD_INDEX: Final[dict[str, int]] = {method: index for index, method in enumerate(METHODS)}
_OTHER_METHOD: Final = len(METHODS) - 1
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")
# OpenTelemetry's advice for http.server.request.duration (seconds); one more bucket, +Inf.
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                  10.0)
# Requests the server refused on its own: why, by the status it answered (or the timeout).
N_BUCKETS: Final = 15  # len(BUCKETS) + 1 (+Inf); a literal: compiled code reads no tuple
# The bucket of a duration of N whole milliseconds (rounded up), for N up to the last bound: one
# list read per request instead of a walk over the bounds (the event loop's clock, which times
# requests, counts in milliseconds anyway).
_LAST_MS: Final = 10_000


def _bucket_by_ms() -> list[int]:
    table = []
    bucket = 0
    bounds = [round(bound * 1000) for bound in (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
                                                 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)]
    for ms in range(_LAST_MS + 1):
        while bucket < len(bounds) and ms > bounds[bucket]:
            bucket += 1
        table.append(bucket)
    return table


_BUCKET_BY_MS: Final[list[int]] = _bucket_by_ms()  # (the bounds of BUCKETS, in ms)
REFUSALS: Final = ("bad_request", "too_large", "busy", "header_timeout", "send_timeout")
_REFUSAL_BY_STATUS: Final[dict[int, int]] = {
    400: 0, 501: 0, 505: 0,  # the parser's verdict on the head
    413: 1, 414: 1, 431: 1,  # a limit (--limit-request-*)
    503: 2,  # --limit-concurrency
    408: 3,  # no complete head within --header-timeout
}
SEND_TIMEOUT: Final = 4


class RequestCounts:
    """Counts since the worker started (the master adds up the workers of a slot)."""

    def __init__(self) -> None:
        self.requests: list[int] = [0] * (len(METHODS) * len(STATUS_CLASSES))
        self.durations: list[int] = [0] * N_BUCKETS  # the last: over 10 s
        self.duration_sum = 0.0  # seconds
        self.body_in = 0  # request body bytes
        self.body_out = 0  # response body bytes
        self.refused: list[int] = [0] * len(REFUSALS)
        self.connections = 0  # connections taken (after their stages: TLS, PROXY)

    def count(self, method: str, status: int, duration: float, body_in: int,
              body_out: int) -> None:
        """One response sent in full. (Each list item is read into a local and written back:
        the compiled build then adds native ints, where `+=` on the item is a generic call.)"""
        group = status // 100 - 1
        if group < 0 or group > 4:
            group = 4
        method_index = _METHOD_INDEX.get(method, _OTHER_METHOD)
        requests = self.requests
        index = method_index * 5 + group
        count: int = requests[index]
        requests[index] = count + 1
        ms = int(duration * 1000.0 + 0.999)  # whole milliseconds, rounded up (le is inclusive)
        bucket = _BUCKET_BY_MS[ms] if 0 <= ms <= _LAST_MS else N_BUCKETS - 1
        durations = self.durations
        count = durations[bucket]
        durations[bucket] = count + 1
        self.duration_sum += duration
        self.body_in += body_in
        self.body_out += body_out

    def refuse(self, status: int) -> None:
        """A request answered by the server itself with `status` (or 408 for a timeout)."""
        index = _REFUSAL_BY_STATUS.get(status, 0)
        count: int = self.refused[index]
        self.refused[index] = count + 1

    def send_timed_out(self) -> None:
        count: int = self.refused[SEND_TIMEOUT]
        self.refused[SEND_TIMEOUT] = count + 1
