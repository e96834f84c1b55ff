"""The metrics' sans-IO parts: the hot-path counters, the shared-memory layout and its
generation protocol, the master's folding and snapshots, the exposition (read back with
prometheus_client's parsers), the status table and the STATUS= line, the scrape request rules."""

from __future__ import annotations

import array
import json
import math
import socket

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from duck_prefork.metrics import counters, exposition, layout
from duck_prefork.metrics.counters import BUCKETS, RequestCounts
from duck_prefork.metrics.gather import Gatherer, ListenerFigures, WorkerFacts, listen_queue
from duck_prefork.metrics.layout import Area, CellWriter
from duck_prefork.metrics.server import authorized, needs_token, parse_request
from duck_prefork.metrics.status import render_table, summary_line


def make_area() -> Area:
    area = Area(bytearray(layout.SIZE))
    area.words[0], area.words[1] = layout.MAGIC, layout.VERSION
    return area


def samples(text: str) -> dict:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parse_prometheus(text) for s in family.samples}


# --- counters ---------------------------------------------------------------------------------

def test_count_places_each_response_in_its_method_class_and_bucket():
    counts = RequestCounts()
    counts.count("GET", 200, 0.005, 0, 10)  # on a bound: that bucket (le is inclusive)
    counts.count("GET", 404, 0.0051, 3, 5)
    counts.count("BREW", 503, 11.0, 0, 0)  # a made-up method: _OTHER; past 10 s: +Inf only
    counts.settle()
    assert counts.requests[0 * 5 + 1] == 1 and counts.requests[0 * 5 + 3] == 1
    assert counts.requests[7 * 5 + 4] == 1
    assert counts.durations[0] == 1 and counts.durations[1] == 1
    assert counts.durations[len(BUCKETS)] == 1
    assert counts.body_in == 3 and counts.body_out == 15
    assert counts.duration_sum == pytest.approx(11.0101)


def test_refusals_by_reason():
    counts = RequestCounts()
    for status in (400, 413, 414, 431, 503, 408, 505):
        counts.refuse(status)
    counts.send_timed_out()
    assert counts.refused == [2, 3, 1, 1, 1]


# --- the layout and its generation counter ----------------------------------------------------

def test_a_published_cell_reads_back():
    area = make_area()
    area.claim(3, slot=2)
    area.set_pid(3, 1234)
    counts = RequestCounts()
    counts.count("POST", 201, 0.02, 7, 9)
    CellWriter(area, 3).publish(counts, in_flight=4, connections=5, websockets=1,
                                loop_lag=0.25)
    data = area.read(3)
    assert data[layout.REQUESTS + 2 * 5 + 1] == 1
    assert (data[layout.IN_FLIGHT], data[layout.OPEN_CONNECTIONS],
            data[layout.OPEN_WEBSOCKETS]) == (4, 5, 1)
    assert data[layout.LOOP_LAG_US] == 250_000
    assert data[layout.BODY_IN] == 7 and data[layout.DURATION_SUM_US] == 20_000
    assert area.owner(3) == (1234, 2)
    assert area.words[layout.HEADER_WORDS + 3 * layout.CELL_WORDS] == 2  # generation: even


def test_a_torn_read_is_retried_and_a_dead_writer_does_not_hang_the_reader():
    area = make_area()
    base = layout.HEADER_WORDS
    area.words[base] = 5  # odd: a writer in the middle of a publish (then SIGKILLed)
    area.words[base + 4 + layout.BODY_IN] = 42
    assert area.read(0)[layout.BODY_IN] == 42  # taken as it is after READ_TRIES


def test_claim_zeroes_the_cell_of_a_previous_worker():
    area = make_area()
    area.claim(0, 1)
    data = array.array("Q", [7] * layout.DATA_WORDS)
    area.publish(0, data)
    area.claim(0, 1)
    assert area.read(0) == [0] * layout.DATA_WORDS


def test_layout_fits_and_created_area_is_shared_memory():
    area = Area.create()
    try:
        assert area.fd >= 0 and len(area.buffer) == layout.SIZE
        again = Area.adopt(area.fd)  # what USR2's new image does with the descriptor
        area.words[layout.HEADER_WORDS + 1] = 99
        assert again.owner(0)[0] == 99
        assert again.started == area.started > 0
    finally:
        area.close_fd()


# --- the master's gathering ----------------------------------------------------------------------

def publish(area: Area, cell: int, requests: int, in_flight: int = 0) -> None:
    counts = RequestCounts()
    for _ in range(requests):
        counts.count("GET", 200, 0.001, 0, 1)
    CellWriter(area, cell).publish(counts, in_flight, 0, 0, 0.0)


def snapshot(gatherer: Gatherer, workers: list[WorkerFacts], slots=(1, 2)):
    return gatherer.snapshot(workers, list(slots), [], now=100.0, pid=1)


