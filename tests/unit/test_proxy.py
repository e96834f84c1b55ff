"""Forwarded headers without sockets: who is trusted, and what apply() makes of the headers."""

from __future__ import annotations

import pytest

from duck_prefork.asgi.forwarded import (
    ProxyHeaders,
    parse_forwarded,
    parse_node,
    parse_trusted,
)
from duck_prefork.asgi.pipeline import ASGI
from duck_prefork.http1.stream import Http1Stream

from .fakes import FakeConnection

pytestmark = pytest.mark.timeout(30)

PEER = ("127.0.0.1", 50000)  # the proxy the server sees


def applied(*headers: tuple[bytes, bytes], trusted: str = "127.0.0.1,::1,10.0.0.0/8",
            host: bytes | None = b"internal:8000") -> dict:
    """The scope after apply() for a request carrying `headers` (and Host `host`)."""
    all_headers = ([(b"host", host)] if host is not None else []) + list(headers)
    scope = {"type": "http", "client": PEER, "scheme": "http", "headers": all_headers}
    ProxyHeaders(trusted).apply(scope)
    return scope


def host_of(scope: dict) -> list[bytes]:
    return [value for name, value in scope["headers"] if name == b"host"]


# --- trusts() -------------------------------------------------------------------------------


@pytest.mark.parametrize("trusted, peer, expected", [
    ("127.0.0.1,::1", ("127.0.0.1", 1), True),
    ("127.0.0.1,::1", ("::1", 1), True),
    ("127.0.0.1,::1", ("127.0.0.2", 1), False),
    ("127.0.0.1,::1", ("10.0.0.1", 1), False),
    ("10.0.0.0/8, 192.168.1.1", ("10.200.3.4", 1), True),
    ("10.0.0.0/8, 192.168.1.1", ("192.168.1.1", 1), True),
    ("10.0.0.0/8, 192.168.1.1", ("192.168.1.2", 1), False),
    ("10.0.0.5/8", ("10.1.1.1", 1), True),  # host bits allowed: the network is meant
    ("2001:db8::/32", ("2001:db8:1::7", 1), True),
    ("2001:db8::/32", ("2001:db9::7", 1), False),
    ("127.0.0.1", ("::ffff:127.0.0.1", 1), True),  # IPv4-mapped is the IPv4 address
    ("::1", ("127.0.0.1", 1), False),
    ("*", ("203.0.113.9", 1), True),
    ("*", ("2001:db8::1", 1), True),
    ("127.0.0.1", ("not-an-ip", 1), False),
    ("", ("127.0.0.1", 1), False),  # an empty list trusts nobody
])
def test_trusts(trusted, peer, expected):
    proxy = ProxyHeaders(trusted)
    assert proxy.trusts(peer) is expected
    assert proxy.trusts(peer) is expected  # memoized answer is the same


@pytest.mark.parametrize("trusted, expected", [("127.0.0.1,::1", False), ("*", True)])
def test_unix_socket_peer_is_trusted_only_with_star(trusted, expected):
    assert ProxyHeaders(trusted).trusts(None) is expected


@pytest.mark.parametrize("text", ["nonsense", "127.0.0.1,nope", "10.0.0.0/33", "1.2.3.4.5"])
def test_parse_trusted_refuses(text):
    with pytest.raises(ValueError, match="not an IP address or network"):
        parse_trusted(text)


def test_parse_trusted_star_wins():
    assert parse_trusted("10.0.0.1, *") == ["*"]


# --- X-Forwarded-For ------------------------------------------------------------------------


def test_no_forwarded_headers_leave_the_scope_alone():
    headers = [(b"host", b"internal:8000"), (b"x-other", b"1")]
    scope = {"type": "http", "client": PEER, "scheme": "http", "headers": headers}
    ProxyHeaders("127.0.0.1").apply(scope)
    assert scope == {"type": "http", "client": PEER, "scheme": "http", "headers": headers}
    assert scope["headers"] is headers


def test_x_forwarded_for_one_hop():
    assert applied((b"x-forwarded-for", b"203.0.113.7"))["client"] == ("203.0.113.7", 0)


def test_x_forwarded_for_ipv6():
    scope = applied((b"x-forwarded-for", b"2001:DB8:0::1"))
    assert scope["client"] == ("2001:db8::1", 0)  # normalized


def test_x_forwarded_for_skips_trusted_hops_from_the_right():
    # client, then two of our own proxies
    scope = applied((b"x-forwarded-for", b"203.0.113.7, 10.0.0.2, 10.0.0.3"))
    assert scope["client"] == ("203.0.113.7", 0)


