"""Option parsing and precedence: command line > DUCK_PREFORK_* environment > default."""

from __future__ import annotations

import pytest

from duck_prefork import cli
from duck_prefork.config import (
    ConfigError,
    boolean,
    non_negative_float,
    one_of,
    positive_int,
)

pytestmark = pytest.mark.timeout(30)


def parse(*argv: str, **environ: str):
    return cli.parse_args(list(argv), environ=dict(environ))


# --- value parsers ------------------------------------------------------------------------


@pytest.mark.parametrize("text, value", [("1", 1), ("16", 16), (" 4 ", 4)])
def test_positive_int_accepts(text, value):
    assert positive_int(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "two", "", "1.5"])
def test_positive_int_refuses(text):
    with pytest.raises(ValueError):
        positive_int(text)


@pytest.mark.parametrize("text, value", [("0", 0.0), ("2.5", 2.5), ("30", 30.0)])
def test_seconds_accepts(text, value):
    assert non_negative_float(text) == value


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "soon", ""])
def test_seconds_refuses(text):
    with pytest.raises(ValueError):
        non_negative_float(text)


def test_choice_is_case_insensitive_and_stripped():
    parse_choice = one_of("auto", "on", "off")
    assert parse_choice(" ON ") == "on"
    with pytest.raises(ValueError, match="auto, on, off"):
        parse_choice("maybe")


@pytest.mark.parametrize("text", ["1", "true", "YES", "on"])
def test_boolean_true(text):
    assert boolean(text) is True


@pytest.mark.parametrize("text", ["0", "false", "No", "off", ""])
def test_boolean_false(text):
    assert boolean(text) is False


def test_boolean_refuses_other_words():
    with pytest.raises(ValueError):
        boolean("maybe")


# --- defaults and the command line ----------------------------------------------------------


def test_defaults():
    config = parse()
    assert config.app == ""  # the demo app
    assert config.bind == ["127.0.0.1:8000"]
    assert config.workers >= 1
    assert config.factory is False
    assert config.graceful_timeout == 30.0
    assert config.keep_alive == 75.0  # above nginx's upstream keepalive_timeout (60 s)
    assert config.max_requests_per_connection == 1000
    assert config.drain_delay == 0.0
    assert config.health_path == config.ready_path == config.agent_bind == ""
    assert config.backlog == 2048
    assert config.root_path == ""
    assert config.lifespan == "auto"
    assert config.http == "auto"
    assert config.log_level == "info"


def test_command_line_values_are_parsed():
    config = parse("pkg.mod:app", "-w", "3", "--graceful-timeout", "1.5", "--keep-alive", "0",
                   "--lifespan", "OFF", "--log-level", "debug", "--factory",
                   "--root-path", "/api/", "--backlog", "10", "--http", "h11")
    assert config.http == "h11"
    assert config.app == "pkg.mod:app"
    assert config.workers == 3
    assert config.graceful_timeout == 1.5
    assert config.keep_alive == 0.0
    assert config.lifespan == "off"
    assert config.log_level == "debug"
    assert config.factory is True
    assert config.root_path == "/api"  # trailing slash dropped
    assert config.backlog == 10


def test_bind_is_repeatable():
    config = parse("-b", "127.0.0.1:1", "--bind", "unix:/tmp/x.sock", "--bind", "fd://3")
    assert config.bind == ["127.0.0.1:1", "unix:/tmp/x.sock", "fd://3"]


def test_unknown_attribute_is_attribute_error():
    with pytest.raises(AttributeError):
        parse().no_such_option  # noqa: B018


# --- the environment --------------------------------------------------------------------------


def test_environment_sets_options():
    config = parse(DUCK_PREFORK_WORKERS="7", DUCK_PREFORK_LIFESPAN="on",
                   DUCK_PREFORK_FACTORY="yes", DUCK_PREFORK_APP="a.b:c",
                   DUCK_PREFORK_HTTP="httptools")
    assert config.http == "httptools"
    assert config.workers == 7
    assert config.lifespan == "on"
    assert config.factory is True
    assert config.app == "a.b:c"


