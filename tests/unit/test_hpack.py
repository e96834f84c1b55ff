"""http2/hpack.py: RFC 7541's examples, a differential check against the hpack package (the
reference h2 uses) in both directions, every refusal of the strict decoder, and the HPACK bomb.
"""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duck_prefork.http2.hpack import Decoder, Encoder, HeaderListTooLarge, HpackError

pytestmark = pytest.mark.timeout(120)


def unhex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def table(decoder: Decoder) -> list[tuple[bytes, bytes]]:
    """The decoder's dynamic table, newest first (index 62 first), as the RFC lists it."""
    return decoder.entries[decoder.first:][::-1]


def reference_table(decoder: hpack.Decoder) -> list[tuple[bytes, bytes]]:
    return [(bytes(name), bytes(value)) for name, value in
            decoder.header_table.dynamic_entries]


# RFC 7541 Appendix C ---------------------------------------------------------------------------

@pytest.mark.parametrize("block, fields, dynamic", [
    # C.2.1: literal with indexing, new name
    ("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
     [(b"custom-key", b"custom-header")], [(b"custom-key", b"custom-header")]),
    # C.2.2: literal without indexing, indexed name
    ("040c 2f73 616d 706c 652f 7061 7468", [(b":path", b"/sample/path")], []),
    # C.2.3: literal never indexed, new name
    ("1008 7061 7373 776f 7264 0673 6563 7265 74", [(b"password", b"secret")], []),
    # C.2.4: indexed
    ("82", [(b":method", b"GET")], []),
])
def test_rfc_single_fields(block, fields, dynamic):
    decoder = Decoder()
    assert decoder.decode(unhex(block)) == fields
    assert table(decoder) == dynamic
    assert decoder.size == sum(len(n) + len(v) + 32 for n, v in dynamic)