def test_x_forwarded_for_spoofed_left_entries_are_ignored():
    # The client sent "X-Forwarded-For: 1.1.1.1, 8.8.8.8"; our proxy appended its real address.
    scope = applied((b"x-forwarded-for", b"1.1.1.1, 8.8.8.8, 198.51.100.4"))
    assert scope["client"] == ("198.51.100.4", 0)


def test_x_forwarded_for_lines_are_joined_in_order():
    scope = applied((b"x-forwarded-for", b"1.1.1.1"),
                    (b"x-forwarded-for", b"198.51.100.4, 10.0.0.9"))
    assert scope["client"] == ("198.51.100.4", 0)


def test_x_forwarded_for_all_trusted_takes_the_left_most():
    scope = applied((b"x-forwarded-for", b"10.0.0.1, 10.0.0.2, 127.0.0.1"))
    assert scope["client"] == ("10.0.0.1", 0)


def test_x_forwarded_for_with_star_takes_the_left_most():
    scope = applied((b"x-forwarded-for", b"203.0.113.7, 198.51.100.4"), trusted="*")
    assert scope["client"] == ("203.0.113.7", 0)


def test_x_forwarded_for_ipv4_mapped_hop_is_trusted():
    scope = applied((b"x-forwarded-for", b"203.0.113.7, ::ffff:10.0.0.2"))
    assert scope["client"] == ("203.0.113.7", 0)


def test_x_forwarded_for_empty_items_are_skipped():
    scope = applied((b"x-forwarded-for", b""), (b"x-forwarded-for", b" , 203.0.113.7,, "))
    assert scope["client"] == ("203.0.113.7", 0)


@pytest.mark.parametrize("value", [
    b"203.0.113.7, unknown",     # the chosen hop is no address
    b"203.0.113.7, not an ip",
    b"203.0.113.7, _hidden",
    b"203.0.113.7, 10.0.0.1, 999.1.1.1",
    b"", b" , ,",
    b"\xff\xfe",
])
def test_x_forwarded_for_invalid_chosen_hop_leaves_client(value):
    assert applied((b"x-forwarded-for", value))["client"] == PEER


def test_x_forwarded_for_invalid_entry_ends_the_walk():
    # The garbage is not skipped as if trusted: the walk stops there and nothing is believed.
    scope = applied((b"x-forwarded-for", b"203.0.113.7, garbage, 10.0.0.1"))
    assert scope["client"] == PEER


def test_x_forwarded_for_with_port_forms():
    assert applied((b"x-forwarded-for", b"203.0.113.7:5555"))["client"] == ("203.0.113.7", 5555)
    assert applied((b"x-forwarded-for", b"[2001:db8::1]:80"))["client"] == ("2001:db8::1", 80)


# --- X-Forwarded-Proto and X-Forwarded-Host -------------------------------------------------


