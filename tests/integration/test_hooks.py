"""--on-starting, --post-fork, --worker-exit, --on-reload; a failing hook harms nothing."""

import os
import signal

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.timeout(60)

HOOKS = ["--on-starting", "tests.apps.hooks:on_starting", "--post-fork",
         "tests.apps.hooks:post_fork", "--worker-exit", "tests.apps.hooks:worker_exit",
         "--on-reload", "tests.apps.hooks:on_reload"]


def test_hooks_run_where_they_should(start_server, tmp_path):
    record = tmp_path / "hooks.log"
    server = start_server("tests.apps.basic:app", "--workers", "2", *HOOKS,
                          env={"DUCK_TEST_HOOK_LOG": str(record)})
    lines = wait_for(lambda: record.read_text().count("post_fork") == 2
                     and record.read_text().splitlines(), what="post_fork hooks")
    assert lines[0] == f"on_starting 2 pid={server.pid}"
    workers = set(server.worker_pids())
    assert {int(line.split("pid=")[1]) for line in lines if line.startswith("post_fork")} \
        == workers
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: f"worker_exit 1 pid={victim} code=-9" in record.read_text()
             or f"worker_exit 2 pid={victim} code=-9" in record.read_text(),
             what="worker_exit hook")
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: "on_reload 2" in record.read_text(), what="on_reload hook")
    assert server.stop() == 0


def test_a_failing_hook_is_logged_and_harms_nothing(start_server):
    server = start_server("tests.apps.basic:app", "--workers", "1",
                          "--on-starting", "tests.apps.hooks:broken",
                          "--post-fork", "tests.apps.hooks:broken",
                          "--worker-exit", "tests.apps.no_such_module:hook")
    assert server.request("GET", "/")[0] == 200
    log = server.log()
    assert "--on-starting hook tests.apps.hooks:broken raised" in log
    assert "--post-fork hook tests.apps.hooks:broken raised" in log
    assert "RuntimeError: hook exploded" in log
    os.kill(server.worker_pids()[0], signal.SIGKILL)
    server.wait_log("--worker-exit: cannot load tests.apps.no_such_module:hook")
    server.wait_log(r"worker 1 \(pid \d+\) ready", count=2)
    assert server.request("GET", "/")[0] == 200