REQUESTS = [  # C.3 (no Huffman) and C.4 (Huffman): three requests on one connection, 4096
    ([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
      (b":authority", b"www.example.com")],
     [(b":authority", b"www.example.com")], 57),
    ([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
      (b":authority", b"www.example.com"), (b"cache-control", b"no-cache")],
     [(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")], 110),
    ([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
      (b":authority", b"www.example.com"), (b"custom-key", b"custom-value")],
     [(b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"),
      (b":authority", b"www.example.com")], 164),
]
C3 = ["8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
      "8286 84be 5808 6e6f 2d63 6163 6865",
      "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"]
C4 = ["8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
      "8286 84be 5886 a8eb 1064 9cbf",
      "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"]

DATE_21 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE_22 = b"Mon, 21 Oct 2013 20:13:22 GMT"
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
LOCATION = (b"location", b"https://www.example.com")
RESPONSES = [  # C.5 (no Huffman) and C.6 (Huffman): three responses, a table of 256 bytes
    ([(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE_21), LOCATION],
     [LOCATION, (b"date", DATE_21), (b"cache-control", b"private"), (b":status", b"302")],
     222),
    ([(b":status", b"307"), (b"cache-control", b"private"), (b"date", DATE_21), LOCATION],
     [(b":status", b"307"), LOCATION, (b"date", DATE_21), (b"cache-control", b"private")],
     222),
    ([(b":status", b"200"), (b"cache-control", b"private"), (b"date", DATE_22), LOCATION,
      (b"content-encoding", b"gzip"), (b"set-cookie", COOKIE)],
     [(b"set-cookie", COOKIE), (b"content-encoding", b"gzip"), (b"date", DATE_22)], 215),
]
C5 = ["4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133"
      "2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70"
      "6c65 2e63 6f6d",
      "4803 3330 37c1 c0bf",
      "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d"
      "54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049"
      "5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e"
      "3d31"]
C6 = ["4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6"
      "2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
      "4883 640e ffc1 c0bf",
      "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab"
      "77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f"
      "9587 3160 65c0 03ed 4ee5 b106 3d50 07"]


@pytest.mark.parametrize("blocks, expected, table_size", [
    (C3, REQUESTS, 4096), (C4, REQUESTS, 4096), (C5, RESPONSES, 256), (C6, RESPONSES, 256)],
    ids=["C.3", "C.4", "C.5", "C.6"])
def test_rfc_examples_decode(blocks, expected, table_size):
    # The RFC's peer set SETTINGS_HEADER_TABLE_SIZE to 256 for C.5 and C.6; its encoder uses
    # it without a size update (a decoder starts at the setting).
    decoder = Decoder(max_table_size=table_size)
    for block, (fields, dynamic, size) in zip(blocks, expected, strict=True):
        assert decoder.decode(unhex(block)) == fields
        assert table(decoder) == dynamic
        assert decoder.size == size


def test_rfc_examples_encode():
    # Our encoder makes the RFC's own choices (indexed when it can, else incremental indexing
    # with the name's index), so it writes the non-Huffman requests (C.3) byte for byte. (Not
    # C.5's responses: they index set-cookie, which we send never-indexed; C.5 is decoded
    # above.)
    encoder = Encoder()
    for block, (fields, _, _) in zip(C3, REQUESTS, strict=True):
        assert encoder.encode(fields) == unhex(block)


@pytest.mark.parametrize("mask, encoded, value", [
    (0x1F, "0a", 10), (0x1F, "1f9a0a", 1337), (0xFF, "2a", 42)])  # C.1.1-C.1.3
def test_rfc_integers(mask, encoded, value):
    from duck_prefork.http2.hpack import _decode_integer, _encode_integer
    assert _decode_integer(unhex(encoded), 0, mask) == (value, len(unhex(encoded)))
    assert _encode_integer(value, mask, 0) == unhex(encoded)


# Refusals ---------------------------------------------------------------------------------------

ERRORS = {
    "index 0": b"\x80",
    "index past the static table, empty dynamic table": b"\xbe",
    "index far past the tables": b"\xff\xff\xff\x03",
    "literal's name index past the tables": b"\x7e\x01a",
    "never indexed name index past the tables": b"\x1f\x30\x01a",
    "integer above 2**31 - 1": b"\xff\xff\xff\xff\xff\x0f",
    "integer with 7 continuation bytes": b"\xff\x80\x80\x80\x80\x80\x80\x00",
    "integer cut short": b"\xff",
    "integer cut short after a continuation byte": b"\xff\x80",
    "size update after a field": b"\x82\x20",
    "three size updates": b"\x20\x20\x20",
    "size update above our setting": b"\x3f\xe2\x1f",  # 4097
    "string longer than the block": b"\x40\x05abc",
    "block ends before the value": b"\x40\x01a",
    "block ends before the name": b"\x40",
    "block ends inside a length": b"\x00\x7f",
    "Huffman EOS alone": b"\x00\x01a\x84\xff\xff\xff\xff",
    "Huffman EOS then a symbol": b"\x00\x01a\x85\xff\xff\xff\xff\xfc",
    "Huffman padding of 8 bits": b"\x00\x01a\x81\xff",
    "Huffman padding of 11 bits": b"\x00\x01a\x82\x1f\xff",
    "Huffman padding of 29 bits": b"\x00\x01a\x85\xff\x9f\xff\xff\xff",
    "Huffman padding with a 0 bit": b"\x00\x01a\x81\x18",
    "Huffman padding inside a long code": b"\x00\x01a\x87R\xbc0\xff\xff\xff\xff",
    "Huffman name with bad padding": b"\x00\x81\xff\x01a",
}


@pytest.mark.parametrize("block", ERRORS.values(), ids=ERRORS.keys())
def test_refused(block):
    with pytest.raises(HpackError):
        Decoder().decode(block)


def test_what_the_refusals_border_on_is_accepted():
    decoder = Decoder()
    assert decoder.decode(b"\x00\x01a\x81\x1f") == [(b"a", b"a")]  # "a", 3 bits of padding
    assert decoder.decode(b"\x00\x01a\x80") == [(b"a", b"")]  # empty Huffman string
    assert decoder.decode(b"\x20\x3f\xe1\x1f\x82") == [(b":method", b"GET")]  # 0, then 4096
    assert decoder.decode(b"") == []
    # Name index 15 + 43 (user-agent) padded to 6 continuation bytes, the most taken.
    assert decoder.decode(b"\x0f\xab\x80\x80\x80\x80\x00\x00") == [(b"user-agent", b"")]
    # The largest integer taken, as a table size: refused as a size, not as an integer.
    with pytest.raises(HpackError, match="above SETTINGS"):
        Decoder().decode(b"\x3f" + _continuation((1 << 31) - 1 - 31))


def _continuation(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def test_integer_bound_is_2_31_minus_1():
    from duck_prefork.http2.hpack import _decode_integer
    largest = b"\x7f" + _continuation((1 << 31) - 1 - 127)
    assert _decode_integer(largest, 0, 0x7F) == ((1 << 31) - 1, len(largest))
    with pytest.raises(HpackError):
        _decode_integer(b"\x7f" + _continuation((1 << 31) - 127), 0, 0x7F)


def test_entry_larger_than_the_table_empties_it():
    decoder = Decoder(max_table_size=100)
    decoder.decode(b"\x40\x01a\x01b")
    assert table(decoder) == [(b"a", b"b")]
    assert decoder.decode(b"\x40\x01c\x40" + b"v" * 64) == [(b"c", b"v" * 64)]  # 97 > 100-34
    assert table(decoder) == [(b"c", b"v" * 64)]
    assert decoder.decode(b"\x40\x01d\x44" + b"v" * 68) == [(b"d", b"v" * 68)]  # 101 > 100
    assert table(decoder) == [] and decoder.size == 0
    with pytest.raises(HpackError):
        decoder.decode(b"\xbe")


def test_a_literal_may_name_the_entry_its_insertion_evicts():
    decoder = Decoder(max_table_size=70)
    decoder.decode(b"\x40\x04name\x05value")  # 41 bytes
    assert decoder.decode(b"\x7e\x06value2") == [(b"name", b"value2")]  # evicts index 62
    assert table(decoder) == [(b"name", b"value2")]


def test_size_update_evicts_and_bounds_the_table():
    decoder = Decoder()
    decoder.decode(b"\x40\x01a\x01b\x40\x01c\x01d")
    assert decoder.decode(b"\x3f\x03") == []  # 34: room for one entry
    assert table(decoder) == [(b"c", b"d")]
    assert decoder.decode(b"\x40\x01e\x01f\xbe") == [(b"e", b"f"), (b"e", b"f")]
    assert table(decoder) == [(b"e", b"f")]
    with pytest.raises(HpackError):
        decoder.decode(b"\xbf")


def test_eviction_keeps_indexes_right_over_many_entries():
    # Hundreds of insertions go through the front-of-list compaction many times.
    decoder = Decoder(max_table_size=400)
    reference = hpack.Decoder()
    reference.header_table_size = 400
    reference.max_allowed_table_size = 400
    encoder = hpack.Encoder()
    encoder.header_table_size = 400
    for i in range(600):
        fields = [(b"k%d" % i, b"v" * (i % 50)), (b"k%d" % (i - 3), b"v" * ((i - 3) % 50))]
        block = encoder.encode(fields, huffman=bool(i % 2))
        assert decoder.decode(block) == fields
        reference.decode(block, raw=True)
        assert table(decoder) == reference_table(reference)
    assert len(decoder.entries) < 100  # evicted slots do not pile up


# The header list bound and the HPACK bomb ------------------------------------------------------

def test_header_list_bound_counts_name_value_and_32():
    decoder = Decoder(max_header_list_size=2 * (1 + 1 + 32))
    assert decoder.decode(b"\x00\x01a\x01b\x00\x01c\x01d") == [(b"a", b"b"), (b"c", b"d")]
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(b"\x00\x01a\x01b\x00\x01c\x01d\x00\x01e\x00")


def test_hpack_bomb_stops_at_the_bound():
    # One 4 KiB entry, then a block of a few bytes referencing it thousands of times: 40 MB
    # decoded from 10 kB. The bound stops it at the 17th reference (17 * 4033 > 65536): the
    # index 0 at the end of the block is never reached, so the list was not built first.
    decoder = Decoder()
    value = b"v" * 4000
    decoder.decode(b"\x40\x01x\x7f" + _continuation(4000 - 127) + value)
    assert table(decoder) == [(b"x", value)]
    assert decoder.decode(b"\xbe" * 16) == [(b"x", value)] * 16
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(b"\xbe" * 10000 + b"\x80")
    assert issubclass(HeaderListTooLarge, HpackError)


def test_no_header_list_bound_when_0():
    decoder = Decoder(max_header_list_size=0)
    decoder.decode(b"\x40\x01x\x7f" + _continuation(4000 - 127) + b"v" * 4000)
    assert len(decoder.decode(b"\xbe" * 100)) == 100


# Differential against the hpack package ---------------------------------------------------------

STATIC_NAMES = sorted({name for name, _ in hpack.table.HeaderTable.STATIC_TABLE})
names = st.one_of(st.sampled_from(STATIC_NAMES + [b"x-request-id", b"x-a"]),
                  st.binary(max_size=12))
values = st.one_of(st.sampled_from([b"", b"GET", b"/", b"200", b"gzip, deflate", b"text/plain"]),
                   st.binary(max_size=120),
                   st.binary(min_size=1000, max_size=5000))
header_lists = st.lists(st.tuples(names, values), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(header_lists, st.booleans(), st.booleans(),
                          st.one_of(st.none(), st.integers(0, 4096))),
                min_size=1, max_size=8))
def test_decodes_what_hpack_encodes(blocks):
    """hpack.Encoder's blocks (Huffman or not, some fields never indexed, table size changes)
    decode to the same fields, and our table stays equal to hpack.Decoder's."""
    encoder = hpack.Encoder()
    ours = Decoder(max_header_list_size=0)
    reference = hpack.Decoder(max_header_list_size=1 << 30)
    for fields, huffman, sensitive, size in blocks:
        if size is not None:
            encoder.header_table_size = size
        block = encoder.encode([(n, v, sensitive) for n, v in fields], huffman=huffman)
        assert ours.decode(block) == fields
        assert [(bytes(n), bytes(v)) for n, v in reference.decode(block, raw=True)] == fields
        assert table(ours) == reference_table(reference)
        assert ours.size == reference.header_table._current_size


response_names = st.one_of(st.sampled_from(STATIC_NAMES[8:] + [b"x-request-id", b"x-a"]),
                           st.binary(min_size=1, max_size=12).map(bytes.lower))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(response_names, values), max_size=12),
                          st.one_of(st.none(), st.integers(0, 8192))),
                min_size=1, max_size=12))
