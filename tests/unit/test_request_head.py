"""read_head: RFC 9112 strictness and limits on a parsed request head."""

import pytest

from duck_prefork.http1.request_head import DEFAULT_LIMITS, Limits, ParseError, read_head

pytestmark = pytest.mark.timeout(30)

HOST = (b"host", b"example.com")


def check(headers=(HOST,), version=b"1.1", target=b"/", method=b"GET", limits=DEFAULT_LIMITS):
    return read_head(method, target, version, list(headers), limits)


def refused(**kwargs) -> ParseError:
    with pytest.raises(ParseError) as info:
        check(**kwargs)
    return info.value


def test_plain_get():
    assert check() == (True, False, None, False, False, None)


@pytest.mark.parametrize("headers, status", [
    ([HOST, (b"content-length", b"5"), (b"transfer-encoding", b"chunked")], 400),
    ([HOST, (b"transfer-encoding", b"chunked"), (b"content-length", b"5")], 400),
    ([HOST, (b"content-length", b"+5")], 400),
    ([HOST, (b"content-length", b"5, 5")], 400),
    ([HOST, (b"content-length", b" 5")], 400),
    ([HOST, (b"content-length", b"-1")], 400),
    ([HOST, (b"content-length", b"5"), (b"content-length", b"6")], 400),
    ([HOST, (b"transfer-encoding", b"gzip, chunked")], 501),
    ([HOST, (b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")], 501),
    ([HOST, (b"transfer-encoding", b"xchunked")], 501),
    ([], 400),
    ([HOST, HOST], 400),
])
def test_framing_and_host_violations(headers, status):
    assert refused(headers=headers).status == status


def test_identical_content_length_copies_are_one():
    assert check([HOST, (b"content-length", b"5"), (b"content-length", b"5")])[2] == 5


def test_chunked_is_case_insensitive():
    assert check([HOST, (b"transfer-encoding", b"Chunked")])[3] is True


@pytest.mark.parametrize("version, status", [
    (b"2.0", 505), (b"3.0", 505), (b"9.9", 505), (b"1.2", 400), (b"0.9", 400)])
def test_versions_other_than_1_0_and_1_1(version, status):
    assert refused(version=version).status == status


def test_http_1_0_needs_no_host_and_closes():
    assert check(headers=[], version=b"1.0") == (False, False, None, False, False, None)


@pytest.mark.parametrize("target", [b"/a\x01b", b"/a b", b"/\x7f", b"/\xff", b"/a\tb"])
def test_control_and_non_ascii_bytes_in_the_target(target):
    assert refused(target=target).status == 400


def test_limits():
    limits = Limits(request_line=100, fields=3, field_size=50, body=10)
    assert refused(target=b"/" + b"a" * 90, limits=limits).status == 414
    assert refused(headers=[HOST] + [(b"x-%d" % i, b"v") for i in range(3)],
                   limits=limits).status == 431
    assert refused(headers=[HOST, (b"x-big", b"v" * 50)], limits=limits).status == 431
    assert refused(headers=[HOST, (b"content-length", b"11")], limits=limits).status == 413
    assert check(headers=[HOST, (b"content-length", b"10")], limits=limits)[2] == 10


def test_zero_means_no_limit():
    limits = Limits(request_line=0, fields=0, field_size=0, body=0)
    headers = [HOST] + [(b"x-%d" % i, b"v" * 10000) for i in range(200)]
    assert check(headers=headers, target=b"/" + b"a" * 20000, limits=limits)[0] is True


@pytest.mark.parametrize("value, keep_alive", [
    (b"close", False), (b"Close", False), (b"keep-alive, close", False), (b"keep-alive", True),
    (b"upgrade", True)])
def test_connection_tokens(value, keep_alive):
    assert check([HOST, (b"connection", value)])[0] is keep_alive


def test_transfer_encoding_in_http_1_0_is_refused():
    assert refused(headers=[(b"transfer-encoding", b"chunked")], version=b"1.0").status == 400


@pytest.mark.parametrize("value, ok", [
    (b"example.com", True), (b"example.com:8080", True), (b"[::1]:80", True),
    (b"127.0.0.1", True), (b"exa mple.com", False), (b"a/b", False), (b"a@b", False),
    (b"[::1", False)])
def test_host_value(value, ok):
    if ok:
        assert check([(b"host", value)])[0] is True
    else:
        assert refused(headers=[(b"host", value)]).status == 400


@pytest.mark.parametrize("method, target, ok", [
    (b"OPTIONS", b"*", True), (b"M-SEARCH", b"*", True), (b"PRI", b"*", False),
    (b"CONNECT", b"example.com:443", True), (b"CONNECT", b"[::1]:443", True),
    (b"CONNECT", b"/a", True), (b"GET", b"http://user:pass@example.com:8080/foo", True),
    (b"GET", b"http://example.com/a?b", True), (b"GET", b"HTTPS://example.com", True),
    (b"GET", b"http://[::1]:8080/", True), (b"PUT", b"s://]ufd/:", False),
    (b"GET", b"example.com:443", False), (b"GET", b"foo/bar", False),
    (b"GET", b"http://exa]mple/", False)])
def test_target_forms(method, target, ok):
    if ok:
        assert check(method=method, target=target)[0] is True
    else:
        assert refused(method=method, target=target).status == 400


@pytest.mark.parametrize("name", [b"forwarded", b"x-forwarded-for", b"x-forwarded-proto",
                                  b"x-forwarded-host"])
def test_forwarded_headers_are_noted_for_the_proxy_step(name):
    assert check([HOST, (name, b"x")])[4] is True


@pytest.mark.parametrize("headers, upgrade", [
    ([HOST, (b"connection", b"Upgrade"), (b"upgrade", b"WebSocket")], b"websocket"),
    ([HOST, (b"connection", b"keep-alive, upgrade"), (b"upgrade", b"h2c")], b"h2c"),
    ([HOST, (b"upgrade", b"websocket")], None),  # no Connection: upgrade, no switch asked
    ([HOST, (b"connection", b"upgrade")], None),
])
def test_upgrade_is_reported_only_with_connection_upgrade(headers, upgrade):
    assert check(headers)[5] == upgrade


def test_content_length_has_at_most_20_digits_as_in_h11():
    assert check(headers=[HOST, (b"content-length", b"0" * 19 + b"5")])[2] == 5
    assert refused(headers=[HOST, (b"content-length", b"0" * 20 + b"5")]).status == 400


@pytest.mark.parametrize("kwargs", [
    # h11 refuses these heads before it returns them: with llhttp, read_head must say 400 too
    # before any of its own answers (505, 414, 431, 501).
    dict(headers=[], target=b"/" + b"a" * 9000),                       # no Host; 414
    dict(headers=[HOST, HOST], version=b"2.0"),                          # two Hosts; 505
    dict(headers=[(b"content-length", b"x")], version=b"3.0"),           # bad CL, no Host; 505
    dict(headers=[HOST, (b"x", b"v" * 9000), (b"content-length", b"1, 2")]),  # bad CL; 431
    dict(headers=[HOST, (b"transfer-encoding", b"gzip")], target=b"/\x01"),  # bad target; 501
    dict(headers=[HOST] * 2 + [(b"x-%d" % i, b"") for i in range(200)]),     # two Hosts; 431
])
def test_what_h11_refuses_itself_comes_first(kwargs):
    assert refused(**kwargs).status == 400
