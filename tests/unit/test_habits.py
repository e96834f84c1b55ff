"""A uvicorn or gunicorn user's habits: their flags as aliases (or refused with what to use
instead), no prefix matching, a misspelled DUCK_PREFORK_* variable, the access log formats
parsed back, --log-config files, --reload's pieces."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

import pytest

from duck_prefork import access_log, logs
from duck_prefork.cli import ALIASES, REFUSED, parse_args
from duck_prefork.config import OTHER_ENV, ConfigError, build_config
from duck_prefork.master import reload

pytestmark = pytest.mark.timeout(30)


def parse(*argv: str, **environ: str):
    return parse_args(list(argv), environ)


def refused(capsys, *argv: str) -> str:
    """The one error line for argv; asserts exit code 1."""
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("duck-prefork: error: "), err
    return err


# --- aliases ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "name", "value"), [
    (["--timeout-keep-alive", "7"], "keep_alive", 7.0),
    (["--timeout-graceful-shutdown", "3"], "graceful_timeout", 3.0),
    (["--limit-max-requests", "100"], "max_requests", 100),
    (["--header", "X-A:b"], "response_header", ["X-A: b"]),
    (["--log-file", "/tmp/e.log"], "error_logfile", "/tmp/e.log"),
    (["-p", "/tmp/x.pid"], "pid", "/tmp/x.pid"),
    (["-n", "shop"], "name", "shop"),
    (["-t", "12"], "timeout", 12.0),
    (["--ssl-certfile", "/etc/ssl/a.pem"], "certfile", "/etc/ssl/a.pem"),
    (["--ssl-keyfile", "/etc/ssl/a.key", "--certfile", "/etc/ssl/a.pem"], "keyfile",
     "/etc/ssl/a.key"),
    (["--ssl-ca-certs", "/etc/ssl/ca.pem"], "ca_certs", "/etc/ssl/ca.pem"),
    (["--ssl-ciphers", "ECDHE+AESGCM"], "ciphers", "ECDHE+AESGCM"),
    (["--proxy-headers"], "no_proxy_headers", False),
    (["--no-proxy-headers", "--proxy-headers"], "no_proxy_headers", False),
    (["--proxy-headers", "--no-proxy-headers"], "no_proxy_headers", True),
    (["--access-log"], "access_logfile", "-"),
    (["--access-logfile", "a.log", "--no-access-log"], "access_logfile", ""),
    (["--loop", "uvloop"], "workers", None),  # accepted: it is what runs anyway
    (["--loop", "auto"], "workers", None),
])
def test_an_alias_sets_the_option_it_names(argv, name, value):
    config = parse(*argv)
    if value is not None:
        assert getattr(config, name) == value


def test_every_alias_is_tested_and_names_an_option():
    from duck_prefork.config import OPTIONS_BY_NAME

    assert set(ALIASES.values()) <= set(OPTIONS_BY_NAME)
    source = open(__file__).read()
    for flag in ALIASES:
        assert f'["{flag}"' in source, f"{flag} has no test"


@pytest.mark.parametrize(("argv", "binds"), [
    (["--host", "0.0.0.0", "--port", "9000"], ["0.0.0.0:9000"]),
    (["--port", "9000"], ["127.0.0.1:9000"]),
    (["--host", "0.0.0.0"], ["0.0.0.0:8000"]),
    (["--host", "::1", "--port", "9"], ["[::1]:9"]),
    (["--uds", "/run/app.sock"], ["unix:/run/app.sock"]),
    (["--fd", "3"], ["fd://3"]),
    # With --bind too, every address is served: --bind's first, then --host/--port, --uds, --fd.
    (["-b", "unix:/a.sock", "--port", "1", "--uds", "/b.sock"],
     ["unix:/a.sock", "127.0.0.1:1", "unix:/b.sock"]),
    # gunicorn's short forms
    (["--bind", ":8001"], ["0.0.0.0:8001"]),
    (["--bind", "example.com"], ["example.com:8000"]),
    (["--bind", "[::]:80"], ["[::]:80"]),
])
def test_uvicorn_and_gunicorn_addresses(argv, binds):
    assert parse(*argv).bind == binds


def test_host_and_port_replace_the_environment_bind_like_any_command_line_bind():
    config = parse("--port", "9", DUCK_PREFORK_BIND="10.0.0.1:80")
    assert config.bind == ["127.0.0.1:9"]


def test_a_bad_port_names_the_flag():
    with pytest.raises(ConfigError, match="--host/--port"):
        parse("--port", "99999")


# --- refusals and no prefix matching ----------------------------------------------------------

@pytest.mark.parametrize(("argv", "advice"), [
    (["-k", "uvicorn.workers.UvicornWorker"], "no other worker class"),
    (["--worker-class", "sync"], "no other worker class"),
    (["--threads", "4"], "--workers"),
    (["--worker-connections", "1000"], "--limit-concurrency"),
    (["--loop", "asyncio"], "uvloop"),
    (["-D"], "systemd"),
    (["--daemon"], "systemd"),
    (["--ssl-keyfile-password", "secret"], "--keyfile-password-file"),
    (["--ssl-cert-reqs", "2"], "--client-cert"),
    (["--cert-reqs", "2"], "--client-cert"),
    (["--ssl-version", "17"], "--tls-min-version"),
])
def test_habit_flags_without_an_equivalent_are_refused_with_advice(capsys, argv, advice):
    err = refused(capsys, *argv)
    assert argv[0] in err and advice in err and "not supported" in err


def test_every_refused_flag_is_tested():
    source = open(__file__).read()
    for flags, _, _ in REFUSED:
        for flag in flags:
            assert f'["{flag}"' in source, f"{flag} has no test"


def test_no_prefix_matching(capsys):
    err = refused(capsys, "--grace", "5")
    assert "unrecognized option --grace" in err and "did you mean --graceful-timeout" in err
    err = refused(capsys, "--work", "3")
    assert "unrecognized option --work" in err
    err = refused(capsys, "--workrs", "3")
    assert "did you mean --workers" in err


# --- the environment --------------------------------------------------------------------------

def test_a_misspelled_variable_is_an_error_naming_the_closest_option():
    with pytest.raises(ConfigError) as info:
        build_config(None, {}, {"DUCK_PREFORK_WORKRS": "3"})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("DUCK_PREFORK_WORKRS: no such option")
    assert "DUCK_PREFORK_WORKERS" in message


def test_an_unknown_variable_with_nothing_close_is_still_an_error():
    with pytest.raises(ConfigError, match="DUCK_PREFORK_ZZZZZZZZ: no such option"):
        build_config(None, {}, {"DUCK_PREFORK_ZZZZZZZZ": "1"})


def test_our_own_variables_that_are_not_options_are_accepted():
    environ = dict.fromkeys(OTHER_ENV, "")
    environ["DUCK_PREFORK_APP"] = "tests.apps.basic:app"
    assert build_config(None, {}, environ).app == "tests.apps.basic:app"
    from duck_prefork import build
    from duck_prefork.master import upgrade

    assert {build.PURE_ENV, upgrade.INHERIT_ENV, upgrade.CHECKED_CONFIG_ENV} <= set(OTHER_ENV)


def test_a_misspelled_variable_exits_1_with_one_line():
    import subprocess

    result = subprocess.run([sys.executable, "-m", "duck_prefork", "--check-config"],
                            env={**os.environ, "DUCK_PREFORK_WORKRS": "3"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "DUCK_PREFORK_WORKERS" in result.stderr


def test_a_misspelled_toml_key_names_the_closest_option():
    from duck_prefork.config import from_table

    with pytest.raises(ConfigError, match="unknown key 'graceful-timout'; did you mean "
                                          "'graceful-timeout'"):
        from_table({"graceful-timout": 3}, "f.toml")


# --- combinations -----------------------------------------------------------------------------

def test_reload_is_refused_with_preload():
    with pytest.raises(ConfigError, match="--reload cannot be combined with --preload"):
        parse("--reload", "--preload")


def test_json_and_a_format_exclude_each_other():
    with pytest.raises(ConfigError, match="exclude each other"):
        parse("--access-log-json", "--access-logformat", "%(h)s")


# --- access log formats -----------------------------------------------------------------------

WHEN = 1_765_000_000.25  # 2025-12-06 05:46:40.250 UTC
HEADERS = [(b"host", b"x"), (b"referer", b"http://ref/"), (b"user-agent", b"curl/8 \"q\""),
           (b"x-request-id", b"abc")]
RECORD = (WHEN, ("10.0.0.1", 5555), "GET", b"/p/a?x=1", "1.1", 404, 12, 0.0042, HEADERS, "")


def test_the_default_line_is_the_combined_format_with_milliseconds():
    line = access_log.access_formatter()(RECORD)
    assert line == ('10.0.0.1 - - [06/Dec/2025:05:46:40 +0000] "GET /p/a?x=1 HTTP/1.1" 404 12 '
                    '"http://ref/" "curl/8 "q"" 4')


@pytest.mark.parametrize("record", [
    RECORD,
    (WHEN + 0.999, None, "POST", "/x", "1.0", 500, 0, 2.5, (), ""),
    (WHEN, ("::1", 1), "GET", "/é?q", "1.1", 200, 5, 0.0, [(b"referer", b""),
                                                          (b"user-agent", b"\xe9")], " up=x"),
])
def test_the_written_out_default_line_is_the_one_its_atoms_make(record):
    """CombinedLine (the default, as code) and the default format compiled from its atoms."""
    assert access_log.CombinedLine()(record) == \
        access_log.format_line(access_log.DEFAULT_ACCESS_FORMAT)(record)


@pytest.mark.parametrize(("atom", "value"), [
    ("h", "10.0.0.1"), ("l", "-"), ("u", "-"), ("t", "[06/Dec/2025:05:46:40 +0000]"),
    ("r", "GET /p/a?x=1 HTTP/1.1"), ("m", "GET"), ("U", "/p/a"), ("q", "x=1"),
    ("H", "HTTP/1.1"), ("s", "404"), ("B", "12"), ("b", "12"), ("f", "http://ref/"),
    ("a", 'curl/8 "q"'), ("T", "0"), ("M", "4"), ("D", "4000"), ("L", "0.004"),
    ("p", f"<{os.getpid()}>"), ("{X-Request-Id}i", "abc"), ("{missing}i", "-"),
])
def test_each_gunicorn_atom(atom, value):
    assert access_log.format_line(f"%({atom})s")(RECORD) == value


def test_a_passed_through_response_has_its_upstream_at_the_end_or_in_the_json():
    record = (*RECORD[:9], " upstream=unix:/run/d.sock upstream_time=0.002")
    assert access_log.access_formatter()(record).endswith(
        ' 4 upstream=unix:/run/d.sock upstream_time=0.002')
    entry = json.loads(access_log.JsonLine()(record))
    assert entry["upstream"] == "unix:/run/d.sock" and entry["upstream_time"] == "0.002"
    assert entry["status"] == 404


def test_no_client_no_headers_no_bytes():
    record = (WHEN, None, "POST", "/x", "1.0", 500, 0, 2.5, (), "")
    assert access_log.format_line('%(h)s %(b)s %(B)s "%(f)s" "%(a)s" %(M)s')(record) == \
        '- - 0 "-" "-" 2500'


@pytest.mark.parametrize(("fmt", "reason"), [
    ("%(h)s %(nope)s", "unknown atom %(nope)s"),
    ("%(h)d", "not a valid format"),
    ("plain text", "expected gunicorn's atoms"),
])
def test_a_bad_format_is_refused(fmt, reason):
    with pytest.raises(ConfigError, match=re.escape(reason)):
        parse("--access-logformat", fmt)


def test_a_custom_format_from_the_command_line():
    config = parse("--access-logformat", '%(h)s "%(r)s" %(s)s %(M)sms')
    assert access_log.access_formatter(config.access_logformat)(RECORD) == \
        '10.0.0.1 "GET /p/a?x=1 HTTP/1.1" 404 4ms'


def test_json_lines_parse_back():
    entry = json.loads(access_log.JsonLine()(RECORD))
    assert entry == {
        "time": "2025-12-06T05:46:40.250Z", "client": "10.0.0.1", "client_port": 5555,
        "method": "GET", "path": "/p/a", "query": "x=1", "protocol": "HTTP/1.1",
        "status": 404, "bytes": 12, "duration_ms": 4, "referrer": "http://ref/",
        "user_agent": 'curl/8 "q"', "pid": os.getpid(), "worker": entry["worker"],
    }
    empty = json.loads(access_log.JsonLine()((WHEN, None, "GET", "/", "1.1", 200, 0, 0.0, [],
                                              "")))
    assert empty["client"] is None and empty["referrer"] is None and empty["user_agent"] is None


def wait_lines(path, count: int) -> list[str]:
    deadline = time.monotonic() + 15
    while True:
        text = path.read_text() if path.exists() else ""
        if text.count("\n") >= count:
            return text.splitlines()
        assert time.monotonic() < deadline, f"{count} lines not written: {text!r}"
        time.sleep(0.01)


def test_the_writer_thread_writes_json_lines(tmp_path):
    path = tmp_path / "access.log"
    writer = access_log.AccessLog(str(path), formatter=access_log.access_formatter(as_json=True))
    try:
        writer.write(("10.0.0.2", 1), "GET", b"/a", "1.1", 200, 3, 0.001, HEADERS)
        writer.write(None, "HEAD", "/b", "1.0", 304, 0, 0.0)
        lines = wait_lines(path, 2)
    finally:
        writer.close(5.0)
    entries = [json.loads(line) for line in lines]
    assert [(e["method"], e["path"], e["status"], e["client"]) for e in entries] == \
        [("GET", "/a", 200, "10.0.0.2"), ("HEAD", "/b", 304, None)]


# --- --log-config -----------------------------------------------------------------------------

@pytest.fixture
def clean_logging():
    """--log-config changes global logging state: put our two loggers back afterwards."""
    saved = {name: (logger.handlers[:], logger.level, logger.propagate, logger.disabled)
             for name, logger in ((n, logging.getLogger(n))
                                  for n in (logs.ERROR_LOGGER, logs.ACCESS_LOGGER))}
    yield
    for name, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled


def dict_config(tmp_path) -> dict:
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(name)s %(levelname)s %(role)s %(message)s"}},
        "handlers": {
            "errors": {"class": "logging.FileHandler", "filename": str(tmp_path / "errors.log"),
                       "formatter": "plain"},
            "access": {"class": "logging.FileHandler", "filename": str(tmp_path / "access.log"),
                       "formatter": "plain"},
        },
        "loggers": {
            "duck_prefork.error": {"handlers": ["errors"], "level": "INFO", "propagate": False},
            "duck_prefork.access": {"handlers": ["access"], "level": "INFO",
                                    "propagate": False},
        },
    }


def toml_text(config: dict) -> str:
    lines = [f"version = {config['version']}"]
    for section in ("formatters", "handlers", "loggers"):
        for name, table in config[section].items():
            lines.append(f'[{section}."{name}"]')
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


INI = """\
[loggers]
keys = root, error, access
[handlers]
keys = errors, access
[formatters]
keys = plain
[logger_root]
handlers =
[logger_error]
qualname = duck_prefork.error
handlers = errors
propagate = 0
level = INFO
[logger_access]
qualname = duck_prefork.access
handlers = access
propagate = 0
level = INFO
[handler_errors]
class = FileHandler
args = ({errors!r},)
formatter = plain
[handler_access]
class = FileHandler
args = ({access!r},)
formatter = plain
[formatter_plain]
format = %(name)s %(levelname)s %(role)s %(message)s
"""


@pytest.mark.parametrize("kind", ["json", "toml", "ini"])
def test_log_config_files_route_both_loggers(tmp_path, clean_logging, kind):
    config = dict_config(tmp_path)
    path = tmp_path / f"logging.{kind}"
    if kind == "json":
        path.write_text(json.dumps(config))
    elif kind == "toml":
        path.write_text(toml_text(config))
    else:
        path.write_text(INI.format(errors=str(tmp_path / "errors.log"),
                                   access=str(tmp_path / "access.log")))
    assert parse("--log-config", str(path)).log_config == str(path)
    logs.setup_error_log("-", "info")  # what the master does first
    logs.load_log_config(str(path))
    assert logs.access_logger_configured()
    logs.log.info("an operator event")
    writer = access_log.AccessLog("", logger=logs.access_logger)
    try:
        writer.write(("10.0.0.3", 2), "GET", b"/logged", "1.1", 200, 1, 0.0, [])
        lines = wait_lines(tmp_path / "access.log", 1)
    finally:
        writer.close(5.0)
    assert lines[0].startswith('duck_prefork.access INFO ')
    assert '"GET /logged HTTP/1.1" 200 1' in lines[0]
    for handler in logging.getLogger(logs.ERROR_LOGGER).handlers:
        handler.flush()
    assert (tmp_path / "errors.log").read_text() == \
        "duck_prefork.error INFO master an operator event\n"


def test_without_log_config_the_access_logger_has_no_handler():
    assert not logs.access_logger_configured()


@pytest.mark.parametrize(("content", "reason"), [
    ("{not json", "Expecting property name"),
    ("[1, 2]", "expected a dictConfig mapping"),
    ('{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}',
     "Unable to configure handler 'h': .*no"),
])
def test_a_bad_log_config_is_one_error(tmp_path, clean_logging, content, reason):
    path = tmp_path / "logging.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=reason):
        logs.load_log_config(str(path))


def test_a_missing_log_config_file_is_refused():
    with pytest.raises(ConfigError, match="--log-config: no such file"):
        parse("--log-config", "/no/such/logging.json")


# --- --reload's pieces ------------------------------------------------------------------------

def test_reload_options_and_the_watchers_command_line(tmp_path):
    config = parse("--reload", "--reload-dir", str(tmp_path), "--reload-include", "*.html",
                   "--reload-exclude", "*_test.py")
    spec = json.loads(reload.watcher_argv(config, 123)[-1])
    assert spec["master"] == 123 and spec["dirs"] == [str(tmp_path)]
    assert spec["include"] == ["*.py", "*.html"] and spec["exclude"] == ["*_test.py"]
    default = json.loads(reload.watcher_argv(parse("--reload"), 1)[-1])
    assert default["dirs"] == [os.getcwd()]


@pytest.mark.parametrize(("path", "wanted"), [
    ("/src/app.py", True), ("/src/page.html", True), ("/src/app_test.py", False),
    ("/src/notes.txt", False),
])
def test_which_changes_count(path, wanted):
    include, exclude = ["*.py", "*.html"], ["*_test.py"]
    assert (reload.matches(path, include) and not reload.matches(path, exclude)) == wanted


def test_reload_without_watchfiles_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "watchfiles", None)
    with pytest.raises(ConfigError) as info:
        reload.check_available()
    assert str(info.value) == "--reload needs watchfiles: pip install 'duck-prefork[reload]'"


def test_plural():
    assert (logs.plural(1, "worker"), logs.plural(0, "worker"), logs.plural(2, "request")) == \
        ("1 worker", "0 workers", "2 requests")


def test_the_lifespan_message_says_what_the_app_did():
    from duck_prefork.asgi.lifespan import _why_unsupported

    assert _why_unsupported(None, None) == "it returned without answering lifespan.startup"
    assert _why_unsupported(AssertionError(), None) == "it raised AssertionError"
    assert _why_unsupported(ValueError("no lifespan"), None) == \
        "it raised ValueError: no lifespan"
    assert _why_unsupported({"type": "http.response.start"}, "http.response.start") == \
        "it answered lifespan.startup with 'http.response.start'"


def test_debug_logs_a_line_per_connection_and_none_per_request(caplog):
    import asyncio

    from duck_prefork.http1.connection import HttpConnection, ServerState
    from duck_prefork.http1.parser_h11 import H11Parser

    from .fakes import FakeTransport

    class Handler:
        def __call__(self, app, stream):
            async def serve():
                stream.send_head(200, [], b"ok", False)
            return serve()

    async def run(level):
        caplog.clear()
        caplog.set_level(level, logger=logs.ERROR_LOGGER)
        state = ServerState(None, Handler(), H11Parser, 5.0, timing=False)
        connection = HttpConnection(state)
        transport = FakeTransport()
        transport.protocol = connection
        connection.connection_made(transport)
        for _ in range(2):
            connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(5):
                await asyncio.sleep(0)
        connection.connection_lost(None)
        return [record.getMessage() for record in caplog.records
                if record.name == logs.ERROR_LOGGER]

    assert asyncio.run(run(logging.DEBUG)) == [
        "connection from 10.0.0.1:5555 to 127.0.0.1:8000",
        "connection from 10.0.0.1:5555 closed after 2 requests"]
    assert asyncio.run(run(logging.INFO)) == []