def test_hpack_decodes_what_we_encode(blocks):
    """Our blocks decode with hpack.Decoder to the same fields, across blocks sharing a
    table and the peer's SETTINGS_HEADER_TABLE_SIZE changing between them (hpack refuses a
    block that does not first shrink the table below a lowered setting)."""
    encoder = Encoder()
    reference = hpack.Decoder(max_header_list_size=1 << 30)
    for fields, setting in blocks:
        if setting is not None:
            encoder.set_max_table_size(setting)
            reference.max_allowed_table_size = setting
        block = encoder.encode(fields)
        assert [(bytes(n), bytes(v)) for n, v in reference.decode(block, raw=True)] == fields
        assert encoder.entries[encoder.first:][::-1] == reference_table(reference)
        # The index is exact: every field and name it holds is in the table under that number.
        for field, number in encoder.fields.items():
            assert encoder.entries[encoder.first + number - encoder.evicted] == field
        for name, number in encoder.names.items():
            assert encoder.entries[encoder.first + number - encoder.evicted][0] == name


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_random_bytes_raise_only_hpack_error(data, primed):
    decoder = Decoder(max_header_list_size=300)
    reference = hpack.Decoder()
    if primed:  # a table to index into
        block = hpack.Encoder().encode([(b"x-a", b"1"), (b"cookie", b"c" * 40)])
        decoder.decode(block)
        reference.decode(block)
    try:
        fields = decoder.decode(data)
    except HpackError:
        return
    # What we accept, the reference accepts the same way (we are the stricter of the two).
    assert [(bytes(n), bytes(v)) for n, v in reference.decode(data, raw=True)] == fields
    assert table(decoder) == reference_table(reference)


