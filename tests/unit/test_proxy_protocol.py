"""The PROXY protocol header parser (net/proxy_protocol.py), sans-IO: every valid form of v1
and v2, every error path of the issue's bad-input list, fed whole and byte by byte, and fuzzed
(it raises nothing but ProxyProtocolError and never reads past the header)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duck_prefork.net.proxy_protocol import (
    MAX_V2_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    crc32c,
    parse,
)
from tests.proxy_wire import (
    DGRAM,
    INET,
    INET6,
    LOCAL,
    UNIX,
    UNSPEC,
    ssl_tlv,
    tlv,
    v1,
    v2,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def parsed(data: bytes, accept: str = "any") -> ProxyHeader:
    """The header at the start of data, checked to be read whole and no further, also when
    it arrives a byte at a time (every proper prefix is "need more")."""
    result = parse(data + REQUEST, accept)
    assert result is not None
    header, size = result
    assert size == len(data)
    for end in range(len(data)):
        assert parse(data[:end], accept) is None, f"prefix of {end} bytes"
    return header


def refused(data: bytes, accept: str = "any", match: str | None = None) -> str:
    with pytest.raises(ProxyProtocolError, match=match) as info:
        parse(data, accept)
    return str(info.value)


# --- v1 -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("family", "source", "destination", "client", "server"), [
    ("TCP4", "203.0.113.7", "198.51.100.1", "203.0.113.7", "198.51.100.1"),
    ("TCP4", "0.0.0.0", "255.255.255.255", "0.0.0.0", "255.255.255.255"),
    ("TCP6", "2001:db8::7", "::1", "2001:db8::7", "::1"),
    ("TCP6", "2001:0DB8:0000:0000:0000:0000:0000:0007", "::ffff:192.0.2.1", "2001:db8::7",
     "::ffff:192.0.2.1"),
])
def test_v1_tcp(family, source, destination, client, server):
    header = parsed(v1(family, source, destination, 56324, 443))
    assert (header.version, header.command, header.family) == (1, "PROXY", family)
    assert header.client == (client, 56324) and header.server == (server, 443)
    assert header.tlvs == {} and not header.secure


def test_v1_ports_at_their_bounds():
    header = parsed(v1(source_port=0, destination_port=65535))
    assert header.client[1] == 0 and header.server[1] == 65535


def test_v1_longest_header_is_107_bytes():
    longest = v1("TCP6", "ffff:" * 7 + "ffff", "ffff:" * 7 + "ffff", 65535, 65535)
    assert len(longest) == 104  # the longest real one; the bound leaves room
    assert parsed(longest).client == ("ffff:" * 7 + "ffff", 65535)
    padded = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
    assert len(padded) == 107
    assert parsed(padded).family == "UNKNOWN"


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n",
                                  b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"])
def test_v1_unknown_ignores_the_rest_of_its_line(line):
    header = parsed(line)
    assert (header.family, header.client, header.server) == ("UNKNOWN", None, None)


@pytest.mark.parametrize("port", ["65536", "99999", "080", "00", "-1", "", "8a", "+80",
                                  " 80", "123456"])
def test_v1_bad_ports(port):
    refused(v1(source_port=port), match="port|expected")
    refused(v1(destination_port=port), match="port|expected")


@pytest.mark.parametrize(("family", "address"), [
    ("TCP4", "256.1.1.1"), ("TCP4", "01.2.3.4"), ("TCP4", "1.2.3"), ("TCP4", "1.2.3.4.5"),
    ("TCP4", "::1"), ("TCP4", "localhost"), ("TCP4", "1.2.3.4 "), ("TCP4", ""),
    ("TCP6", "192.0.2.1"), ("TCP6", "fe80::1%eth0"), ("TCP6", "::g"), ("TCP6", "1:2:3:4:5:6:7:8:9"),
    ("TCP6", "[::1]"), ("TCP6", ":::"),
])
def test_v1_bad_addresses(family, address):
    refused(v1(family, source=address), match="address|expected")
    good = "::1" if family == "TCP6" else "192.0.2.1"
    refused(v1(family, source=good, destination=address), match="address|expected")


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",  # a field too many
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # one too few
    b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  # two spaces
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",  # a trailing space
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",  # unknown protocol
    b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",  # case matters
    b"PROXY UNKNOWNX\r\n",
    b"PROXY \r\n",
    b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n",
])
def test_v1_malformed_lines(line):
    refused(line)


@pytest.mark.parametrize("data", [b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n",
                                  b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                                  b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
                                  b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"])
def test_v1_bare_cr_or_lf_is_refused_as_soon_as_seen(data):
    refused(data, match="CR or LF")


def test_v1_longer_than_107_bytes_is_refused_before_its_end():
    refused(b"PROXY UNKNOWN " + b"x" * 93, match="longer than 107")  # 107 bytes, no CRLF
    assert parse(b"PROXY UNKNOWN " + b"x" * 92) is None  # 106: could still end in CRLF


# --- v2 -------------------------------------------------------------------------------------

def test_v2_inet():
    header = parsed(v2())
    assert (header.version, header.command, header.family) == (2, "PROXY", "INET")
    assert header.client == ("203.0.113.7", 56324)
    assert header.server == ("198.51.100.1", 443)


def test_v2_inet6():
    header = parsed(v2(family=INET6, source="2001:db8::7", destination="::1",
                       source_port=1, destination_port=65535))
    assert header.family == "INET6"
    assert header.client == ("2001:db8::7", 1) and header.server == ("::1", 65535)


def test_v2_unix():
    header = parsed(v2(family=UNIX, source="/run/client.sock", destination="/run/haproxy.sock"))
    assert header.family == "UNIX"
    assert header.client is None and header.server == ("/run/haproxy.sock", None)


def test_v2_unspec_proxy_has_no_addresses():
    header = parsed(v2(family=UNSPEC, transport=0))
    assert (header.command, header.family, header.client, header.server) == \
        ("PROXY", "UNSPEC", None, None)


def test_v2_local_ignores_family_and_block_but_consumes_it():
    assert parsed(v2(command=LOCAL, family=UNSPEC, transport=0)).command == "LOCAL"
    # LOCAL with addresses and TLVs (a health check from a balancer that sends them anyway),
    # even an unknown family: all ignored, all consumed.
    header = parsed(v2(command=LOCAL, tlvs=tlv(0x01, b"h2")))
    assert (header.command, header.client, header.server, header.tlvs) == \
        ("LOCAL", None, None, {})
    data = v2(command=LOCAL, family=INET, tlvs=b"junk")
    data = data[:13] + bytes((0xF1,)) + data[14:]
    assert parsed(data).command == "LOCAL"


def test_v2_address_block_longer_than_the_family_holds_is_tlv_space():
    data = v2(tlvs=tlv(0x04, b"\0" * 10))  # NOOP padding
    assert parsed(data).tlvs == {}


def test_v2_known_tlvs():
    tlvs = (tlv(0x01, b"h2") + tlv(0x02, "bücher.example".encode()) + tlv(0x05, b"\x01" * 128)
            + tlv(0x04, b"pad") + tlv(0x30, b"blue")
            + ssl_tlv(0x01 | 0x02 | 0x04, 0, version="TLSv1.3", cn="client.example",
                      cipher="TLS_AES_128_GCM_SHA256", sig_alg="SHA256", key_alg="RSA2048")
            + tlv(0xEA, b"\x01vpce-0123"))
    header = parsed(v2(tlvs=tlvs, crc=True))
    assert header.alpn == b"h2"
    assert header.authority == "bücher.example"
    assert header.unique_id == b"\x01" * 128
    assert header.netns == "blue"
    assert header.ssl == {"client_ssl": True, "client_cert_conn": True, "client_cert_sess": True,
                          "verify": 0, "version": "TLSv1.3", "cn": "client.example",
                          "cipher": "TLS_AES_128_GCM_SHA256", "sig_alg": "SHA256",
                          "key_alg": "RSA2048"}
    assert header.secure
    assert header.tlvs[0xEA] == b"\x01vpce-0123"  # a cloud's own TLV, kept raw
    assert 0x04 not in header.tlvs  # NOOP is padding
    extension = header.extension()
    assert extension["alpn"] == b"h2" and extension["ssl"]["cn"] == "client.example"
    assert extension["version"] == 2 and extension["tlvs"][0x02] == "bücher.example".encode()


def test_v2_ssl_tlv_without_the_client_ssl_bit_is_not_secure():
    header = parsed(v2(tlvs=ssl_tlv(0x00, 1)))
    assert header.ssl is not None and header.ssl["verify"] == 1 and not header.secure
    assert header.ssl["version"] is None


def test_v2_unknown_ssl_subtypes_are_skipped():
    body = struct.pack("!BI", 1, 0) + tlv(0x2F, b"?") + tlv(0x21, b"TLSv1.2")
    assert parsed(v2(tlvs=tlv(0x20, body))).ssl["version"] == "TLSv1.2"


def test_crc32c_known_answer():
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 B.4's check value
    assert crc32c(b"") == 0


def test_v2_crc32c_checked():
    good = v2(tlvs=tlv(0x01, b"http/1.1"), crc=True)
    assert parsed(good).alpn == b"http/1.1"
    bad = good[:-1] + bytes((good[-1] ^ 1,))
    refused(bad, match="CRC32C mismatch")
    tampered = good.replace(b"http/1.1", b"http/1.0")
    refused(tampered, match="CRC32C mismatch")
    refused(v2(tlvs=tlv(0x03, b"\0\0\0")), match="CRC32C TLV of length")


def test_v2_tcp_port_zero_and_unicast_edges():
    assert parsed(v2(source="0.0.0.0", source_port=0)).client == ("0.0.0.0", 0)


# --- v2 errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("position", range(12))
def test_v2_wrong_signature_at_each_byte(position):
    data = bytearray(v2())
    data[position] ^= 0x40
    refused(bytes(data))
    if position:  # refused as soon as the wrong byte arrives
        refused(bytes(data[:position + 1]))


@pytest.mark.parametrize("version", [0, 1, 3, 15])
def test_v2_other_versions(version):
    refused(v2(version=version), match="version")
    refused(v2(version=version)[:13], match="version")


@pytest.mark.parametrize("command", range(2, 16))
def test_v2_unknown_commands(command):
    refused(v2(command=command), match="unknown command")


@pytest.mark.parametrize("family", range(4, 16))
def test_v2_unknown_families(family):
    refused(v2(family=family), match="unknown address family")


@pytest.mark.parametrize("transport", [DGRAM, 3, 15])
def test_v2_non_stream_transports(transport):
    refused(v2(transport=transport), match="not a stream")


@pytest.mark.parametrize(("family", "length"), [(INET, 11), (INET6, 35), (UNIX, 215), (INET, 0)])
def test_v2_length_too_short_for_the_addresses(family, length):
    data = v2(family=family, length=length)
    refused(data, match="cannot hold")
    refused(data[:16], match="cannot hold")  # known from the length alone


def test_v2_length_beyond_the_limit_is_refused_from_the_length_alone():
    refused(v2(length=MAX_V2_LENGTH + 1)[:16], match="beyond")
    refused(v2(length=0xFFFF)[:16], match="beyond")
    assert parse(v2(length=MAX_V2_LENGTH)[:16]) is None  # (waits for the rest)


def test_v2_length_beyond_the_buffer_waits_for_more():
    data = v2(length=12 + 40)  # announces 40 bytes of TLVs that do not come
    assert parse(data) is None
    assert parse(data + b"\0" * 39) is None


@pytest.mark.parametrize("tlvs", [
    b"\x01",  # a TLV header cut after its type
    b"\x01\x00",  # ... after half its length
    tlv(0x01, b"h2")[:-1],  # a value shorter than its length
    tlv(0x02, b"x" * 10)[:6],
    tlv(0x01, b"h2") + b"\x02\x00\x09abc",  # the second overruns
    tlv(0x20, struct.pack("!BI", 1, 0) + b"\x21\x00\x09TLS"),  # an SSL sub-TLV overruns
    tlv(0x20, struct.pack("!BI", 1, 0) + b"\x21"),
])
def test_v2_tlvs_overrunning_the_header(tlvs):
    refused(v2(tlvs=tlvs), match="overruns")


@pytest.mark.parametrize(("tlvs", "match"), [
    (tlv(0x20, b"\x01\0\0\0"), "SSL TLV shorter"),
    (tlv(0x05, b"x" * 129), "UNIQUE_ID longer"),
    (tlv(0x02, b"\xff\xfe"), "AUTHORITY is not UTF-8"),
    (tlv(0x20, b""), "SSL TLV shorter"),
])
def test_v2_bad_tlv_values(tlvs, match):
    refused(v2(tlvs=tlvs), match=match)


# --- no header, and the version asked for ---------------------------------------------------

@pytest.mark.parametrize("data", [REQUEST, b"\x16\x03\x01", b"GET", b"\x00", b"PROXX",
                                  b"proxy ", b"PROXY\t"])
def test_no_header_is_refused_from_the_first_bytes_that_show_it(data):
    refused(data, match="no PROXY header|wrong signature")


def test_nothing_yet_needs_more():
    assert parse(b"") is None
    assert parse(b"PROX") is None
    assert parse(V2_SIGNATURE[:5]) is None


def test_v2_only_refuses_v1_and_v1_only_refuses_v2():
    refused(v1(), "v2", match="v1 header where v2")
    refused(b"P", "v2", match="v1 header where v2")
    refused(v2(), "v1", match="v2 header where v1")
    assert parse(V2_SIGNATURE[:11], "v1") is None  # not yet certain
    assert parsed(v1(), "v1").version == 1
    assert parsed(v2(), "v2").version == 2


# --- fuzz -----------------------------------------------------------------------------------

def _valid_headers() -> list[bytes]:
    return [v1(), v1("TCP6", "2001:db8::1", "::1"), b"PROXY UNKNOWN\r\n", v2(),
            v2(family=INET6, source="::1", destination="::2"), v2(command=LOCAL),
            v2(family=UNIX, source="/a", destination="/b"),
            v2(tlvs=tlv(0x01, b"h2") + ssl_tlv(version="TLSv1.3"), crc=True)]


def _check(data: bytes, accept: str) -> None:
    try:
        result = parse(data, accept)
    except ProxyProtocolError:
        return
    if result is not None:
        header, size = result
        assert 0 < size <= len(data)
        # Never reads past the header: what follows changes nothing.
        again = parse(data[:size] + b"\xff" * 7, accept)
        assert again is not None and again[1] == size


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["v1", "v2", "any"]))
def test_fuzz_random_bytes(data, accept):
    _check(data, accept)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(_valid_headers()), st.data(), st.binary(max_size=40))
def test_fuzz_mutated_headers(header, data, tail):
    mutated = bytearray(header)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    _check(bytes(mutated[:cut]) + tail, "any")
    _check(bytes(mutated) + tail, "any")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_valid_headers()), st.binary(max_size=200))
def test_fuzz_valid_header_then_anything_is_read_exactly(header, rest):
    result = parse(header + rest)
    assert result is not None and result[1] == len(header)