def test_command_line_wins_over_environment():
    config = parse("x:app", "--workers", "2", "--bind", "127.0.0.1:9",
                   DUCK_PREFORK_WORKERS="7", DUCK_PREFORK_BIND="127.0.0.1:1",
                   DUCK_PREFORK_APP="y:app")
    assert config.workers == 2
    assert config.bind == ["127.0.0.1:9"]
    assert config.app == "x:app"


def test_environment_bind_is_a_comma_list():
    config = parse(DUCK_PREFORK_BIND="127.0.0.1:1, [::1]:2 ,unix:/tmp/a.sock,")
    assert config.bind == ["127.0.0.1:1", "[::1]:2", "unix:/tmp/a.sock"]


def test_empty_environment_bind_does_not_leave_the_server_without_listeners():
    # DUCK_PREFORK_BIND="" must not silently become "listen nowhere".
    try:
        config = parse(DUCK_PREFORK_BIND="")
    except ConfigError as exc:
        assert "DUCK_PREFORK_BIND" in str(exc)
    else:
        assert config.bind, "an empty DUCK_PREFORK_BIND gave an empty list of addresses"


def test_environment_flag_can_be_false():
    assert parse(DUCK_PREFORK_FACTORY="0").factory is False


# --- errors name the option -------------------------------------------------------------------


@pytest.mark.parametrize("argv, environ, name", [
    (["--workers", "0"], {}, "--workers"),
    (["--workers", "many"], {}, "--workers"),
    (["--backlog", "-5"], {}, "--backlog"),
    (["--graceful-timeout", "-1"], {}, "--graceful-timeout"),
    (["--keep-alive", "nan"], {}, "--keep-alive"),
    (["--lifespan", "maybe"], {}, "--lifespan"),
    (["--http", "llhttp"], {}, "--http"),
    ([], {"DUCK_PREFORK_HTTP": "fast"}, "DUCK_PREFORK_HTTP"),
    (["--log-level", "loud"], {}, "--log-level"),
    (["--root-path", "api"], {}, "--root-path"),
    (["--bind", "nonsense:port"], {}, "--bind"),
    ([], {"DUCK_PREFORK_WORKERS": "0"}, "DUCK_PREFORK_WORKERS"),
    ([], {"DUCK_PREFORK_WORKERS": "x"}, "DUCK_PREFORK_WORKERS"),
    ([], {"DUCK_PREFORK_KEEP_ALIVE": "soon"}, "DUCK_PREFORK_KEEP_ALIVE"),
    ([], {"DUCK_PREFORK_FACTORY": "maybe"}, "DUCK_PREFORK_FACTORY"),
    ([], {"DUCK_PREFORK_BIND": "127.0.0.1:1,nonsense:port"}, "DUCK_PREFORK_BIND"),
    (["--drain-delay", "-1"], {}, "--drain-delay"),
    (["--health-path", "healthz"], {}, "--health-path"),
    (["--ready-path", "/ready?full=1"], {}, "--ready-path"),
    (["--min-ready", "0"], {}, "--min-ready"),
    (["--agent-bind", "unix:/tmp/agent.sock"], {}, "--agent-bind"),
    (["--agent-bind", "https://127.0.0.1:9100"], {}, "--agent-bind"),
    (["--max-requests-per-connection", "-1"], {}, "--max-requests-per-connection"),
    ([], {"DUCK_PREFORK_DRAIN_DELAY": "later"}, "DUCK_PREFORK_DRAIN_DELAY"),
    (["--http2", "maybe"], {}, "--http2"),
    (["--http2-max-concurrent-streams", "0"], {}, "--http2-max-concurrent-streams"),
    (["--http2-max-resets", "x"], {}, "--http2-max-resets"),
    ([], {"DUCK_PREFORK_HTTP2_MAX_STREAMS": "-1"}, "DUCK_PREFORK_HTTP2_MAX_STREAMS"),
])
def test_config_error_names_the_option(argv, environ, name):
    with pytest.raises(ConfigError) as info:
        cli.parse_args(argv, environ=environ)
    message = str(info.value)
    assert message.startswith(name + ":")
    assert "\n" not in message


