"""The sans-IO parts of --upstream: routes (longest prefix, whole segments, nginx's proxy_pass
target rule), the option's syntax, and the headers each way."""

from __future__ import annotations

import pytest

from duck_prefork.config import ConfigError, build_config
from duck_prefork.upstream.headers import connection_tokens, request_headers, response_headers
from duck_prefork.upstream.routes import RouteTable, Upstream, origin_form, parse_upstream


def target_of(specs: list[str], target: bytes) -> tuple[str, bytes] | None:
    match = RouteTable.parse(specs).match(target)
    if match is None:
        return None
    route, sent = match
    assert route.upstream is not None
    return route.upstream.name, sent


# nginx's proxy_pass rule: a URL without a path forwards the target as it came; a URL with a
# path (even "/") has it replace the prefix.
@pytest.mark.parametrize("spec, target, sent", [
    ("/legacy=http://u:8001", b"/legacy/a?x=1", b"/legacy/a?x=1"),
    ("/legacy/=http://u:8001/", b"/legacy/a?x=1", b"/a?x=1"),
    ("/legacy=http://u:8001/old", b"/legacy/a?x=1", b"/old/a?x=1"),
    ("/legacy/=http://u:8001/old/", b"/legacy/a?x=1", b"/old/a?x=1"),
    ("/legacy=http://u:8001/old", b"/legacy", b"/old"),
    ("/legacy=http://u:8001/old", b"/legacy?q", b"/old?q"),
    ("/legacy=http://u:8001/", b"/legacy/a", b"//a"),  # as nginx: slashes joined literally
    ("/=unix:/run/app.sock", b"/anything/%2F?q=%20", b"/anything/%2F?q=%20"),
    ("/=http://u/base/", b"/x", b"/base/x"),
])
def test_nginx_proxy_pass_target_rule(spec, target, sent):
    assert target_of([spec], target)[1] == sent


def test_longest_prefix_wins_and_app_routes_carve_out():
    specs = ["/=unix:/run/django.sock", "/api/v2=app", "/api=http://127.0.0.1:9000",
             "/api/v2/legacy=http://127.0.0.1:9001"]
    assert target_of(specs, b"/")[0] == "unix:/run/django.sock"
    assert target_of(specs, b"/about/") == ("unix:/run/django.sock", b"/about/")
    assert target_of(specs, b"/api/v1/x")[0] == "http://127.0.0.1:9000"
    assert target_of(specs, b"/api/v2") is None  # the ASGI app
    assert target_of(specs, b"/api/v2/users?x=1") is None
    assert target_of(specs, b"/api/v2/legacy/x")[0] == "http://127.0.0.1:9001"
    assert target_of(specs, b"/api/v2beta")[0] == "http://127.0.0.1:9000"  # whole segments


def test_prefix_matches_whole_segments_unless_it_ends_in_a_slash():
    assert target_of(["/api=http://u"], b"/api") is not None
    assert target_of(["/api=http://u"], b"/api/") is not None
    assert target_of(["/api=http://u"], b"/api?x") is not None
    assert target_of(["/api=http://u"], b"/apis") is None
    assert target_of(["/api/=http://u"], b"/api") is None
    assert target_of(["/api/=http://u"], b"/api/x") is not None
    assert target_of(["/files/a=http://u"], b"/files/ab") is None


def test_targets_that_are_not_paths():
    specs = ["/=http://u"]
    assert target_of(specs, b"*") is None
    assert target_of(specs, b"example.com:443") is None
    assert target_of(specs, b"http://example.com/a?b") == ("http://u", b"/a?b")
    assert target_of(specs, b"http://example.com") == ("http://u", b"/")
    assert origin_form(b"http://h?x") == b"/?x"


def test_no_route_no_match():
    assert target_of(["/legacy=http://u"], b"/other") is None
    assert RouteTable([]).match(b"/") is None


def test_upstreams_are_shared_between_routes():
    table = RouteTable.parse(["/a=http://u:1", "/b=http://u:1/b", "/c=unix:/s", "/d=app"])
    assert [upstream.name for upstream in table.upstreams] == ["http://u:1", "unix:/s"]