def test_a_slot_adds_its_retired_workers_and_its_running_ones():
    gatherer = Gatherer(make_area())
    first = gatherer.claim(1)
    gatherer.started_worker(first, 101)
    publish(gatherer.area, first, 5, in_flight=2)
    facts = [WorkerFacts(1, 101, "ready", 90.0, 99.5)]
    assert snapshot(gatherer, facts).slots[0].requests == 5
    # A HUP: the new worker of slot 1 runs beside the retiring one; both add into slot 1.
    second = gatherer.claim(1)
    gatherer.started_worker(second, 102)
    publish(gatherer.area, second, 3)
    facts.append(WorkerFacts(1, 102, "booting", 99.0, 99.9))
    shot = snapshot(gatherer, facts)
    assert shot.slots[0].requests == 8 and shot.slots[0].in_flight == 2
    assert [row.pid for row in shot.workers] == [101, 102]
    # The old one goes: its counts fold into the slot's row, and nothing goes backwards.
    gatherer.exited(101, "reload")
    shot = snapshot(gatherer, facts[1:])
    assert shot.slots[0].requests == 8 and shot.slots[0].in_flight == 0
    assert shot.slots[0].exits == 1 and shot.slots[0].last_exit == "reload"
    assert shot.exits["reload"] == 1 and sum(shot.exits.values()) == 1
    assert shot.slots[1].requests == 0  # a wanted slot without a worker still has its series
    assert first not in gatherer.claimed


def test_a_stop_folds_without_counting_an_exit_and_unknown_pids_are_ignored():
    gatherer = Gatherer(make_area())
    cell = gatherer.claim(2)
    gatherer.started_worker(cell, 7)
    publish(gatherer.area, cell, 4)
    gatherer.exited(7, None)
    gatherer.exited(8, "signal")  # not a worker with a cell
    shot = snapshot(gatherer, [])
    assert shot.slots[1].requests == 4 and sum(shot.exits.values()) == 0


def test_after_usr2_the_adopted_workers_keep_their_cells_and_the_others_are_folded():
    area = make_area()
    old = Gatherer(area)
    for pid, slot in ((11, 1), (12, 2)):
        cell = old.claim(slot)
        old.started_worker(cell, pid)
        publish(area, cell, pid)
    new = Gatherer(area)  # the new image, same area
    new.adopt([11])  # 12 died across the exec
    assert set(new.cells) == {11}
    shot = snapshot(new, [WorkerFacts(1, 11, "ready", 0.0, 99.0)])
    assert [slot.requests for slot in shot.slots] == [11, 12]
    assert new.claim(2) not in new.cells.values()


def test_no_cell_for_a_slot_beyond_the_area():
    gatherer = Gatherer(make_area())
    assert gatherer.claim(layout.SLOTS + 1) is None
    gatherer.started_worker(None, 5)
    gatherer.exited(5, "signal")
    assert not gatherer.cells


def test_requests_per_second_over_the_sample_window():
    gatherer = Gatherer(make_area())
    cell = gatherer.claim(1)
    gatherer.started_worker(cell, 1)
    facts = [WorkerFacts(1, 1, "ready", 0.0, 0.0)]
    gatherer.snapshot(facts, [1], [], now=10.0, pid=1)
    publish(gatherer.area, cell, 30)
    shot = gatherer.snapshot(facts, [1], [], now=12.0, pid=1)
    assert shot.requests_per_second == pytest.approx(15.0)


def test_listen_queue_of_a_listening_socket():
    server = socket.create_server(("127.0.0.1", 0), backlog=7)
    clients = [socket.create_connection(server.getsockname()) for _ in range(3)]
    try:
        queue, limit = listen_queue(server)
        assert queue == 3 and limit == 7
    finally:
        for client in clients:
            client.close()
        server.close()
    unix = socket.socket(socket.AF_UNIX)
    assert listen_queue(unix) is None
    unix.close()


# --- exposition -----------------------------------------------------------------------------------

def sample_snapshot():
    gatherer = Gatherer(make_area())
    cell = gatherer.claim(1)
    gatherer.started_worker(cell, 101)
    counts = RequestCounts()
    counts.count("GET", 200, 0.003, 0, 10)
    counts.count("GET", 200, 0.2, 0, 10)
    counts.count("POST", 502, 3.0, 5, 1)
    counts.refuse(431)
    CellWriter(gatherer.area, cell).publish(counts, 1, 2, 0, 0.012)
    shot = gatherer.snapshot([WorkerFacts(1, 101, "ready", 50.0, 99.0)], [1, 2], [],
                             now=100.0, pid=1, labels={"version": "0.1.0", "build": 'x "y"'})
    shot.listeners = [ListenerFigures("http://127.0.0.1:8000", 3, 2048)]
    return shot