@settings(max_examples=500, deadline=None)
@given(header_lists, st.booleans(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255),
                                                        st.sampled_from("set cut insert")),
                                              min_size=1, max_size=3))
def test_damaged_blocks_raise_only_hpack_error(fields, huffman, damage):
    """A valid block (on a primed table) with a byte changed, cut short or inserted: refused
    with HpackError, or decoded exactly as the reference decodes it."""
    encoder = hpack.Encoder()
    prime = encoder.encode(fields, huffman=huffman)
    block = bytearray(encoder.encode(fields + fields[:2], huffman=huffman))
    for where, byte, how in damage:
        at = where % (len(block) + 1)
        if how == "insert":
            block.insert(at, byte)
        elif how == "cut":
            del block[at:]
        elif at < len(block):
            block[at] = byte
    decoder, reference = Decoder(max_header_list_size=0), hpack.Decoder(1 << 30)
    decoder.decode(prime)
    reference.decode(prime, raw=True)
    try:
        decoded = decoder.decode(bytes(block))
    except HpackError:
        return
    assert [(bytes(n), bytes(v)) for n, v in reference.decode(bytes(block), raw=True)] \
        == decoded
    assert table(decoder) == reference_table(reference)


# The encoder's choices ----------------------------------------------------------------------

RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"13"),
            (b"server", b"duck-prefork"), (b"date", b"Mon, 07 Dec 2026 06:00:00 GMT")]


