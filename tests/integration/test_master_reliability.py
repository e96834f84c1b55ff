"""What used to take the master down, tried on the real process tree: a worker killed by a
realtime signal, HUP with a file that is not UTF-8, a slow failing USR2 check under --timeout,
signals that arrive while USR2's new image imports the app, descriptor numbers past 1024."""

from __future__ import annotations

import os
import resource
import signal

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.timeout(120)


def test_a_worker_killed_by_a_realtime_signal_is_replaced(start_server):
    server = start_server("tests.apps.basic:app", "--workers", "2")
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGRTMIN + 6)
    server.wait_log(rf"\(pid {victim}\) killed by SIGRTMIN\+6")
    wait_for(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(),
             what="a replacement")
    assert server.proc.poll() is None
    assert server.request("GET", "/")[0] == 200
    assert "bug while" not in server.log()


def test_hup_with_a_file_that_is_not_utf8_keeps_the_running_configuration(start_server,
                                                                         tmp_path):
    config = tmp_path / "duck.toml"
    config.write_text('app = "tests.apps.basic:app"\nworkers = 2\n')
    server = start_server("--config", str(config))
    workers = sorted(server.worker_pids())
    config.write_bytes(b"workers = 3\n# caf\xe9\n")  # Latin-1, not UTF-8
    server.send_signal(signal.SIGHUP)
    server.wait_log(r"HUP: the configuration is invalid, keeping the current one: .*not UTF-8")
    assert server.request("GET", "/")[0] == 200
    assert sorted(server.worker_pids()) == workers
    config.write_text('app = "tests.apps.basic:app"\nworkers = 2\n')
    server.send_signal(signal.SIGHUP)  # a fixed file is then applied
    server.wait_log(r"HUP: reloading 2 workers")
    wait_for(lambda: not set(workers) & set(server.worker_pids())
             and len(server.worker_pids()) == 2, timeout=30, what="the reload")
    assert server.stop() == 0


def test_a_slow_failing_usr2_check_does_not_starve_the_workers_heartbeats(start_server,
                                                                          tmp_path):
    # The check imports the app for 4 s, then fails. Run in the master's loop, it used to leave
    # every heartbeat 4 s stale, past --timeout 2: both healthy workers were killed.
    module = tmp_path / "deployed_app.py"
    module.write_text("from tests.apps.basic import app\n")
    server = start_server("deployed_app:app", "--workers", "2", "--timeout", "2",
                          "--chdir", str(tmp_path))
    workers = sorted(server.worker_pids())
    module.write_text("import time\ntime.sleep(4)\nraise ImportError('broken release')\n")
    server.send_signal(signal.SIGUSR2)
    server.wait_log("USR2: checking the new image")
    server.wait_log("USR2: not re-executing, the new image would fail", timeout=30)
    assert "broken release" in server.log()
    assert "silent for" not in server.log()
    assert sorted(server.worker_pids()) == workers
    assert server.request("GET", "/")[0] == 200
    assert server.stop() == 0


def test_signals_during_usr2_wait_for_the_new_image(start_server, tmp_path):
    # With --preload the new image imports the app (here 3 s) before it has its handlers: a
    # HUP, USR1 or TTIN meanwhile used to kill (or stop) the master with its default action.
    module = tmp_path / "deployed_app.py"
    module.write_text("from tests.apps.basic import app\n")
    server = start_server("deployed_app:app", "--workers", "1", "--preload",
                          "--chdir", str(tmp_path))
    module.write_text("import os, time\n"
                      "if os.environ.get('DUCK_PREFORK_INHERIT'):\n"
                      "    time.sleep(3)\n"
                      "from tests.apps.basic import app\n")
    server.send_signal(signal.SIGUSR2)
    server.wait_log("USR2: re-executing the master", timeout=30)
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN):
        server.send_signal(signum)
    server.wait_log(rf"re-executed master pid {server.pid}", timeout=30)
    server.wait_log("TTIN: one worker more")
    server.wait_log("USR1: log files reopened")
    wait_for(lambda: len(server.worker_pids()) == 2, timeout=30, what="two workers")
    assert server.proc.poll() is None
    assert server.request("GET", "/")[0] == 200
    assert server.stop() == 0