def test_prometheus_text_reads_back_with_prometheus_client():
    text = exposition.render(sample_snapshot()).decode()
    found = samples(text)
    worker = (("worker", "1"),)
    assert found[("http_server_request_duration_seconds_count", worker)] == 3
    assert found[("http_server_request_duration_seconds_bucket",
                  (("le", "0.005"), ("worker", "1")))] == 1
    assert found[("http_server_request_duration_seconds_bucket",
                  (("le", "0.25"), ("worker", "1")))] == 2
    assert found[("http_server_request_duration_seconds_bucket",
                  (("le", "+Inf"), ("worker", "1")))] == 3
    assert found[("http_server_request_duration_seconds_sum", worker)] == pytest.approx(3.203)
    assert found[("duckprefork_http_requests_total",
                  (("http_request_method", "POST"), ("http_response_status_class", "5xx"),
                   ("worker", "1")))] == 1
    assert found[("http_server_active_requests", worker)] == 1
    assert found[("duckprefork_refused_requests_total",
                  (("reason", "too_large"), ("worker", "1")))] == 1
    assert found[("duckprefork_event_loop_lag_seconds", worker)] == pytest.approx(0.012)
    assert found[("duckprefork_heartbeat_age_seconds", worker)] == 1.0
    assert found[("duckprefork_listen_queue_length",
                  (("listener", "http://127.0.0.1:8000"),))] == 3
    assert found[("duckprefork_workers", (("state", "ready"),))] == 1
    assert found[("http_server_active_requests", (("worker", "2"),))] == 0
    assert found[("duckprefork_build", (("build", 'x "y"'), ("version", "0.1.0")))] == 1
    assert "pid" not in {name for _, labels in found for name, _ in labels}


def test_openmetrics_text_reads_back_with_the_openmetrics_parser():
    text = exposition.render(sample_snapshot(), openmetrics=True).decode()
    assert text.endswith("# EOF\n")
    families = {family.name: family for family in parse_om(text)}
    assert families["duckprefork_http_requests"].type == "counter"
    assert families["http_server_request_duration_seconds"].type == "histogram"
    assert exposition.wants_openmetrics("application/openmetrics-text; version=1.0.0")
    assert not exposition.wants_openmetrics("text/plain")


def test_every_bucket_boundary_is_opentelemetry_default():
    assert BUCKETS == (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                       7.5, 10.0)
    assert not any(math.isinf(bound) for bound in BUCKETS)


# --- status ------------------------------------------------------------------------------------

def test_status_document_and_table():
    document = json.loads(exposition.render_status(sample_snapshot()))
    assert document["totals"]["requests"] == 3 and document["totals"]["server_errors"] == 1
    assert document["workers"][0]["pid"] == 101 and document["totals"]["accept_queue"] == 3
    table = render_table(document)
    lines = table.splitlines()
    assert lines[1].split()[:3] == ["slot", "pid", "state"]
    assert lines[2].split()[:3] == ["1", "101", "ready"]
    assert lines[3].startswith("total")
    assert "accept queue 3/2048" in table


def test_summary_line_for_systemd():
    shot = sample_snapshot()
    assert summary_line(shot) == ("1/2 workers ready, 1 in flight, 0.0 req/s, 33.3% 5xx, "
                                  "accept queue 3, 0 restarts")
    assert summary_line(shot, "2026-01-01 00:00:00 UTC").endswith(
        "; last reload 2026-01-01 00:00:00 UTC")


# --- the scrape endpoint's rules ------------------------------------------------------------

def test_parse_request():
    assert parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nAccept: text/plain\r\nHost: a") == \
        ("GET", "/metrics", {"accept": "text/plain", "host": "a"})
    assert parse_request(b"GET /metrics") is None
    assert parse_request(b"GET / SPDY/3") is None
    assert parse_request(b"GET / HTTP/1.1\r\nno colon") is None


def test_bearer_token():
    assert authorized({}, None)
    assert authorized({"authorization": "Bearer s3cret"}, b"s3cret")
    assert authorized({"authorization": "bearer s3cret"}, b"s3cret")
    assert not authorized({"authorization": "Bearer s3crex"}, b"s3cret")
    assert not authorized({"authorization": "Basic s3cret"}, b"s3cret")
    assert not authorized({}, b"s3cret")


def test_which_addresses_need_a_token():
    assert not needs_token("127.0.0.1:9100")
    assert not needs_token("[::1]:9100")
    assert not needs_token("localhost:9100")
    assert not needs_token("unix:/run/x.sock")
    assert needs_token("0.0.0.0:9100")
    assert needs_token("10.0.0.1:9100")
    assert needs_token("metrics.example:9100")