def test_repeated_response_costs_a_byte_a_field():
    encoder = Encoder()
    reference = hpack.Decoder()
    first = encoder.encode(RESPONSE)
    assert first[0] == 0x88  # :status 200 is static index 8
    assert reference.decode(first, raw=True) == RESPONSE
    for _ in range(3):
        again = encoder.encode(RESPONSE)
        assert again == b"\x88\xc1\xc0\xbf\xbe"
        assert reference.decode(again, raw=True) == RESPONSE


def test_table_size_0_never_indexes():
    encoder = Encoder()
    reference = hpack.Decoder()
    reference.decode(encoder.encode(RESPONSE), raw=True)
    encoder.set_max_table_size(0)
    reference.max_allowed_table_size = 0
    block = encoder.encode(RESPONSE)
    assert block.startswith(b"\x20\x88\x0f\x10")  # size 0, :status 200, content-type (31)
    assert encoder.entries[encoder.first:] == [] and encoder.fields == {}
    assert reference.decode(block, raw=True) == RESPONSE
    block = encoder.encode(RESPONSE)
    assert block[0] == 0x88  # no further update
    assert reference.decode(block, raw=True) == RESPONSE


def test_shrink_then_grow_sends_both_updates():
    encoder = Encoder()
    encoder.encode(RESPONSE)
    encoder.set_max_table_size(100)
    encoder.set_max_table_size(50)
    encoder.set_max_table_size(4096)
    assert encoder.encode([]) == b"\x3f\x13\x3f\xe1\x1f"  # 50, then 4096
    assert encoder.encode([]) == b""


def test_peer_table_above_4096_is_not_used():
    encoder = Encoder()
    encoder.set_max_table_size(65536)
    assert encoder.encode([]) == b""
    assert encoder.table_size == 4096


def test_field_larger_than_the_table_is_not_indexed():
    encoder = Encoder()
    field = (b"x-big", b"b" * 5000)
    block = encoder.encode([field, field])
    assert block[0] == 0x00 and encoder.fields == {}
    assert hpack.Decoder(max_header_list_size=1 << 20).decode(block, raw=True) == [field] * 2


def test_indexes_past_126_take_more_bytes():
    encoder = Encoder()
    fields = [(b"x-%03d" % i, b"v") for i in range(80)]
    reference = hpack.Decoder()
    reference.decode(encoder.encode(fields), raw=True)
    block = encoder.encode(fields[:1])  # the oldest: index 61 + 80
    assert block == b"\xff\x0e"
    assert reference.decode(block, raw=True) == fields[:1]


def test_runs_of_one_byte_indexes_around_longer_fields():
    # One-byte indexes gather 7 at a time; a literal or a long index in between flushes them.
    encoder = Encoder()
    reference = hpack.Decoder()
    many = [(b"x-%03d" % i, b"v") for i in range(80)]
    reference.decode(encoder.encode(many), raw=True)
    static = [(b":status", b"200"), (b":method", b"GET"), (b":path", b"/")] * 3  # 9
    fields = static + [many[0], (b"x-new", b"1")] + static[:8] + [many[79]] * 7 + [many[0]]
    block = encoder.encode(fields)
    assert block.startswith(bytes([0x88, 0x82, 0x84] * 3) + b"\xff\x0e\x40\x05x-new\x011")
    assert reference.decode(block, raw=True) == fields


def test_secrets_are_never_indexed():
    """RFC 7541 7.1.3: set-cookie and its kin go as never-indexed literals every time, out
    of our table (a compression oracle cannot test guesses against it)."""
    encoder = Encoder()
    peer = hpack.Decoder()
    fields = [(b":status", b"200"), (b"set-cookie", b"session=secret")]
    for _ in range(2):
        block = encoder.encode(fields)
        assert block[1] & 0xF0 == 0x10  # after :status (one byte): never indexed
        decoded = peer.decode(block, raw=True)
        assert decoded == fields
        assert isinstance(decoded[1], hpack.NeverIndexedHeaderTuple)
    assert encoder.size == 0 and not encoder.entries
