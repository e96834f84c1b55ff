"""A Snapshot as text for scrapers: Prometheus' text format 0.0.4, OpenMetrics 1.0 (when the
scraper's Accept asks for it), and the /status JSON.

Names: OpenTelemetry's HTTP server conventions where they have one
(http_server_request_duration_seconds, with OTel's bucket boundaries, and
http_server_active_requests; their attributes http.request.method and the response's status
class as labels), duckprefork_* for the server's own facts. Every per-worker series is labelled
with `worker`, the slot number (1..N), never a pid: a slot's series lives across restarts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from . import layout
from .counters import BUCKETS, METHODS, REFUSALS, STATUS_CLASSES
from .gather import Snapshot

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass
class Family:
    """One metric family: its samples are (suffix, labels as written, value). Labels are
    written once per series here, not per scrape line: a scrape of 64 workers is some 2,000
    lines, and the master writes it in its loop."""

    name: str
    kind: str  # counter, gauge, histogram
    help: str
    samples: list[tuple[str, str, float]] = field(default_factory=list)

    def add(self, labels: str, value: float, suffix: str = "") -> None:
        self.samples.append((suffix, labels, value))


def labels(**values: str) -> str:
    """name="value",... for values that may need escaping (listener names, the build)."""
    return ",".join(f'{name}="{_escape(value)}"' for name, value in values.items())


# Label texts that do not depend on the snapshot, made once.
_LE = tuple(f',le="{_bound}"' for _bound in (*(repr(b) for b in BUCKETS), "+Inf"))
_METHOD_CLASS = tuple(
    f',http_request_method="{method}",http_response_status_class="{status_class}"'
    for method in METHODS for status_class in STATUS_CLASSES)
_REASONS = tuple(f',reason="{reason}"' for reason in REFUSALS)


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept.lower()


def families(snapshot: Snapshot) -> list[Family]:
    """Every family of the snapshot, in the order they are written."""
    duration = Family("http_server_request_duration_seconds", "histogram",
                      "Duration of HTTP server requests (head received to response sent).")
    active = Family("http_server_active_requests", "gauge",
                    "Number of active HTTP server requests.")
    requests = Family("duckprefork_http_requests", "counter",
                      "HTTP requests answered, by method and status class.")
    body_in = Family("duckprefork_http_request_body_bytes", "counter",
                     "Request body bytes received.")
    body_out = Family("duckprefork_http_response_body_bytes", "counter",
                      "Response body bytes sent.")
    refused = Family("duckprefork_refused_requests", "counter",
                     "Requests the server answered itself (bad head, limit, busy, timeout).")
    connections = Family("duckprefork_connections", "counter", "Connections taken.")
    open_connections = Family("duckprefork_open_connections", "gauge",
                              "Open HTTP connections.")
    websockets = Family("duckprefork_open_websockets", "gauge", "Open WebSocket sessions.")
    lag = Family("duckprefork_event_loop_lag_seconds", "gauge",
                 "Worst event-loop lag of the last 10 seconds (late once-a-second tick).")
    heartbeat = Family("duckprefork_heartbeat_age_seconds", "gauge",
                       "Seconds since the worker's last heartbeat reached the master.")
    memory = Family("duckprefork_worker_memory_bytes", "gauge",
                    "Worker memory: uss (unique to the process) and rss.")
    exits = Family("duckprefork_worker_exits", "counter",
                   "Workers gone, per slot (any reason).")
    for slot in snapshot.slots:
        worker = f'worker="{slot.slot}"'
        counters = slot.counters
        cumulative = 0
        for index, le in enumerate(_LE):
            cumulative += counters[layout.DURATIONS + index]
            duration.add(worker + le, cumulative, "_bucket")
        duration.add(worker, counters[layout.DURATION_SUM_US] / 1e6, "_sum")
        duration.add(worker, cumulative, "_count")
        active.add(worker, slot.in_flight)
        for index, method_class in enumerate(_METHOD_CLASS):
            value = counters[layout.REQUESTS + index]
            if value:  # 40 series a worker otherwise; a method never seen is absent
                requests.add(worker + method_class, value, "_total")
        body_in.add(worker, counters[layout.BODY_IN], "_total")
        body_out.add(worker, counters[layout.BODY_OUT], "_total")
        for index, reason in enumerate(_REASONS):
            refused.add(worker + reason, counters[layout.REFUSED + index], "_total")
        connections.add(worker, counters[layout.CONNECTIONS], "_total")
        open_connections.add(worker, slot.connections)
        websockets.add(worker, slot.websockets)
        lag.add(worker, slot.loop_lag)
        if slot.heartbeat_age is not None:
            heartbeat.add(worker, round(slot.heartbeat_age, 3))
        memory.add(worker + ',kind="uss"', slot.memory_uss)
        memory.add(worker + ',kind="rss"', slot.memory_rss)
        exits.add(worker, slot.exits, "_total")
    restarts = Family("duckprefork_worker_restarts", "counter",
                      "Workers replaced or restarted, by why they went.")
    for reason, count in snapshot.exits.items():
        restarts.add(f'reason="{reason}"', count, "_total")
    workers = Family("duckprefork_workers", "gauge", "Worker processes by state.")
    states: dict[str, int] = {"booting": 0, "ready": 0, "retiring": 0, "hung": 0}
    for row in snapshot.workers:
        states[row.state] = states.get(row.state, 0) + 1
    for state, count in states.items():
        workers.add(f'state="{state}"', count)
    wanted = Family("duckprefork_workers_wanted", "gauge", "Worker slots configured.")
    wanted.add("", snapshot.workers_wanted)
    queue = Family("duckprefork_listen_queue_length", "gauge",
                   "Connections waiting in a listener's accept queue.")
    limit = Family("duckprefork_listen_queue_limit", "gauge",
                   "A listener's accept queue limit (its backlog).")
    for listener in snapshot.listeners:
        queue.add(labels(listener=listener.name), listener.queue)
        limit.add(labels(listener=listener.name), listener.limit)
    uptime = Family("duckprefork_master_uptime_seconds", "gauge",
                    "Seconds since the master started (an upgrade keeps it).")
    uptime.add("", round(snapshot.uptime, 3))
    info = Family("duckprefork_build", "gauge", "The running version and build; always 1.")
    info.add(labels(**dict(sorted(snapshot.labels.items()))), 1)
    return [duration, active, requests, body_in, body_out, refused, connections,
            open_connections, websockets, lag, heartbeat, memory, exits, restarts, workers,
            wanted, queue, limit, uptime, info]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value == math.inf:
        return "+Inf"
    return repr(float(value))


def _lines(families: Iterable[Family]) -> Iterable[str]:
    for family in families:
        yield f"# HELP {family.name} {family.help}"
        yield f"# TYPE {family.name} {family.kind}"
        name = family.name
        for suffix, text, value in family.samples:
            number = str(value) if type(value) is int else _value(value)
            yield f"{name}{suffix}{{{text}}} {number}" if text else f"{name}{suffix} {number}"


def render(snapshot: Snapshot, openmetrics: bool = False) -> bytes:
    """The /metrics body for the snapshot. In OpenMetrics a counter family is named without
    _total (its samples carry it) and the exposition ends with # EOF; in Prometheus' text
    format the family is named as its samples."""
    found = families(snapshot)
    if not openmetrics:
        for family in found:
            if family.kind == "counter":
                family.name += "_total"
                family.samples = [("", text, value) for _, text, value in family.samples]
    text = "\n".join(_lines(found)) + "\n"
    if openmetrics:
        text += "# EOF\n"
    return text.encode("utf-8")


def status_document(snapshot: Snapshot) -> dict:
    """The /status JSON: the master, a row per running worker, one per slot, the listeners."""
    requests = snapshot.total(layout.REQUESTS, layout.N_REQUESTS)
    server_errors = sum(slot.counters[layout.REQUESTS + m * len(STATUS_CLASSES) + 4]
                        for slot in snapshot.slots for m in range(len(METHODS)))
    return {
        "pid": snapshot.pid,
        "uptime": round(snapshot.uptime, 3),
        "labels": snapshot.labels,
        "workers_wanted": snapshot.workers_wanted,
        "workers_ready": snapshot.workers_ready,
        "totals": {
            "requests": requests,
            "requests_per_second": round(snapshot.requests_per_second, 2),
            "server_errors": server_errors,
            "in_flight": sum(slot.in_flight for slot in snapshot.slots),
            "connections": sum(slot.connections for slot in snapshot.slots),
            "websockets": sum(slot.websockets for slot in snapshot.slots),
            "refused": snapshot.total(layout.REFUSED, len(REFUSALS)),
            "memory_uss": sum(slot.memory_uss for slot in snapshot.slots),
            "memory_rss": sum(slot.memory_rss for slot in snapshot.slots),
            "restarts": sum(snapshot.exits.values()),
            "accept_queue": sum(listener.queue for listener in snapshot.listeners),
        },
        "restarts": snapshot.exits,
        "workers": [{**asdict(row), "age": round(row.age, 3),
                     "heartbeat_age": round(row.heartbeat_age, 3)}
                    for row in snapshot.workers],
        "slots": [{"slot": slot.slot, "requests": slot.requests,
                   "requests_per_second": round(slot.requests_per_second, 2),
                   "in_flight": slot.in_flight, "exits": slot.exits,
                   "last_exit": slot.last_exit} for slot in snapshot.slots],
        "listeners": [asdict(listener) for listener in snapshot.listeners],
    }


def render_status(snapshot: Snapshot) -> bytes:
    return json.dumps(status_document(snapshot), separators=(",", ":")).encode("utf-8") + b"\n"
