"""Operations under concurrent load: TTIN/TTOU and USR1 lose nothing; USR2 with a broken
deploy keeps the old workers serving (refused before exec when the code does not import)."""

import signal

import pytest

from .conftest import wait_for
from .load import Load
from .test_operations import APP_ENV, MODULE, versions, write_app

pytestmark = pytest.mark.timeout(120)


def test_ttin_ttou_under_load_fail_no_request(start_server):
    server = start_server("tests.apps.basic:app", "--workers", "2")
    with Load(server.port) as load:
        wait_for(lambda: load.sent > 50, what="load")
        server.send_signal(signal.SIGTTIN)
        server.wait_log(r"worker 3 \(pid \d+\) ready")
        server.send_signal(signal.SIGTTOU)
        server.wait_log(r"worker 3 \(pid \d+\) exited with code 0")
        server.send_signal(signal.SIGTTOU)
        server.wait_log(r"worker 2 \(pid \d+\) exited with code 0")
        sent = load.sent
        wait_for(lambda: load.sent > sent + 50, what="load after scaling down")
    print(f"TTIN/TTOU under load: {load.sent} requests sent, {load.failed} failed")
    assert load.failed == 0, load.errors[:5]
    assert len(server.worker_pids()) == 1


def test_usr1_under_load_loses_no_access_line(start_server, tmp_path):
    access = tmp_path / "access.log"
    server = start_server("tests.apps.basic:app", "--workers", "2", "--access-logfile",
                          str(access))
    rotated = tmp_path / "access.log.1"
    with Load(server.port) as load:
        wait_for(lambda: load.sent > 100, what="load before the rotation")
        access.rename(rotated)  # as logrotate does, then its postrotate sends USR1
        server.send_signal(signal.SIGUSR1)
        wait_for(lambda: access.exists() and access.stat().st_size > 0, what="the new file")
        sent = load.sent
        wait_for(lambda: load.sent > sent + 100, what="load after the rotation")
    assert load.failed == 0, load.errors[:5]

    def lines():
        return sum(path.read_text().count('"GET /pid HTTP/1.1" 200') for path in (rotated, access))

    wait_for(lambda: lines() == load.sent, what="one access line per request, in either file")
    print(f"USR1 under load: {load.sent} requests, {lines()} access lines")


def test_usr2_with_a_broken_deploy_keeps_the_old_workers(start_server, tmp_path):
    write_app(tmp_path, "version-1")
    server = start_server(f"{MODULE}:app", "--workers", "2", "--chdir", str(tmp_path),
                          env=APP_ENV)
    old = set(server.worker_pids())
    # A deploy that passes the check before exec (--check-config imports the app) and still
    # cannot boot in a worker, as when its startup needs what only the workers have.
    write_app(tmp_path, "version-broken", extra='import sys\n'
              'if "--check-config" not in sys.argv:\n    raise RuntimeError("broken deploy")')
    with Load(server.port, path="/") as load:
        wait_for(lambda: load.sent > 20, what="load")
        server.send_signal(signal.SIGUSR2)
        server.wait_log(rf"re-executed master pid {server.pid}")
        server.wait_log(r"before it was ready; pid \d+ keeps serving", count=2)
        sent = load.sent
        wait_for(lambda: load.sent > sent + 50, what="load after the failed upgrade")
    assert load.failed == 0, load.errors[:5]
    assert set(server.worker_pids()) == old
    assert versions(server.port, 20) == {b"version-1"}


def test_usr2_with_code_that_does_not_import_is_refused_before_exec(start_server, tmp_path):
    write_app(tmp_path, "version-1")
    server = start_server(f"{MODULE}:app", "--workers", "2", "--chdir", str(tmp_path),
                          env=APP_ENV)
    old = set(server.worker_pids())
    write_app(tmp_path, "version-broken", extra='raise RuntimeError("broken deploy")')
    with Load(server.port, path="/") as load:
        wait_for(lambda: load.sent > 20, what="load")
        server.send_signal(signal.SIGUSR2)
        server.wait_log("USR2: not re-executing, the new image would fail")
        sent = load.sent
        wait_for(lambda: load.sent > sent + 50, what="load after the refused upgrade")
    assert "broken deploy" in server.log() and "re-executed master" not in server.log()
    assert load.failed == 0, load.errors[:5]
    assert set(server.worker_pids()) == old
    assert versions(server.port, 20) == {b"version-1"}