@pytest.mark.parametrize("value, scheme", [
    (b"https", "https"),
    (b"HTTPS", "https"),
    (b" https ", "https"),
    (b"http", "http"),
    (b"http, https", "https"),   # right-most
    (b"https, http", "http"),
    (b"https,", "https"),        # empty items do not count
    (b"ftp", "http"),            # not http or https: ignored
    (b"wss", "http"),
    (b"https, javascript", "http"),
    (b"", "http"),
])
def test_x_forwarded_proto(value, scheme):
    scope = applied((b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", value))
    assert scope["scheme"] == scheme


def test_x_forwarded_proto_alone():
    scope = applied((b"x-forwarded-proto", b"https"))
    assert scope["scheme"] == "https"
    assert scope["client"] == PEER


@pytest.mark.parametrize("value, host", [
    (b"example.com", b"example.com"),
    (b"example.com:8443", b"example.com:8443"),
    (b"[2001:db8::1]:443", b"[2001:db8::1]:443"),
    (b"evil.example, example.com", b"example.com"),  # right-most
    (b"bad host", b"internal:8000"),
    (b"example.com/path", b"internal:8000"),
    (b"example.com\x01", b"internal:8000"),
    (b"user@example.com", b"internal:8000"),
    (b"example.com:", b"internal:8000"),
    (b"example.com:port", b"internal:8000"),
    (b"ex\xe4mple.com", b"internal:8000"),
    (b"", b"internal:8000"),
])
def test_x_forwarded_host(value, host):
    assert host_of(applied((b"x-forwarded-host", value))) == [host]


def test_host_is_replaced_in_place_of_the_original():
    scope = applied((b"x-forwarded-host", b"example.com"), (b"accept", b"*/*"))
    assert scope["headers"] == [(b"host", b"example.com"), (b"x-forwarded-host", b"example.com"),
                                (b"accept", b"*/*")]


def test_host_is_added_when_the_request_had_none():
    scope = applied((b"x-forwarded-host", b"example.com"), host=None)
    assert host_of(scope) == [b"example.com"]


def test_headers_list_is_never_mutated():
    original = [(b"host", b"internal:8000"), (b"x-forwarded-host", b"example.com"),
                (b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")]
    snapshot = list(original)
    scope = {"type": "http", "client": PEER, "scheme": "http", "headers": original}
    ProxyHeaders("127.0.0.1").apply(scope)
    assert original == snapshot
    assert scope["headers"] is not original
    assert host_of(scope) == [b"example.com"]
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"


# --- Forwarded (RFC 7239) -------------------------------------------------------------------


@pytest.mark.parametrize("line, elements", [
    ("for=192.0.2.60;proto=http;by=203.0.113.43",
     [{"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}]),
    ('For="[2001:db8:cafe::17]:4711"', [{"for": "[2001:db8:cafe::17]:4711"}]),
    ("for=192.0.2.43, for=198.51.100.17", [{"for": "192.0.2.43"}, {"for": "198.51.100.17"}]),
    ('for="a\\"b,c;d";host=x', [{"for": 'a"b,c;d', "host": "x"}]),  # quoted comma, escapes
    ("FOR=1.2.3.4;PROTO=https", [{"for": "1.2.3.4", "proto": "https"}]),
    (" , for=1.2.3.4 ,, ", [{"for": "1.2.3.4"}]),  # empty elements dropped
    (";;for=1.2.3.4;", [{"for": "1.2.3.4"}]),      # empty pairs allowed
    ("", []),
    ("for=1.2.3.4;for=5.6.7.8", [None]),  # a repeated key
    ("for", [None]),
    ("for=", [None]),
    ("=1.2.3.4", [None]),
    ("for=a b", [None]),
    ('for="open, for=1.2.3.4', [None]),  # an open quote takes the rest of the line
    ('for="x"y', [None]),
    ("for=1.2.3.4=5", [None]),
    ("f(o)r=1.2.3.4, for=5.6.7.8", [None, {"for": "5.6.7.8"}]),
])
def test_parse_forwarded(line, elements):
    assert parse_forwarded(line) == elements


@pytest.mark.parametrize("text, node", [
    ("192.0.2.1", ("192.0.2.1", 0)),
    ("192.0.2.1:80", ("192.0.2.1", 80)),
    ("[2001:db8::1]", ("2001:db8::1", 0)),
    ("[2001:db8::1]:4711", ("2001:db8::1", 4711)),
    ("2001:db8::1", ("2001:db8::1", 0)),
    ("192.0.2.1:_obf", ("192.0.2.1", 0)),  # obfuscated port: unknown
    ("unknown", None),
    ("_hidden", None),
    ("[192.0.2.1]", None),
    ("[2001:db8::1", None),
    ("[2001:db8::1]4711", None),
    ("[2001:db8::1]:", None),
    ("192.0.2.1:", None),
    ("192.0.2.1:65536", None),
    ("192.0.2.1:\u00b2", None),  # a digit to str.isdigit(), not to int()
    ("example.com", None),
    ("", None),
])
def test_parse_node(text, node):
    assert parse_node(text) == node


def test_forwarded_sets_client_scheme_and_host():
    scope = applied((b"forwarded", b'for=203.0.113.7;proto=https;host="example.com"'))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"
    assert host_of(scope) == [b"example.com"]


def test_forwarded_ipv6_with_port():
    scope = applied((b"forwarded", b'for="[2001:db8:cafe::17]:4711"'))
    assert scope["client"] == ("2001:db8:cafe::17", 4711)


def test_forwarded_ipv4_with_port():
    assert applied((b"forwarded", b'for="203.0.113.7:8080"'))["client"] == ("203.0.113.7", 8080)


def test_forwarded_spoofed_left_element_is_ignored():
    header = b"for=1.1.1.1;proto=https;host=evil.example, for=198.51.100.4;proto=http;host=a.test"
    scope = applied((b"forwarded", header))
    assert scope["client"] == ("198.51.100.4", 0)
    assert scope["scheme"] == "http"
    assert host_of(scope) == [b"a.test"]


def test_forwarded_skips_trusted_hops_and_takes_that_elements_proto_and_host():
    lines = [(b"forwarded", b"for=203.0.113.7;proto=https;host=example.com"),
             (b"forwarded", b"for=10.0.0.2;proto=http;host=internal")]
    scope = applied(*lines)
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"
    assert host_of(scope) == [b"example.com"]


def test_forwarded_all_trusted_takes_the_left_most():
    scope = applied((b"forwarded", b'for=10.0.0.1;proto=https, for="[::1]"'))
    assert scope["client"] == ("10.0.0.1", 0)
    assert scope["scheme"] == "https"


@pytest.mark.parametrize("node", [b"unknown", b"_hidden", b'"_SEVKISEK"'])
def test_forwarded_obfuscated_or_unknown_leaves_client_but_takes_proto(node):
    scope = applied((b"forwarded", b"for=203.0.113.7, for=" + node + b";proto=https"))
    assert scope["client"] == PEER  # the chosen hop is the unknown one; nothing left of it counts
    assert scope["scheme"] == "https"


def test_forwarded_element_without_for_takes_its_proto_and_host():
    scope = applied((b"forwarded", b"proto=https;host=example.com"))
    assert scope["client"] == PEER
    assert scope["scheme"] == "https"
    assert host_of(scope) == [b"example.com"]


def test_forwarded_wins_over_x_forwarded():
    scope = applied((b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-proto", b"https"),
                    (b"x-forwarded-host", b"evil.example"), (b"forwarded", b"for=203.0.113.7"))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "http"
    assert host_of(scope) == [b"internal:8000"]


@pytest.mark.parametrize("value", [
    b"for=203.0.113.7;proto=https;for=1.1.1.1",  # repeated key
    b'for="203.0.113.7',                        # open quote
    b"for=203.0.113.7;proto",                   # a pair without a value
    b"garbage",
    b"\xff\x00\xfe",
    b'"' * 1000,
    b"\\" * 1000,
    b";,=" * 1000,
])
def test_forwarded_malformed_changes_nothing(value):
    scope = applied((b"forwarded", value), (b"x-forwarded-for", b"1.1.1.1"))
    assert scope["client"] == PEER
    assert scope["scheme"] == "http"
    assert host_of(scope) == [b"internal:8000"]


def test_forwarded_malformed_left_of_the_chosen_hop_does_not_matter():
    scope = applied((b"forwarded", b'for="open'), (b"forwarded", b"for=203.0.113.7;proto=https"))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"


@pytest.mark.parametrize("proto, scheme", [(b"HTTPS", "https"), (b'"https"', "https"),
                                           (b"gopher", "http")])
def test_forwarded_proto(proto, scheme):
    assert applied((b"forwarded", b"for=203.0.113.7;proto=" + proto))["scheme"] == scheme


@pytest.mark.parametrize("host, seen", [(b'"example.com:8443"', b"example.com:8443"),
                                        (b'"bad host"', b"internal:8000"),
                                        (b'"a/b"', b"internal:8000")])
def test_forwarded_host(host, seen):
    assert host_of(applied((b"forwarded", b"for=203.0.113.7;host=" + host))) == [seen]


# --- through the pipeline -------------------------------------------------------------------


def pipeline_scope(client: tuple | None, proxy: ProxyHeaders | None) -> dict:
    connection = FakeConnection(client)
    headers = [(b"host", b"internal"), (b"x-forwarded-for", b"203.0.113.7"),
               (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"example.com")]
    data = Http1Stream(connection, b"GET", b"/", b"1.1", headers)
    data.feed_end()
    return ASGI(proxy=proxy).get_request(data).scope


def test_pipeline_applies_headers_from_a_trusted_peer():
    scope = pipeline_scope(("127.0.0.1", 4000), ProxyHeaders("127.0.0.1"))
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"
    assert host_of(scope) == [b"example.com"]


@pytest.mark.parametrize("client, proxy", [
    (("198.51.100.4", 4000), ProxyHeaders("127.0.0.1")),  # untrusted peer
    (None, ProxyHeaders("127.0.0.1")),                   # unix socket peer
    (("127.0.0.1", 4000), None),                         # --no-proxy-headers
])
def test_pipeline_leaves_headers_alone(client, proxy):
    scope = pipeline_scope(client, proxy)
    assert scope["client"] == client
    assert scope["scheme"] == "http"
    assert host_of(scope) == [b"internal"]
