"""The habits against real servers: --reload rolling the workers on a change and keeping them
on a broken one, --capture-output, the JSON access log parsed back."""

from __future__ import annotations

import json
import re

import psutil
import pytest

from .conftest import wait_for

pytestmark = pytest.mark.timeout(90)

APP = """\
VERSION = {version!r}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": VERSION.encode()}})
"""


def watchers(server) -> list[int]:
    try:
        children = psutil.Process(server.pid).children()
    except psutil.NoSuchProcess:
        return []
    return [child.pid for child in children
            if "duck_prefork.master.reload" in " ".join(child.cmdline())]


def test_reload_rolls_the_workers_on_a_change_and_keeps_them_on_a_broken_one(
        start_server, tmp_path):
    pytest.importorskip("watchfiles")
    source = tmp_path / "reloaded_app.py"
    source.write_text(APP.format(version="one"))
    server = start_server("reloaded_app:app", "--chdir", str(tmp_path), "--workers", "2",
                          "--reload")
    assert server.request()[2] == b"one"
    server.wait_log(r"--reload: watching ")
    [watcher] = wait_for(lambda: watchers(server), what="the watcher process")
    first = set(server.worker_pids()) - {watcher}

    source.write_text(APP.format(version="two"))
    server.wait_log(r"reloaded_app\.py changed; reloading the workers")
    server.wait_log(r"HUP: reloading 2 workers")
    wait_for(lambda: server.request()[2] == b"two", what="the new code served")
    wait_for(lambda: not first & set(server.worker_pids()), what="the old workers gone")

    source.write_text(APP.format(version="three") + "\ndef broken(:\n")
    server.wait_log(r"pid \d+ keeps serving: the same failure as above")
    log = server.log()
    assert log.count("SyntaxError: invalid syntax") == 1  # the traceback, once
    assert server.request()[2] == b"two"  # the old workers serve on

    source.write_text(APP.format(version="four"))  # fixed: the next change reloads
    wait_for(lambda: server.request()[2] == b"four", what="the fixed code served")
    assert server.stop() == 0
    assert not psutil.pid_exists(watcher) or \
        psutil.Process(watcher).status() == psutil.STATUS_ZOMBIE


def test_capture_output_sends_the_apps_output_to_the_error_log(start_server, tmp_path):
    error_log = tmp_path / "error.log"
    server = start_server("tests.apps.noisy:app", "--workers", "1", "--capture-output",
                          "--error-logfile", str(error_log), "--access-logfile", "-",
                          ready=False)
    wait_for(lambda: error_log.exists() and "ready: 1 worker serving" in error_log.read_text(),
             what="ready in the error log")
    server._port = int(re.search(r"http://127\.0\.0\.1:(\d+)", error_log.read_text())[1])
    assert server.request(path="/hello")[2] == b"ok"
    wait_for(lambda: "logging from the app: /hello" in error_log.read_text(),
             what="the app's logging in the error log")
    text = error_log.read_text()
    assert "print from the app: /hello" in text
    assert "stderr from the app: /hello" in text
    # The access log's "-" is still the real stdout, not the error log.
    wait_for(lambda: '"GET /hello HTTP/1.1" 200' in server.stdout(), what="the access line")
    assert "GET /hello" not in text


def test_the_json_access_log_of_a_real_server(start_server, tmp_path):
    access_log = tmp_path / "access.log"
    server = start_server("tests.apps.basic:app", "--workers", "1", "--access-log-json",
                          "--access-logfile", str(access_log))
    server.request(path="/?x=1", headers={"User-Agent": "habit-test/1",
                                          "Referer": "http://example.test/"})
    server.request(method="POST", path="/echo", body=b"abc")
    wait_for(lambda: access_log.read_text().count("\n") >= 2, what="two access lines")
    first, second = (json.loads(line) for line in access_log.read_text().splitlines()[:2])
    assert (first["method"], first["path"], first["query"], first["status"]) == \
        ("GET", "/", "x=1", 200)
    assert first["user_agent"] == "habit-test/1" and first["referrer"] == "http://example.test/"
    assert first["client"] == "127.0.0.1" and first["protocol"] == "HTTP/1.1"
    assert first["worker"] == "worker 1" and isinstance(first["duration_ms"], int)
    assert first["time"].endswith("Z") and first["bytes"] > 0
    assert second["method"] == "POST" and second["path"] == "/echo"


def test_one_file_for_both_logs_reads_in_order(start_server, tmp_path):
    """--access-logfile and --error-logfile naming one file: a worker's error-log line comes
    after the access lines made before it (each connection's line after its request's, the
    worker's last words after its last lines), though access lines are written in batches."""
    shared = tmp_path / "server.log"
    server = start_server("tests.apps.basic:app", "--workers", "1", "--log-level", "debug",
                          "--error-logfile", str(shared), "--access-logfile", str(shared),
                          ready=False)
    wait_for(lambda: shared.exists() and "ready: 1 worker serving" in shared.read_text(),
             what="ready in the shared log")
    server._port = int(re.search(r"http://127\.0\.0\.1:(\d+)", shared.read_text())[1])
    for n in range(3):
        assert server.request(path=f"/?n={n}")[0] == 200
    wait_for(lambda: shared.read_text().count("closed after 1 request") >= 3,
             what="three connections closed")
    assert server.stop() == 0
    lines = shared.read_text().splitlines()

    def where(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    requests = [where(f'"GET /?n={n} HTTP/1.1" 200') for n in range(3)]
    closes = [i for i, line in enumerate(lines) if "closed after 1 request" in line]
    assert requests == sorted(requests) and len(closes) == 3
    for request, close in zip(requests, closes, strict=True):
        assert request < close, "\n".join(lines)
    assert requests[-1] < where("worker 1: draining")