@pytest.fixture
def high_descriptors():
    """1100 descriptors held open (and passed to the server), so that the master's own pipes
    get numbers past 1024, where select() fails."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    # Everything this process has open goes along, or the gaps it leaves below would give the
    # master's pipes small numbers again.
    held = sorted(int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2)
    try:
        yield [fd for fd in held if _is_open(fd)]
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_the_master_supervises_with_descriptors_past_1024(start_server, high_descriptors):
    server = start_server("tests.apps.basic:app", "--workers", "2",
                          pass_fds=high_descriptors)
    # The master's own descriptors (its wakeup pipe, its workers' channels) are past 1024.
    own = [int(fd) for fd in os.listdir(f"/proc/{server.pid}/fd")
           if int(fd) not in high_descriptors and int(fd) > 2]
    assert own and min(own) > 1024, own
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    server.wait_log(rf"\(pid {victim}\) killed by SIGKILL")
    server.wait_log(r"worker \d \(pid \d+\) ready", count=3)
    assert server.request("GET", "/")[0] == 200
    assert "bug while" not in server.log()
    assert server.stop() == 0


def test_a_config_broken_between_usr2_check_and_exec_falls_back_to_the_checked_one(
        start_server, tmp_path):
    # The check imports the app, and this app breaks the config file when a check imports it
    # (the check runs with DUCK_PREFORK_INHERIT empty): the new image then finds an invalid
    # file, as when a deploy rewrites it in the moment between the check and the exec. It used
    # to exit with code 1 and leave the site without a master.
    config = tmp_path / "duck.toml"
    config.write_text('app = "deployed_app:app"\nworkers = 1\n')
    (tmp_path / "deployed_app.py").write_text(
        "import os\n"
        "from tests.apps.basic import app\n"
        "if os.environ.get('DUCK_PREFORK_INHERIT') == '':\n"
        "    with open(os.environ['DUCK_TEST_CONFIG'], 'w') as file:\n"
        "        file.write('workers = = 1\\n')\n")
    server = start_server("--config", str(config), "--chdir", str(tmp_path),
                          env={"DUCK_TEST_CONFIG": str(config)})
    server.send_signal(signal.SIGUSR2)
    server.wait_log(rf"re-executed master pid {server.pid}", timeout=30)
    assert "serving the one the check validated" in server.log()
    wait_for(lambda: len(server.worker_pids()) == 1 and server.request("GET", "/")[0] == 200,
             timeout=30, what="the new image serving")
    assert server.proc.poll() is None
    assert server.stop() == 0


def test_usr2_with_no_worker_alive_still_upgrades_in_place(start_server, tmp_path):
    # The worker crash-loops (its app raises while a marker file exists), so for seconds at a
    # time no worker is alive; a USR2 then re-executes with no worker to adopt. The new image
    # must still take over as an upgrade: it used to start afresh, running --on-starting
    # again, without the "re-executed" line, and ready to exit 3 if a new worker failed.
    marker = tmp_path / "broken"
    (tmp_path / "deployed_app.py").write_text(
        "import os\n"
        "from tests.apps.basic import app\n"
        "if os.path.exists(os.environ['DUCK_TEST_MARKER']) \\\n"
        "        and os.environ.get('DUCK_PREFORK_INHERIT') is None:\n"
        "    raise RuntimeError('broken for now')\n")
    hook_log = tmp_path / "hooks.log"
    server = start_server("deployed_app:app", "--workers", "1", "--chdir", str(tmp_path),
                          "--on-starting", "tests.apps.hooks:on_starting",
                          env={"DUCK_TEST_MARKER": str(marker),
                               "DUCK_TEST_HOOK_LOG": str(hook_log)})
    marker.touch()
    os.kill(server.worker_pids()[0], signal.SIGKILL)
    server.wait_log(r"restarting in 4\.0 s", timeout=30)  # the next fork is 4 s away
    marker.unlink()
    server.send_signal(signal.SIGUSR2)
    server.wait_log(rf"re-executed master pid {server.pid}", timeout=30)
    wait_for(lambda: server.request("GET", "/")[0] == 200, timeout=30, what="serving again")
    assert hook_log.read_text().count("on_starting") == 1
    assert server.proc.poll() is None
    assert server.stop() == 0
