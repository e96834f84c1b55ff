"""--config FILE (TOML) and --check-config; HUP re-reads the file and keeps a bad one out."""

import signal

import pytest

from .conftest import wait_for
from .test_cli import run_cli

pytestmark = pytest.mark.timeout(90)


def write(path, text):
    path.write_text(text)
    return str(path)


def test_file_values_and_precedence(tmp_path):
    config = write(tmp_path / "duck.toml", 'app = "tests.apps.basic:app"\nworkers = 3\n'
                   'graceful-timeout = 7\nkeep_alive = 9\nbind = ["127.0.0.1:0"]\n')
    result = run_cli("--config", config, "--check-config", "--keep-alive", "11",
                     env={"DUCK_PREFORK_GRACEFUL_TIMEOUT": "8"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'app = "tests.apps.basic:app"' in out
    assert "workers = 3" in out  # from the file
    assert "graceful-timeout = 8.0" in out  # the environment beats the file
    assert "keep-alive = 11.0" in out  # the command line beats both
    assert 'bind = ["127.0.0.1:0"]' in out


@pytest.mark.parametrize("text, expected", [
    ("wrkers = 2\n", "unknown key 'wrkers'"),
    ('workers = "many"\n', "workers: not a valid value"),
    ("workers = \n", "line 1"),
    ('bind = []\n', "bind: needs at least one value"),
    ("lifespan = [1]\n", "lifespan: expected a single value"),
])
def test_bad_files_are_one_line_naming_file_and_key(tmp_path, text, expected):
    config = write(tmp_path / "bad.toml", text)
    result = run_cli("--config", config, "--check-config")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and config in lines[0] and expected in lines[0], result.stderr


def test_missing_file(tmp_path):
    result = run_cli("--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 1 and "--config" in result.stderr


def test_hup_rereads_the_file_and_keeps_the_old_one_when_it_is_bad(start_server, tmp_path):
    path = tmp_path / "duck.toml"
    write(path, 'app = "tests.apps.basic:app"\nworkers = 1\n')
    server = start_server("--config", str(path))
    assert len(server.worker_pids()) == 1

    write(path, "workers = = 2\n")  # a syntax error: the running configuration stays
    server.send_signal(signal.SIGHUP)
    server.wait_log("HUP: the configuration is invalid, keeping the current one")
    assert server.request("GET", "/")[0] == 200

    write(path, 'app = "tests.apps.basic:app"\nworkers = 3\n')
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: len(server.worker_pids()) == 3 and server.log().count(" ready") >= 4,
             what="three workers after the reload")
    assert server.request("GET", "/")[0] == 200
