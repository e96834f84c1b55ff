"""The command line: help, version, options from argv and environment, one-line errors."""

import os
import socket
import subprocess
import sys

import pytest

from duck_prefork import __version__, build
from duck_prefork.config import OPTIONS

from .conftest import ROOT

pytestmark = pytest.mark.timeout(60)


def run_cli(*args, env=None):
    full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith("DUCK_PREFORK_") or k == build.PURE_ENV}  # the build stays
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "duck_prefork", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=30)


def test_help_lists_every_option_with_its_default():
    result = run_cli("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in OPTIONS:
        assert option.long in text
        assert option.env in text
    assert text.count("(default:") >= len(OPTIONS)
    assert "default: 127.0.0.1:8000" in text


def test_version():
    """--version names the build that runs: compiled, or pure Python and why (build.py)."""
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"duck-prefork {__version__} ({build.DESCRIPTION})"


def test_version_says_when_the_pure_python_build_is_forced():
    result = run_cli("--version", env={build.PURE_ENV: "1"})
    assert result.returncode == 0
    assert result.stdout.strip() == \
        f"duck-prefork {__version__} (pure Python: {build.PURE_ENV} is set)"


@pytest.mark.parametrize("args, env, names", [
    (["--workers", "-1"], {}, "--workers"),
    (["--workers", "zero"], {}, "--workers"),
    (["--bind", "nonsense"], {}, "--bind"),
    (["--bind", "127.0.0.1:99999"], {}, "--bind"),
    (["--bind", "fd://x"], {}, "--bind"),
    (["--graceful-timeout", "-3"], {}, "--graceful-timeout"),
    (["--lifespan", "maybe"], {}, "--lifespan"),
    (["--http", "llhttp"], {}, "--http"),
    (["--log-level", "loud"], {}, "--log-level"),
    (["--no-such-option"], {}, "--no-such-option"),
    ([], {"DUCK_PREFORK_WORKERS": "-2"}, "DUCK_PREFORK_WORKERS"),
    ([], {"DUCK_PREFORK_KEEP_ALIVE": "soon"}, "DUCK_PREFORK_KEEP_ALIVE"),
    (["notanapp"], {}, "APP"),
    (["--chdir", "/does/not/exist"], {}, "--chdir"),
    (["--error-logfile", "/does/not/exist/error.log"], {}, "--error-logfile"),
])
def test_bad_value_is_one_line_naming_it_and_exit_1(args, env, names):
    result = run_cli(*args, "--bind", "127.0.0.1:0", env=env) if "--bind" not in args \
        else run_cli(*args, env=env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert lines[0].startswith("duck-prefork: error:")


def test_address_in_use_is_one_line_and_exit_1():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        result = run_cli("--bind", f"127.0.0.1:{taken.getsockname()[1]}")
    finally:
        taken.close()
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--bind" in result.stderr and "in use" in result.stderr


def test_environment_sets_options_and_command_line_wins(start_server):
    server = start_server("tests.apps.basic:app", "--workers", "1",
                          env={"DUCK_PREFORK_WORKERS": "3", "DUCK_PREFORK_NAME": "from-env"})
    assert len(server.worker_pids()) == 1  # --workers 1 beat DUCK_PREFORK_WORKERS=3
    import psutil
    assert "[from-env]" in " ".join(psutil.Process(server.pid).cmdline())


def test_environment_alone_configures_the_server(start_server):
    server = start_server(env={"DUCK_PREFORK_WORKERS": "3", "DUCK_PREFORK_APP":
                               "tests.apps.basic:app"})
    assert len(server.worker_pids()) == 3
    status, _, body = server.request("GET", "/")
    assert (status, body) == (200, b"Hello, world!")


def test_check_config_imports_the_app():
    good = run_cli("tests.apps.basic:app", "--check-config")
    assert good.returncode == 0, good.stderr
    broken = run_cli("tests.apps.import_error:app", "--check-config")
    assert broken.returncode == 3
    assert "--check-config: the app could not be loaded" in broken.stderr
