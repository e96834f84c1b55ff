"""--pid FILE: written at start, refused while it names a live process, removed at exit."""

import pytest

from .test_cli import run_cli

pytestmark = pytest.mark.timeout(60)


def test_pid_file_lifecycle(start_server, tmp_path):
    pid_file = tmp_path / "duck.pid"
    pid_file.write_text("999999\n")  # a leftover naming no process: replaced
    server = start_server("tests.apps.basic:app", "--workers", "1", "--pid", str(pid_file))
    assert int(pid_file.read_text()) == server.pid

    second = run_cli("tests.apps.basic:app", "--bind", "127.0.0.1:0", "--pid", str(pid_file))
    assert second.returncode == 1
    assert second.stderr.count("\n") == 1 and "--pid" in second.stderr
    assert f"running process {server.pid}" in second.stderr
    assert int(pid_file.read_text()) == server.pid  # untouched by the refused start

    assert server.stop() == 0
    assert not pid_file.exists()