def test_one_path_cannot_be_both_probes():
    with pytest.raises(ConfigError, match="--health-path and --ready-path"):
        parse("--health-path", "/probe", "--ready-path", "/probe")


def test_http2_defaults_and_switch():
    config = parse()
    assert config.http2 is True and config.http2_max_concurrent_streams == 100
    assert config.http2_max_header_list_size == 65536 and config.http2_max_streams == 10000
    assert parse("--http2", "false").http2 is False
    assert parse(DUCK_PREFORK_HTTP2="off").http2 is False


def test_config_error_shows_the_value_and_reason():
    with pytest.raises(ConfigError) as info:
        parse("--workers", "0")
    assert str(info.value) == "--workers: must be a positive integer, got '0'"
    with pytest.raises(ConfigError) as info:
        parse("--workers", "many")
    assert str(info.value) == "--workers: not a valid value, got 'many'"


@pytest.mark.parametrize("app", ["notanapp", "pkg.module"])
def test_app_without_colon_is_an_error(app):
    with pytest.raises(ConfigError, match="APP"):
        parse(app)


def test_app_without_colon_from_environment_is_an_error():
    with pytest.raises(ConfigError, match="APP"):
        parse(DUCK_PREFORK_APP="notanapp")


def test_unknown_option_exits_1(capsys):
    with pytest.raises(SystemExit) as info:
        parse("--no-such-option")
    assert info.value.code == cli.EXIT_USAGE
    assert "--no-such-option" in capsys.readouterr().err


# --- --response-header -------------------------------------------------------------------


def test_response_header_is_repeatable_and_normalized():
    config = parse("--response-header", "Strict-Transport-Security:max-age=31536000",
                   "--response-header", " X-Content-Type-Options :  nosniff ")
    assert config.response_header == ["Strict-Transport-Security: max-age=31536000",
                                      "X-Content-Type-Options: nosniff"]
    assert parse().response_header == []
    # a value may hold colons; the environment takes a comma list
    assert parse("--response-header", "Link:<https://a/b>; rel=x").response_header == \
        ["Link: <https://a/b>; rel=x"]
    assert parse(DUCK_PREFORK_RESPONSE_HEADER="X-A:1,X-B:2").response_header == \
        ["X-A: 1", "X-B: 2"]


@pytest.mark.parametrize("value, reason", [
    ("X-Frame-Options", "expected NAME:VALUE"),
    (":nosniff", "expected NAME:VALUE"),
    ("X Frame:deny", "not a header name"),
    ("X-Frame\u00e9:deny", "not a header name"),
    ("X-A:one\rX-B: two", "visible ASCII"),
    ("X-A:one\nX-B: two", "visible ASCII"),
    ("X-A:a\0b", "visible ASCII"),
    ("X-A:caf\u00e9", "visible ASCII"),
    ("Content-Length:5", "set by the server"),
    ("transfer-encoding:chunked", "set by the server"),
    ("Connection:close", "set by the server"),
])
def test_bad_response_header_is_one_line_naming_it(value, reason):
    with pytest.raises(ConfigError) as info:
        parse("--response-header", value)
    message = str(info.value)
    assert message.startswith("--response-header: ") and reason in message
    assert "\n" not in message and "\r" not in message.replace("\\r", "")


def test_response_header_round_trips_through_check_config_toml():
    from duck_prefork.config import from_toml_text

    config = parse("--response-header", "X-A:1")
    assert from_toml_text(cli.describe(config), "check").response_header == ["X-A: 1"]
    assert from_toml_text(cli.describe(parse()), "check").response_header == []
