"""USR2: the master re-executes itself in place (same pid) and replaces its workers, under
load, with no failed request; a new image that would fail is refused before exec."""

import signal

import pytest

from .conftest import wait_for
from .load import Load

pytestmark = pytest.mark.timeout(120)


def test_usr2_upgrades_in_place_without_failing_a_request(start_server):
    server = start_server("tests.apps.basic:app", "--workers", "2")
    old_workers = set(server.worker_pids())
    with Load(server.port) as load:
        wait_for(lambda: load.sent > 50, what="load before the upgrade")
        server.send_signal(signal.SIGUSR2)
        server.wait_log(rf"re-executed master pid {server.pid}", timeout=30)
        server.wait_log(r"to replace pid", count=2)
        wait_for(lambda: not old_workers & set(server.worker_pids())
                 and len(server.worker_pids()) == 2, timeout=30, what="old workers retired")
        sent_at_swap = load.sent
        wait_for(lambda: load.sent > sent_at_swap + 50, what="load after the upgrade")
    print(f"USR2 under load: {load.sent} requests sent, {load.failed} failed")
    assert load.failed == 0, load.errors[:5]
    assert server.proc.poll() is None  # the same master process, still running
    new_workers = set(server.worker_pids())
    assert new_workers and not new_workers & old_workers
    assert new_workers & load.pids  # the new workers served
    assert server.stop() == 0


def test_usr2_refuses_a_new_image_that_would_fail(start_server, tmp_path):
    config = tmp_path / "duck.toml"
    config.write_text('app = "tests.apps.basic:app"\nworkers = 1\n')
    server = start_server("--config", str(config))
    workers = server.worker_pids()
    config.write_text("workers = = 1\n")  # the new image could not start
    server.send_signal(signal.SIGUSR2)
    server.wait_log("USR2: not re-executing, the new image would fail")
    assert server.worker_pids() == workers
    assert server.request("GET", "/")[0] == 200


def test_usr2_with_preload_refuses_an_app_that_no_longer_imports(start_server, tmp_path):
    # With --preload the new image imports the app itself before adopting the workers: the
    # check before exec (--check-config imports APP) must catch a broken deploy, or the new
    # master would exit and take the service down.
    module = tmp_path / "deployed_app.py"
    module.write_text("from tests.apps.basic import app\n")
    server = start_server("deployed_app:app", "--workers", "1", "--preload",
                          "--chdir", str(tmp_path))
    workers = server.worker_pids()
    module.write_text("raise ImportError('the new release is broken')\n")
    server.send_signal(signal.SIGUSR2)
    server.wait_log("USR2: not re-executing, the new image would fail")
    assert "the new release is broken" in server.log()
    assert server.worker_pids() == workers
    assert server.request("GET", "/")[0] == 200
    assert server.stop() == 0
