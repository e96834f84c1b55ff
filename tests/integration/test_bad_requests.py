"""Malformed and borderline requests, each followed on the same connection by a valid request.

For every case: the FIRST response has the expected status, and NO second response follows,
although a well-formed request is pipelined right behind the bad one (a server that answers it
has resynchronised on attacker-chosen bytes: the request smuggling shape). After a refusal the
connection must also be closed, the worker must live on, and the server must log no traceback
or error. The app is the recorder, so a failure shows what reached it.

Statuses, per our spec: 400 malformed, 414 request line too long, 431 too many or too large
header fields, 505 unsupported HTTP version, 501 acceptable for an unknown transfer coding.

Each case goes to one server per parser (--http httptools, --http h11) at once: it must pass
with each, and both must answer it alike (the same responses, the same end of the connection).
"""

from __future__ import annotations

import os

import pytest

from .conftest import on_each, running_servers
from .wire import LogWatch, describe, exchange, parse_responses

pytestmark = pytest.mark.timeout(60)

APP = "tests.apps.recorder:app"
NEXT = b"GET /pipelined HTTP/1.1\r\nHost: example.com\r\n\r\n"
H = b"Host: example.com\r\n"


def post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST /upload HTTP/1.1\r\n" + H + headers + b"\r\n" + body