@pytest.mark.parametrize("spec, upstream", [
    ("/=http://127.0.0.1:8001", Upstream("http://127.0.0.1:8001", "127.0.0.1", 8001,
                                          authority=b"127.0.0.1:8001")),
    ("/=http://django.internal", Upstream("http://django.internal", "django.internal", 80,
                                           authority=b"django.internal")),
    ("/=http://[::1]:8001/x", Upstream("http://[::1]:8001", "::1", 8001,
                                        authority=b"[::1]:8001")),
    ("/=unix:/run/app.sock", Upstream("unix:/run/app.sock", path="/run/app.sock")),
])
def test_upstream_urls(spec, upstream):
    assert parse_upstream(spec).upstream == upstream


@pytest.mark.parametrize("spec, why", [
    ("/", "expected PREFIX=URL"),
    ("api=http://u", "must start with /"),
    ("/=https://u", "https:// upstreams are not supported"),
    ("/=u:80", "expected a URL"),
    ("/=http://:80", "no host"),
    ("/=http://u:99999", "bad port"),
    ("/=http://u/a?b", "nothing else"),
    ("/=unix:run.sock", "unix:/absolute/path"),
    ("/a b=http://u", "ASCII path without spaces"),
])
def test_bad_upstream_specs(spec, why):
    with pytest.raises(ValueError, match=why):
        parse_upstream(spec)


def test_upstream_option_from_everywhere():
    config = build_config(None, {"upstream": ["/=unix:/run/d.sock", "/api/v2=app"]}, {})
    assert config.upstream == ["/=unix:/run/d.sock", "/api/v2=app"]
    config = build_config(None, {}, {"DUCK_PREFORK_UPSTREAM": "/=http://u:1,/x=app",
                                     "DUCK_PREFORK_UPSTREAM_TIMEOUT": "5"})
    assert config.upstream == ["/=http://u:1", "/x=app"] and config.upstream_timeout == 5.0
    with pytest.raises(ConfigError, match="DUCK_PREFORK_UPSTREAM: .*https://"):
        build_config(None, {}, {"DUCK_PREFORK_UPSTREAM": "/=https://u"})


# --- headers --------------------------------------------------------------------------------

CLIENT = [(b"host", b"shop.test"), (b"connection", b"keep-alive, X-Private"),
          (b"x-private", b"1"), (b"keep-alive", b"300"), (b"te", b"trailers"),
          (b"transfer-encoding", b"chunked"), (b"proxy-connection", b"keep-alive"),
          (b"upgrade", b"h2c"), (b"trailer", b"x"), (b"expect", b"100-continue"),
          (b"accept", b"*/*"), (b"cookie", b"a=1")]


def names(headers) -> list[bytes]:
    return [name for name, _ in headers]