def test_runs_settle_to_the_same_tables_as_counting_one_by_one():
    """count() keeps runs in native attributes; whatever the order, settle() leaves the tables
    as a plain count of each response would (every bound, either side of it, all methods)."""
    import random

    durations = [-1.0, 0.0, *BUCKETS, *(bound + 1e-6 for bound in BUCKETS), 1e-4, 99.0]
    responses = [(method, status, duration)
                 for method in ("GET", "POST", "BREW", "HEAD")
                 for status in (101, 200, 204, 302, 404, 500, 599, 600)
                 for duration in durations]
    random.Random(7).shuffle(responses)
    responses += [("GET", 200, 0.001)] * 50  # a long run
    expected_requests = [0] * len(counters.METHODS) * 5
    expected_durations = [0] * (len(BUCKETS) + 1)
    counts = RequestCounts()
    for index, (method, status, duration) in enumerate(responses):
        counts.count(method, status, duration, 1, 2)
        group = min(max(status // 100 - 1, 0), 4) if 100 <= status < 600 else 4
        method_index = counters.METHODS.index(method) if method in counters.METHODS else 7
        expected_requests[method_index * 5 + group] += 1
        expected_durations[next((i for i, bound in enumerate(BUCKETS) if duration <= bound),
                                len(BUCKETS))] += 1
        if index % 97 == 0:
            counts.settle()  # a publish in the middle of a run
    counts.settle()
    counts.settle()  # twice: nothing counted twice
    assert counts.requests == expected_requests
    assert counts.durations == expected_durations
    assert counts.body_in == len(responses) and counts.body_out == 2 * len(responses)


def test_bucket_count_literal():
    from duck_prefork.metrics.counters import _BOUNDS, N_BUCKETS

    assert N_BUCKETS == len(BUCKETS) + 1
    assert _BOUNDS == list(BUCKETS)


def test_the_scrape_server_bounds_each_connection(tmp_path):
    """MetricsServer driven by hand, as the master's loop drives it: one request per
    connection, a head over MAX_REQUEST cut with 431, a token checked, a silent scraper
    expired at its deadline, connections over MAX_SCRAPES closed at once."""
    from duck_prefork.metrics import server as scrape

    now = [0.0]
    listener = scrape.bind(f"unix:{tmp_path}/m.sock")
    assert (tmp_path / "m.sock").stat().st_mode & 0o777 == 0o600
    served = scrape.MetricsServer(listener, lambda path, accept: (200, "text/plain", b"ok\n")
                                  if path == "/metrics" else (404, "text/plain", b"no\n"),
                                  b"t0ken", lambda: now[0])

    def exchange(data: bytes) -> bytes:
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(tmp_path / "m.sock"))
        served.on_event(listener.fileno())
        client.sendall(data)
        for fd in list(served.scrapes):
            served.on_event(fd)
        client.settimeout(2)
        answer = client.recv(65536)
        client.close()
        return answer

    assert exchange(b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer t0ken\r\n\r\n") \
        .endswith(b"\r\n\r\nok\n")
    assert exchange(b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 401 ")
    assert exchange(b"GET /x HTTP/1.1\r\nAuthorization: Bearer t0ken\r\n\r\n") \
        .startswith(b"HTTP/1.1 404 ")
    assert exchange(b"POST /metrics HTTP/1.1\r\nAuthorization: Bearer t0ken\r\n\r\n") \
        .startswith(b"HTTP/1.1 405 ")
    assert exchange(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * scrape.MAX_REQUEST) \
        .startswith(b"HTTP/1.1 431 ")
    assert not served.scrapes
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(str(tmp_path / "m.sock"))
    served.on_event(listener.fileno())
    assert len(served.scrapes) == 1 and served.deadline() == scrape.DEADLINE
    now[0] = scrape.DEADLINE
    served.expire()
    assert not served.scrapes
    silent.close()
    crowd = []
    for _ in range(scrape.MAX_SCRAPES + 5):
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(tmp_path / "m.sock"))
        crowd.append(client)
    served.on_event(listener.fileno())
    assert len(served.scrapes) == scrape.MAX_SCRAPES
    served.close()
    for client in crowd:
        client.close()


def test_a_removed_slot_keeps_its_series():
    area = make_area()
    gatherer = Gatherer(area)
    for pid, slot in ((1, 1), (2, 2)):
        cell = gatherer.claim(slot)
        gatherer.started_worker(cell, pid)
        publish(area, cell, 3)
    gatherer.exited(2, "scale_down")  # TTOU: slot 2 is gone from the wanted slots
    shot = gatherer.snapshot([WorkerFacts(1, 1, "ready", 0.0, 0.0)], [1], [], 1.0, 1)
    assert [(slot.slot, slot.requests) for slot in shot.slots] == [(1, 3), (2, 3)]
    assert Gatherer(area).known_slots == {2}  # after USR2: from the retired rows
