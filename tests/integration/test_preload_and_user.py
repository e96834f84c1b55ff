"""--preload, --user/--group, --umask."""

import grp
import os
import pwd
import signal
import socket
import stat

import psutil
import pytest

from .test_cli import run_cli

pytestmark = pytest.mark.timeout(60)


def test_preload_imports_the_app_once_in_the_master(start_server, tmp_path):
    record = tmp_path / "imports.log"
    server = start_server("tests.apps.import_marker:app", "--workers", "2", "--preload",
                          env={"DUCK_TEST_IMPORT_LOG": str(record)})
    assert record.read_text().split() == [str(server.pid)]
    assert server.request("GET", "/")[0] == 200


def test_without_preload_each_worker_imports_the_app(start_server, tmp_path):
    record = tmp_path / "imports.log"
    server = start_server("tests.apps.import_marker:app", "--workers", "2",
                          env={"DUCK_TEST_IMPORT_LOG": str(record)})
    assert sorted(map(int, record.read_text().split())) == sorted(server.worker_pids())


def test_preload_of_a_broken_app_exits_3_with_the_traceback():
    result = run_cli("tests.apps.import_error:app", "--preload", "--bind", "127.0.0.1:0")
    assert result.returncode == 3
    assert "this_module_does_not_exist" in result.stderr and "Traceback" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_workers_run_as_user(start_server):
    nobody = pwd.getpwnam("nobody")
    server = start_server("tests.apps.basic:app", "--workers", "1", "--user", "nobody")
    worker = psutil.Process(server.worker_pids()[0])
    assert worker.uids().real == nobody.pw_uid and worker.gids().real == nobody.pw_gid
    assert psutil.Process(server.pid).uids().real == 0  # the master keeps its rights
    assert server.request("GET", "/")[0] == 200


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_workers_running_as_a_user_die_with_a_killed_master(start_server):
    """setuid() clears the parent-death signal: it must be asked for after the drop."""
    server = start_server("tests.apps.basic:app", "--workers", "2", "--user", "nobody")
    workers = [psutil.Process(pid) for pid in server.worker_pids()]
    os.kill(server.pid, signal.SIGKILL)
    server.wait_exit(10)
    gone, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, "workers outlived their master"


def groups_of(pid: int) -> list[int]:
    """The supplementary groups of process PID."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Groups:"):
                return sorted(map(int, line.split()[1:]))
    raise AssertionError("no Groups line")


def user_with_supplementary_groups() -> pwd.struct_passwd | None:
    """A user of this machine who belongs to a group besides their own, if any."""
    for group in grp.getgrall():
        for member in group.gr_mem:
            try:
                user = pwd.getpwnam(member)
            except KeyError:
                continue
            if user.pw_gid != group.gr_gid:
                return user
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_workers_get_the_users_supplementary_groups(start_server):
    user = user_with_supplementary_groups()
    if user is None:
        pytest.skip("no user here belongs to a group besides their own")
    server = start_server("tests.apps.basic:app", "--workers", "1", "--user", user.pw_name)
    worker = server.worker_pids()[0]
    assert groups_of(worker) == sorted(set(os.getgrouplist(user.pw_name, user.pw_gid)))
    assert len(groups_of(worker)) > 1
    assert server.request("GET", "/")[0] == 200


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_with_only_a_group_the_workers_have_no_other_group(start_server):
    nogroup = grp.getgrgid(pwd.getpwnam("nobody").pw_gid)
    server = start_server("tests.apps.basic:app", "--workers", "1", "--group", nogroup.gr_name)
    worker = server.worker_pids()[0]
    assert groups_of(worker) == [nogroup.gr_gid]
    assert psutil.Process(worker).gids().real == nogroup.gr_gid


def test_unknown_user_is_one_line_and_exit_1():
    result = run_cli("--user", "no-such-user-here", "--bind", "127.0.0.1:0")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "--user" in result.stderr


def test_umask_applies_to_the_unix_socket(start_server, tmp_path):
    path = tmp_path / "app.sock"
    start_server("tests.apps.basic:app", "--workers", "1", "--umask", "077",
                 bind=f"unix:{path}")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    client.close()