def chunked(body: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked\r\n", body)


def get_with(field_lines: bytes) -> bytes:
    return b"GET /x HTTP/1.1\r\n" + H + field_lines + b"\r\n"


def client_hello() -> bytes:
    """A TLS 1.2 ClientHello record, as a client speaking https to the plain port sends."""
    suites = b"\x00\x04\xc0\x2f\x00\x9c"
    sni_name = b"example.com"
    sni = (b"\x00\x00" + (len(sni_name) + 5).to_bytes(2, "big") + (len(sni_name) + 3)
           .to_bytes(2, "big") + b"\x00" + len(sni_name).to_bytes(2, "big") + sni_name)
    extensions = len(sni).to_bytes(2, "big") + sni
    hello = b"\x03\x03" + os.urandom(32) + b"\x00" + suites + b"\x01\x00" + extensions
    handshake = b"\x01" + len(hello).to_bytes(3, "big") + hello
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def case(case_id: str, raw: bytes, statuses: set[int], close_ok: bool = False,
         pipeline: bool = True):
    """raw: the request; statuses: what the first response may be (200: the request is fine
    and must reach the app); close_ok: a close without any response is right too; pipeline:
    send the valid request behind it."""
    return pytest.param(raw + (NEXT if pipeline else b""), statuses, close_ok, id=case_id)


CASES = [
    # --- request smuggling: ambiguous or unsupported body framing ---
    case("cl-and-te", post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                           b"0\r\n\r\nX"), {400}),
    case("te-and-cl", post(b"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
                           b"0\r\n\r\nX"), {400}),
    case("te-chunked-twice-two-lines", post(b"Transfer-Encoding: chunked\r\n"
                                            b"Transfer-Encoding: chunked\r\n",
                                            b"0\r\n\r\n"), {400, 501}),  # h11 says 501
    case("te-chunked-twice-one-line", post(b"Transfer-Encoding: chunked, chunked\r\n",
                                           b"0\r\n\r\n"), {400, 501}),
    case("te-chunked-then-gzip", post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"),
         {400, 501}),
    case("te-gzip-then-chunked", post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
         {400, 501}),
    case("te-xchunked", post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), {400, 501}),
    case("te-identity", post(b"Transfer-Encoding: identity\r\n", b""), {400, 501}),
    case("te-space-before-colon", post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
         {400}),
    case("te-tab-before-colon", post(b"Transfer-Encoding\t: chunked\r\n", b"0\r\n\r\n"),
         {400}),
    case("te-leading-space-first-field",
         b"POST /upload HTTP/1.1\r\n Transfer-Encoding: chunked\r\n" + H + b"\r\n0\r\n\r\n",
         {400}),
    case("te-leading-tab-folded", post(b"X-Pad: 1\r\n\tTransfer-Encoding: chunked\r\n",
                                       b"0\r\n\r\n"), {400}),
    case("cl-plus-sign", post(b"Content-Length: +5\r\n", b"hello"), {400}),
    case("cl-inner-space", post(b"Content-Length: 1 2\r\n", b"x" * 12), {400}),
    case("cl-two-different", post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
         {400}),
    case("cl-list-1-2", post(b"Content-Length: 1,2\r\n", b"xy"), {400}),
    case("cl-negative", post(b"Content-Length: -1\r\n", b"x"), {400}),
    case("cl-hex", post(b"Content-Length: 0x5\r\n", b"hello"), {400}),
    case("cl-empty", post(b"Content-Length:\r\n", b""), {400}),
    case("cl-overflow", post(b"Content-Length: 99999999999999999999999999\r\n", b"x"),
         {400, 413}),
    # --- chunked framing ---
    case("chunk-size-not-hex", chunked(b"zz\r\nhello\r\n0\r\n\r\n"), {400}),
    case("chunk-size-overflow", chunked(b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
         {400, 413}),
    case("chunk-size-negative", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), {400}),
    case("chunk-size-empty", chunked(b"\r\nhello\r\n0\r\n\r\n"), {400}),
    case("chunk-data-no-crlf", chunked(b"5\r\nhelloXX0\r\n\r\n"), {400}),
    case("chunk-size-space-garbage", chunked(b"5 garbage\r\nhello\r\n0\r\n\r\n"), {400}),
    case("chunk-ext-control-char", chunked(b"5;a\x01b\r\nhello\r\n0\r\n\r\n"), {400}),
    case("chunk-ext-unterminated-quote", chunked(b'5;a="x\r\nhello\r\n0\r\n\r\n'), {400}),
    case("chunk-ext-bare-cr", chunked(b"5;a=b\rc\r\nhello\r\n0\r\n\r\n"), {400}),
    # --- header fields ---
    case("name-space-before-colon", get_with(b"Foo : bar\r\n"), {400}),
    case("name-empty", get_with(b": bar\r\n"), {400}),
    case("name-at-sign", get_with(b"Fo@o: bar\r\n"), {400}),
    case("name-parenthesis", get_with(b"Foo(x): bar\r\n"), {400}),
    case("name-non-ascii", get_with(b"Caf\xe9: bar\r\n"), {400}),
    case("name-nul", get_with(b"Fo\x00o: bar\r\n"), {400}),
    case("line-without-colon", get_with(b"NoColonHere\r\n"), {400}),
    case("value-nul", get_with(b"X-Value: a\x00b\r\n"), {400}),
    case("value-bare-cr", get_with(b"X-Value: a\rb\r\n"), {400}),
    case("obs-fold", get_with(b"X-Long: one\r\n two\r\n"), {400}),
    # --- Host ---
    case("host-missing-1.1", b"GET /x HTTP/1.1\r\nAccept: */*\r\n\r\n", {400}),
    case("host-duplicate", get_with(b"Host: other.example\r\n"), {400}),
    case("host-invalid-value", b"GET /x HTTP/1.1\r\nHost: exa mple.com\r\n\r\n", {400}),
    case("host-missing-1.0-is-fine", b"GET /x HTTP/1.0\r\nAccept: */*\r\n\r\n", {200}),
    # --- request line: version, method, target ---
    case("version-2.0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", {505}),
    case("version-3.0", b"GET / HTTP/3.0\r\n" + H + b"\r\n", {505}),
    case("version-0.9-style", b"GET /\r\n\r\n", {400}),
    case("version-lowercase", b"GET / http/1.1\r\n" + H + b"\r\n", {400}),
    case("version-no-minor", b"GET / HTTP/1\r\n" + H + b"\r\n", {400}),
    case("method-non-token", b"GE(T / HTTP/1.1\r\n" + H + b"\r\n", {400}),
    case("method-empty", b" / HTTP/1.1\r\n" + H + b"\r\n", {400}),
    case("double-space-after-method", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", {400}),
    case("target-control-char", b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n", {400}),
    case("target-nul", b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n", {400}),
    case("target-del", b"GET /a\x7fb HTTP/1.1\r\n" + H + b"\r\n", {400}),
    case("target-tab", b"GET /a\tb HTTP/1.1\r\n" + H + b"\r\n", {400}),
    case("target-space", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", {400}),
    # --- other protocols on the plain HTTP port ---
    case("tls-client-hello", client_hello(), {400}, close_ok=True),
    case("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {505, 400}),
    # --- limits ---
    case("request-line-20k", b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n" + H + b"\r\n",
         {414}),
    case("fields-101", get_with(b"".join(b"X-F%d: v\r\n" % i for i in range(100))),
         {431}),  # with Host: 101 field lines
    case("field-9000-bytes", get_with(b"X-Big: " + b"v" * 9000 + b"\r\n"), {431}),
    case("head-endless-64k", b"GET /x HTTP/1.1\r\n" + H +
         b"".join(b"X-Pad-%05d: %s\r\n" % (i, b"p" * 60) for i in range(1200)),
         {431, 400}, pipeline=False),  # > 64 KiB and never a CRLFCRLF
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    # Judged as an untrusted client sees them: loopback, trusted by default, would get HTTP/2
    # for the preface (prior knowledge) and have its forwarded headers believed.
    with running_servers([APP, "--workers", "1", "--forwarded-allow-ips", "192.0.2.1"],
                         tmp_path_factory.mktemp("bad-requests")) as servers:
        for server in servers.values():
            server.initial_workers = sorted(server.worker_pids())
            server.log_watch = LogWatch(server)
        yield servers


def test_enough_cases():
    assert len(CASES) >= 40
    assert len({param.id for param in CASES}) == len(CASES)


@pytest.mark.parametrize("raw, statuses, close_ok", CASES)
def test_bad_request(servers, raw, statuses, close_ok):
    outcomes = on_each(servers, lambda server: check(server, raw, statuses, close_ok))
    assert len(set(outcomes.values())) == 1, f"the parsers differ: {outcomes}"


def check(server, raw: bytes, statuses: set[int], close_ok: bool) -> tuple:
    """Send one case and check what came back; returns the outcome to compare between
    parsers."""
    ex = exchange(server.port, raw, idle=1.0, first=3.0)
    parsed = parse_responses(ex.data)
    responses = parsed.responses
    what = describe(ex, parsed)
    if ex.unsent:
        what += f" ({ex.unsent} request bytes unsent: the server answered or closed first)"

    alive = sorted(server.worker_pids()) == server.initial_workers
    server.initial_workers = sorted(server.worker_pids())
    assert alive, f"the worker died: {what}"
    problems = server.log_watch.new_problems()
    assert not problems, f"the server logged a problem: {what}\n{problems}"

    if not responses and close_ok:
        assert ex.closed, f"expected a refusal or a close: {what}"
        assert not ex.data, f"garbage instead of a response: {what}"
    else:
        assert responses, f"expected {sorted(statuses)}: {what}"
        first = responses[0]
        assert first.status in statuses, f"expected {sorted(statuses)}: {what}"
        if first.status == 200:
            assert first.recorded is not None, f"a 200 not from the app: {what}"
        else:
            assert first.recorded is None, f"the app saw it: {first.recorded} ({what})"
            assert ex.closed, f"the connection stays open after a refusal: {what}"
    assert len(responses) <= 1, f"the pipelined request was answered too: {what}"
    assert not parsed.error or not responses, f"bytes after the response: {what}"
    return tuple((r.status, r.header("x-recorded-json"), r.body) for r in responses), ex.closed


def test_worker_still_serves(servers):
    for server in servers.values():
        ex = exchange(server.port, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close"
                      b"\r\n\r\n", idle=5.0)
        responses = parse_responses(ex.data).responses
        assert [r.status for r in responses] == [200]
        assert responses[0].recorded["path"] == "/after"