def test_request_hop_by_hop_fields_are_removed():
    out = request_headers(CLIENT, ("192.0.2.7", 5000), False, "http", b"shop.test", b"u")
    assert names(out) == [b"host", b"accept", b"cookie", b"x-forwarded-for",
                          b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"]
    assert dict(out)[b"forwarded"] == b"for=192.0.2.7;proto=http;host=shop.test"


def test_forwarded_from_an_untrusted_peer_is_replaced():
    headers = [(b"host", b"h"), (b"x-forwarded-for", b"203.0.113.1"),
               (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"evil"),
               (b"forwarded", b"for=203.0.113.1")]
    out = dict(request_headers(headers, ("192.0.2.7", 1), False, "http", b"h", b"u"))
    assert out[b"x-forwarded-for"] == b"192.0.2.7"
    assert out[b"x-forwarded-proto"] == b"http"
    assert out[b"x-forwarded-host"] == b"h"
    assert out[b"forwarded"] == b"for=192.0.2.7;proto=http;host=h"


def test_forwarded_from_a_trusted_peer_is_appended_to():
    headers = [(b"host", b"h"), (b"x-forwarded-for", b"203.0.113.1, 10.0.0.1"),
               (b"x-forwarded-proto", b"https"), (b"forwarded", b'for="[2001:db8::1]"')]
    # The scope's scheme and host are what the trusted proxy said (asgi/forwarded.py).
    out = dict(request_headers(headers, ("10.0.0.2", 1), True, "https", b"shop.test:8443",
                               b"u"))
    assert out[b"x-forwarded-for"] == b"203.0.113.1, 10.0.0.1, 10.0.0.2"
    assert out[b"x-forwarded-proto"] == b"https"
    assert out[b"x-forwarded-host"] == b"shop.test:8443"
    assert out[b"forwarded"] == \
        b'for="[2001:db8::1]", for=10.0.0.2;proto=https;host="shop.test:8443"'
    assert out[b"host"] == b"h"  # the Host as received


def test_ipv6_and_unix_socket_peers():
    out = dict(request_headers([(b"host", b"h")], ("2001:db8::5", 1), False, "http", b"h",
                               b"u"))
    assert out[b"x-forwarded-for"] == b"2001:db8::5"
    assert out[b"forwarded"].startswith(b'for="[2001:db8::5]";')
    out = dict(request_headers([(b"host", b"h")], None, False, "http", b"h", b"u"))
    assert out[b"x-forwarded-for"] == b"unknown"
    assert out[b"forwarded"].startswith(b"for=unknown;")


def test_no_host_gets_the_upstreams_authority():
    out = request_headers([], ("192.0.2.7", 1), False, "http", None, b"127.0.0.1:8001")
    assert (b"host", b"127.0.0.1:8001") in out
    assert b"x-forwarded-host" not in names(out)


def test_an_upgrade_keeps_upgrade_and_connection():
    headers = [(b"host", b"h"), (b"connection", b"Upgrade"), (b"upgrade", b"websocket"),
               (b"sec-websocket-key", b"k")]
    out = request_headers(headers, ("192.0.2.7", 1), False, "http", b"h", b"u",
                          upgrade=b"websocket")
    assert out[-2:] == [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    assert (b"sec-websocket-key", b"k") in out
    assert names(out).count(b"upgrade") == 1 and names(out).count(b"connection") == 1


def test_response_hop_by_hop_server_and_date_are_removed():
    upstream = [(b"connection", b"X-Secret, keep-alive"), (b"keep-alive", b"timeout=5"),
                (b"x-secret", b"1"), (b"transfer-encoding", b"chunked"), (b"server", b"gunicorn"),
                (b"date", b"Mon"), (b"content-length", b"5"), (b"set-cookie", b"a=1"),
                (b"set-cookie", b"b=2"), (b"upgrade", b"h2c")]
    assert response_headers(upstream) == [(b"content-length", b"5"), (b"set-cookie", b"a=1"),
                                          (b"set-cookie", b"b=2")]


def test_a_101_keeps_its_upgrade():
    upstream = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
                (b"sec-websocket-accept", b"abc")]
    assert response_headers(upstream, keep_upgrade=True) == [
        (b"sec-websocket-accept", b"abc"), (b"upgrade", b"websocket"),
        (b"connection", b"upgrade")]


def test_connection_tokens():
    assert connection_tokens([(b"Connection", b" Keep-Alive , X-A,,"), (b"x", b"close")]) == \
        {b"keep-alive", b"x-a"}


def test_a_worker_without_upstreams_builds_the_plain_pipeline():
    from duck_prefork.asgi.pipeline import ASGI
    from duck_prefork.config import Config
    from duck_prefork.upstream.exchange import UpstreamASGI
    from duck_prefork.worker.process import build_pipeline

    assert type(build_pipeline(Config())) is ASGI
    pipeline = build_pipeline(Config(upstream=["/=unix:/run/d.sock"], upstream_timeout=7.0))
    assert type(pipeline) is UpstreamASGI and pipeline.timeout == 7.0


def test_response_heads_are_held_to_the_codecs_rules():
    from duck_prefork.upstream.codec import head_refusal

    good = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nA: 1\r\n\r\nbody\n\nmore"
    end, why = head_refusal(good, 0)
    assert (end, why) == (25, None)
    assert head_refusal(good, end) == (len(good) - len(b"body\n\nmore"), None)
    assert head_refusal(b"HTTP/1.1 200 OK\nA: 1\n\n", 0)[1] == "bare LF in the response head"
    assert head_refusal(b"HTTP/1.1 200 OK\r\nA: 1\n\r\n", 0)[1] == \
        "bare LF in the response head"
    assert head_refusal(b"HTTP/1.1 200 OK\r\nA: 1\r\n\tb\r\n\r\n", 0)[1] == \
        "obsolete line folding in the response head"
