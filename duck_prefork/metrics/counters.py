"""A worker's own counters, kept on the hot path: additions to native attributes, nothing else
per request (no lock, system call, file, dict or list item per request). The worker copies them
into its shared-memory cell once a second (layout.CellWriter, after settle()); the master reads
the cells. Compiled with the hot path (build.COMPILED): the connection calls count() directly.

The order of every table here is the order of the words in a cell (layout.py).
"""

from __future__ import annotations

from bisect import bisect_left
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
N_BUCKETS: Final = 15  # len(BUCKETS) + 1 (+Inf); a literal: compiled code reads no tuple
# Requests the server refused on its own: why, by the status it answered (or the timeout).
REFUSALS: Final = ("bad_request", "too_large", "busy", "header_timeout", "send_timeout")
_REFUSAL_BY_STATUS: Final[dict[int, int]] = {
    400: 0, 501: 0, 505: 0,  # the parser's verdict on the head
    413: 1, 414: 1, 431: 1,  # a limit (--limit-request-*)
    503: 2,  # --limit-concurrency
    408: 3,  # no complete head within --header-timeout
}
SEND_TIMEOUT: Final = 4


# BUCKETS as compiled code reads it: mypyc leaves a Final tuple of float literals unset for
# compiled readers, so the bounds are written out again (a unit test checks they agree).
_BOUNDS: Final[list[float]] = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                               5.0, 7.5, 10.0]
_INF: Final = float("inf")


class RequestCounts:
    """Counts since the worker started (the master adds up the workers of a slot).

    Per response, count() adds to native ints only. A worker's responses come in runs of the
    same method and status, and of durations in one histogram bucket: the current runs are
    counted in native attributes (a pointer compare and a float compare tell whether a response
    continues them), and settle() adds them to the tables, `requests` and `durations`, when a
    run ends and before the tables are read (publish, once a second). A list item is a boxed
    int: adding to one allocates an int object and frees the old one (measured: counting into
    the lists cost the worker about 2.5% of a hello-world GET's instructions, the runs 0.8%
    with the start's clock read)."""

    def __init__(self) -> None:
        self.requests: list[int] = [0] * (len(METHODS) * len(STATUS_CLASSES))
        self.durations: list[int] = [0] * N_BUCKETS  # the last: over 10 s
        self.duration_sum = 0.0  # seconds
        self.body_in = 0  # request body bytes
        self.body_out = 0  # response body bytes
        self.refused: list[int] = [0] * len(REFUSALS)
        self.connections = 0  # connections taken (after their stages: TLS, PROXY)
        # The run of responses with this method (the stream's str: the common methods are one
        # object each, so `is` compares them) and status, not yet in `requests`.
        self.run_method = ""
        self.run_status = 0
        self.run_responses = 0
        # The run of durations in bucket run_bucket, (run_low, run_high], not yet in `durations`.
        self.run_bucket = 0
        self.run_low = 0.0
        self.run_high = 0.0  # (an empty interval: the first duration starts a run)
        self.run_durations = 0

    def count(self, method: str, status: int, duration: float, body_in: int,
              body_out: int) -> None:
        """One response sent in full."""
        if method is not self.run_method or status != self.run_status:
            self.settle_responses()
            self.run_method = method
            self.run_status = status
        self.run_responses += 1
        if not self.run_low < duration <= self.run_high:
            self.settle_durations()
            bucket = bisect_left(_BOUNDS, duration)  # the first bound >= duration: le inclusive
            self.run_bucket = bucket
            self.run_low = _BOUNDS[bucket - 1] if bucket > 0 else -_INF
            self.run_high = _BOUNDS[bucket] if bucket < N_BUCKETS - 1 else _INF
        self.run_durations += 1
        self.duration_sum += duration
        self.body_in += body_in
        self.body_out += body_out

    def settle(self) -> None:
        """Add the current runs to the tables (before they are read)."""
        self.settle_responses()
        self.settle_durations()

    def settle_responses(self) -> None:
        responses = self.run_responses
        if responses:
            group = self.run_status // 100 - 1
            if group < 0 or group > 4:
                group = 4
            index = _METHOD_INDEX.get(self.run_method, _OTHER_METHOD) * 5 + group
            self.requests[index] += responses
            self.run_responses = 0

    def settle_durations(self) -> None:
        durations = self.run_durations
        if durations:
            self.durations[self.run_bucket] += durations
            self.run_durations = 0

    def refuse(self, status: int) -> None:
        """A request answered by the server itself with `status` (or 408 for a timeout)."""
        index = _REFUSAL_BY_STATUS.get(status, 0)
        count: int = self.refused[index]
        self.refused[index] = count + 1

    def send_timed_out(self) -> None:
        count: int = self.refused[SEND_TIMEOUT]
        self.refused[SEND_TIMEOUT] = count + 1
