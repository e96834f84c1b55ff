"""--preload, --user/--group, --umask."""

import os
import pwd
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
