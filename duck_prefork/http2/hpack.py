"""HPACK (RFC 7541), the header compression of HTTP/2: a strict decoder for the client's
header blocks and a cheap encoder for our responses, compiled with mypyc (build.py).

The decoder faces the internet, so it refuses, as an HpackError (the connection ends with
COMPRESSION_ERROR): integers past 2**31 - 1 or with more than six continuation bytes, indexes
outside the tables, a table size update anywhere but at the start of a block (at most two of
them) or above our SETTINGS_HEADER_TABLE_SIZE, strings longer than the block, and Huffman
strings with the EOS symbol or padding that is not up to seven 1 bits. The decoded list is
measured as each field is decoded (name + value + 32, RFC 9113 6.5.2), so a small block that
references a large table entry thousands of times (an HPACK bomb) stops at the bound
(HeaderListTooLarge) instead of after building the list.

The encoder never Huffman-codes (the RFC allows it; it saves a pass over every string for a few
bytes), sends a field found in the static or the dynamic table as its index, and otherwise a
literal with incremental indexing, so a response's repeated fields cost one byte each from the
second response on. A field that changes on every response (date, content-length) churns
through the table, which eviction handles; a dict maps each field in our table to its insertion
number, so finding an index is one lookup whatever has been evicted.

Huffman decoding is a table walk 4 bits at a time (nghttp2's design): the states are the 256
inner nodes of the code tree, and three tables give, for each state and nibble, the next state,
the byte emitted (a code is at least 5 bits long, so at most one per nibble), and whether the
bits since the last byte may end the string (up to seven 1 bits: a prefix of EOS) or the
nibble is an error (it completes EOS).

Both dynamic tables (the decoder's, the encoder's) keep their entries in a list, oldest first:
an index is arithmetic on its length.
Evicted entries leave the front of the list in batches (a slot is cleared at once, so an
evicted value is not kept alive), which keeps eviction O(1) amortised.
"""

from __future__ import annotations

from typing import Any, Final

from mypy_extensions import i64

from ..errors import HeaderListTooLarge, HpackError

__all__ = ["Decoder", "Encoder", "HeaderListTooLarge", "HpackError"]

# RFC 7541 Appendix A, index 1 first.
_STATIC_TABLE: Final[tuple[tuple[bytes, bytes], ...]] = (
    (b':authority', b''), (b':method', b'GET'), (b':method', b'POST'),  # 1
    (b':path', b'/'), (b':path', b'/index.html'), (b':scheme', b'http'),  # 4
    (b':scheme', b'https'), (b':status', b'200'), (b':status', b'204'),  # 7
    (b':status', b'206'), (b':status', b'304'), (b':status', b'400'),  # 10
    (b':status', b'404'), (b':status', b'500'), (b'accept-charset', b''),  # 13
    (b'accept-encoding', b'gzip, deflate'), (b'accept-language', b''),  # 16
    (b'accept-ranges', b''),  # 18
    (b'accept', b''), (b'access-control-allow-origin', b''), (b'age', b''),  # 19
    (b'allow', b''), (b'authorization', b''), (b'cache-control', b''),  # 22
    (b'content-disposition', b''), (b'content-encoding', b''), (b'content-language', b''),  # 25
    (b'content-length', b''), (b'content-location', b''), (b'content-range', b''),  # 28
    (b'content-type', b''), (b'cookie', b''), (b'date', b''),  # 31
    (b'etag', b''), (b'expect', b''), (b'expires', b''),  # 34
    (b'from', b''), (b'host', b''), (b'if-match', b''),  # 37
    (b'if-modified-since', b''), (b'if-none-match', b''), (b'if-range', b''),  # 40
    (b'if-unmodified-since', b''), (b'last-modified', b''), (b'link', b''),  # 43
    (b'location', b''), (b'max-forwards', b''), (b'proxy-authenticate', b''),  # 46
    (b'proxy-authorization', b''), (b'range', b''), (b'referer', b''),  # 49
    (b'refresh', b''), (b'retry-after', b''), (b'server', b''),  # 52
    (b'set-cookie', b''), (b'strict-transport-security', b''), (b'transfer-encoding', b''),  # 55
    (b'user-agent', b''), (b'vary', b''), (b'via', b''),  # 58
    (b'www-authenticate', b''),  # 61
)
_STATIC_COUNT: Final = 61
# Fields are kept and handed on as the tuple objects they are, typed Any: mypyc would unbox a
# tuple[bytes, bytes] into a C struct and box a new tuple at every use (a dict key, a list
# item). A decoded indexed field is the table's own tuple: no allocation.
_STATIC: Final[list[Any]] = list(_STATIC_TABLE)  # index 1 at 0
# RFC 7541 4.1: an entry takes its name, its value and 32 bytes (as does a field in the
# header list size, RFC 9113 6.5.2).
_ENTRY_OVERHEAD: Final = 32
_STATIC_SIZES: Final[list[int]] = [len(n) + len(v) + _ENTRY_OVERHEAD for n, v in _STATIC_TABLE]
# The first static index of each field and of each name, for the encoder.
_STATIC_FIELDS: Final[dict[Any, int]] = {}
_STATIC_NAMES: Final[dict[bytes, int]] = {}
for _index, _field in enumerate(_STATIC_TABLE, 1):
    _STATIC_FIELDS.setdefault(_field, _index)
    _STATIC_NAMES.setdefault(_field[0], _index)

# Integers above this are refused (RFC 7541 5.1 lets a decoder bound them; sizes and indexes
# past it are attacks), and so are more continuation bytes than this, even of zeros.
_MAX_INTEGER: Final = (1 << 31) - 1
_MAX_CONTINUATION_BYTES: Final = 6
# The dynamic table our encoder uses at most, whatever the peer allows: each connection keeps
# one, and 4096 bytes hold every field a response repeats.
_ENCODER_TABLE_LIMIT: Final = 4096
# Evicted slots at the front of a table's lists are deleted once there are this many (and they
# are half the list): one list shift per batch rather than one per eviction.
_COMPACT_AFTER: Final = 32


def _compacted(entries: list[Any], sizes: list[int], first: i64) -> i64:
    """A table's list after eviction: the cleared slots before `first` are dropped in one
    batch once they are many and at least half of it (O(1) amortised); the new `first`."""
    if first >= _COMPACT_AFTER and first * 2 >= len(entries):
        del entries[:first]
        del sizes[:first]
        return 0
    return first


# "No limit" for the header list size.
_UNLIMITED: Final = 1 << 62

# RFC 7541 Appendix B: (code, bit length) of symbols 0-255 and EOS (256).
_HUFFMAN_CODES: Final[tuple[tuple[int, int], ...]] = (
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), (0xfffffe4, 28),  # 0
    (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28), (0xfffffe8, 28), (0xffffea, 24),  # 5
    (0x3ffffffc, 30), (0xfffffe9, 28), (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28),  # 10
    (0xfffffec, 28), (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),  # 15
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28), (0xffffff4, 28),  # 20
    (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), (0xffffff8, 28), (0xffffff9, 28),  # 25
    (0xffffffa, 28), (0xffffffb, 28), (0x14, 6), (0x3f8, 10), (0x3f9, 10),  # 30
    (0xffa, 12), (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11),  # 35
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11), (0xfa, 8),  # 40
    (0x16, 6), (0x17, 6), (0x18, 6), (0x0, 5), (0x1, 5),  # 45
    (0x2, 5), (0x19, 6), (0x1a, 6), (0x1b, 6), (0x1c, 6),  # 50
    (0x1d, 6), (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),  # 55
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), (0x1ffa, 13),  # 60
    (0x21, 6), (0x5d, 7), (0x5e, 7), (0x5f, 7), (0x60, 7),  # 65
    (0x61, 7), (0x62, 7), (0x63, 7), (0x64, 7), (0x65, 7),  # 70
    (0x66, 7), (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7),  # 75
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7), (0x6f, 7),  # 80
    (0x70, 7), (0x71, 7), (0x72, 7), (0xfc, 8), (0x73, 7),  # 85
    (0xfd, 8), (0x1ffb, 13), (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14),  # 90
    (0x22, 6), (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5),  # 95
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6), (0x27, 6),  # 100
    (0x6, 5), (0x74, 7), (0x75, 7), (0x28, 6), (0x29, 6),  # 105
    (0x2a, 6), (0x7, 5), (0x2b, 6), (0x76, 7), (0x2c, 6),  # 110
    (0x8, 5), (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),  # 115
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), (0x7fc, 11),  # 120
    (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28), (0xfffe6, 20), (0x3fffd2, 22),  # 125
    (0xfffe7, 20), (0xfffe8, 20), (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22),  # 130
    (0x7fffd9, 23), (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23),  # 135
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23), (0xffffec, 24),  # 140
    (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23), (0xffffee, 24), (0x7fffe1, 23),  # 145
    (0x7fffe2, 23), (0x7fffe3, 23), (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22),  # 150
    (0x7fffe5, 23), (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24),  # 155
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22), (0x3fffdc, 22),  # 160
    (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21), (0x7fffea, 23), (0x3fffdd, 22),  # 165
    (0x3fffde, 22), (0xfffff0, 24), (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23),  # 170
    (0x7fffec, 23), (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),  # 175
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23), (0xfffea, 20),  # 180
    (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22), (0x7ffff0, 23), (0x3fffe5, 22),  # 185
    (0x3fffe6, 22), (0x7ffff1, 23), (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20),  # 190
    (0x7fff1, 19), (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25),  # 195
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27), (0x7ffffdf, 27),  # 200
    (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25), (0x7fff2, 19), (0x1fffe3, 21),  # 205
    (0x3ffffe6, 26), (0x7ffffe0, 27), (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27),  # 210
    (0xfffff2, 24), (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26),  # 215
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27), (0xfffec, 20),  # 220
    (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21), (0x3fffe9, 22), (0x1fffe7, 21),  # 225
    (0x1fffe8, 21), (0x7ffff3, 23), (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25),  # 230
    (0x1ffffef, 25), (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),  # 235
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), (0x7ffffe7, 27),  # 240
    (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27), (0x7ffffeb, 27), (0xffffffe, 28),  # 245
    (0x7ffffec, 27), (0x7ffffed, 27), (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27),  # 250
    (0x3ffffee, 26), (0x3fffffff, 30),  # 255
)
_EOS: Final = 256

# The Huffman walk, as three tables indexed by state * 16 + nibble (bytes: mypyc reads an item
# as a C integer, with no object): the next state, the byte emitted if _EMITS, and the flags.
_EMITS: Final = 1
_ACCEPTS: Final = 2  # the string may end after this nibble
_FAILS: Final = 4  # the nibble completes EOS


def _huffman_tables() -> tuple[bytes, bytes, bytes]:
    """The 4-bit Huffman walk (next states, bytes emitted, flags), from the code table
    (nghttp2's lib/nghttp2_hd_huffman_data.c is the same walk, generated)."""
    # The code tree: children[node] = [child for bit 0, child for bit 1]; a child is an inner
    # node's number (> 0: the root, 0, is nobody's child), a leaf as -(symbol + 1), or 0 while
    # not yet made.
    children: list[list[int]] = [[0, 0]]
    for symbol, (code, length) in enumerate(_HUFFMAN_CODES):
        node = 0
        for shift in range(length - 1, 0, -1):
            bit = (code >> shift) & 1
            child = children[node][bit]
            if child == 0:
                children.append([0, 0])
                child = len(children) - 1
                children[node][bit] = child
            node = child
        children[node][code & 1] = -(symbol + 1)
    assert len(children) == 256  # 257 leaves: the states fit a byte
    # The string may end where the bits since the last symbol are up to seven 1s (RFC 7541
    # 5.2: padding is a prefix of EOS, shorter than 8 bits): the root and the all-1 path.
    accepting = {0}
    node = 0
    for _ in range(7):
        node = children[node][1]
        accepting.add(node)
    next_states = bytearray(256 * 16)
    emitted_bytes = bytearray(256 * 16)
    flags = bytearray(256 * 16)
    for state in range(256):
        for nibble in range(16):
            step = state * 16 + nibble
            node = state
            for shift in (3, 2, 1, 0):
                child = children[node][(nibble >> shift) & 1]
                if child > 0:
                    node = child
                    continue
                symbol = -child - 1
                # (A code is at least 5 bits long: two in one nibble cannot be. A complete
                # code has no gaps, child == 0: kept as an error anyway.)
                if child == 0 or symbol == _EOS or flags[step] & _EMITS:
                    flags[step] = _FAILS
                    break
                flags[step] = _EMITS
                emitted_bytes[step] = symbol
                node = 0
            if not flags[step] & _FAILS:
                next_states[step] = node
                if node in accepting:
                    flags[step] |= _ACCEPTS
    return bytes(next_states), bytes(emitted_bytes), bytes(flags)


_HUFFMAN_TABLES: Final = _huffman_tables()
_HUFFMAN_NEXT: Final = _HUFFMAN_TABLES[0]
_HUFFMAN_EMITTED: Final = _HUFFMAN_TABLES[1]
_HUFFMAN_FLAGS: Final = _HUFFMAN_TABLES[2]


def _huffman_decode(data: bytes, start: i64, stop: i64) -> bytes:
    """data[start:stop] Huffman-decoded; HpackError for EOS inside or bad padding."""
    next_states = _HUFFMAN_NEXT
    emitted = _HUFFMAN_EMITTED
    flags_of = _HUFFMAN_FLAGS
    # The bytes decoded gather in a machine word, turned into bytes every 6 or 7 of them
    # (int.to_bytes is one C call under mypyc; a list of ints and bytes(list) cost ~10 ns a
    # byte, twice the walk).
    chunks: list[bytes] = []
    word: i64 = 0
    count: i64 = 0
    flags: i64 = _ACCEPTS  # the empty string is valid
    state: i64 = 0
    for i in range(start, stop):
        byte: i64 = data[i]
        step = (state << 4) | (byte >> 4)
        flags = flags_of[step]
        if flags & (_EMITS | _FAILS):
            if flags & _FAILS:
                raise HpackError("a Huffman string contains EOS")
            word = (word << 8) | emitted[step]
            count += 1
        step = (next_states[step] << 4) | (byte & 0xF)
        flags = flags_of[step]
        if flags & (_EMITS | _FAILS):
            if flags & _FAILS:
                raise HpackError("a Huffman string contains EOS")
            word = (word << 8) | emitted[step]
            count += 1
        state = next_states[step]
        if count >= 6:  # (at most 2 more a byte: the word never holds more than 7)
            chunks.append(int(word).to_bytes(int(count), "big"))
            word = 0
            count = 0
    if not flags & _ACCEPTS:
        raise HpackError("a Huffman string ends in padding that is not a prefix of EOS "
                         "or is 8 bits or longer")
    last = int(word).to_bytes(int(count), "big")
    if not chunks:
        return last
    chunks.append(last)
    return b"".join(chunks)


def _decode_integer(data: bytes, pos: i64, mask: i64) -> tuple[i64, i64]:
    """(value, position after it) of the integer at data[pos] whose prefix is the bits in
    `mask` (RFC 7541 5.1)."""
    end: i64 = len(data)
    if pos >= end:
        raise HpackError("a header block ends inside a field")
    value: i64 = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift: i64 = 0
    while True:
        if pos >= end:
            raise HpackError("a header block ends inside an integer")
        byte: i64 = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift >= 7 * _MAX_CONTINUATION_BYTES:
            raise HpackError("an integer with too many continuation bytes")
    if value > _MAX_INTEGER:
        raise HpackError("an integer above 2**31 - 1")
    return value, pos


def _decode_string(data: bytes, pos: i64) -> tuple[bytes, i64]:
    """(string, position after it) of the string literal at data[pos] (RFC 7541 5.2)."""
    end: i64 = len(data)
    if pos >= end:
        raise HpackError("a header block ends before a string")
    huffman = data[pos] & 0x80
    length, pos = _decode_integer(data, pos, 0x7F)
    stop = pos + length
    if stop > end:
        raise HpackError("a string longer than the header block")
    if huffman:
        return _huffman_decode(data, pos, stop), stop
    return data[pos:stop], stop


class Decoder:
    """Decodes a connection's header blocks, in order (they share the dynamic table).

    The table starts at max_table_size (our SETTINGS_HEADER_TABLE_SIZE): right for the
    protocol's default, 4096, which a client assumes until it sees our SETTINGS. A lower
    setting would need the table to stay at 4096 until the client's first size update (RFC
    7541 4.2), which this decoder does not track.
    """

    def __init__(self, max_table_size: int = 4096, max_header_list_size: int = 65536) -> None:
        # Our SETTINGS_HEADER_TABLE_SIZE: the most the client's size updates may ask for.
        self.max_table_size: i64 = max_table_size
        # The size the client's encoder chose (RFC 7541 4.2), and what the entries take.
        self.table_size: i64 = max_table_size
        self.size: i64 = 0
        # Entries (field tuples) and their sizes, oldest first; from `first` on they are in
        # the table (before: evicted slots, None).
        self.entries: list[Any] = []
        self.sizes: list[int] = []
        self.first: i64 = 0
        self.max_header_list_size: i64 = max_header_list_size

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The fields of one complete header block (HEADERS + CONTINUATION payloads)."""
        headers: list[Any] = []
        entries = self.entries
        sizes = self.sizes
        limit = self.max_header_list_size or _UNLIMITED
        total: i64 = 0
        updates = 0
        pos: i64 = 0
        end: i64 = len(data)
        while pos < end:
            byte: i64 = data[pos]
            if byte & 0x80:  # indexed field (6.1)
                if byte != 0xFF:
                    index = byte & 0x7F
                    pos += 1
                else:
                    index, pos = _decode_integer(data, pos, 0x7F)
                if index <= _STATIC_COUNT:
                    if index == 0:
                        raise HpackError("index 0")
                    field = _STATIC[index - 1]
                    size: i64 = _STATIC_SIZES[index - 1]
                else:
                    position = len(entries) - (index - _STATIC_COUNT)
                    if position < self.first:
                        raise HpackError(f"index {index} is past the dynamic table")
                    field = entries[position]
                    size = sizes[position]
            elif byte & 0xE0 == 0x20:  # dynamic table size update (6.3)
                if headers:
                    raise HpackError("a dynamic table size update after a field")
                updates += 1
                if updates > 2:
                    raise HpackError("more than two dynamic table size updates in a block")
                table_size, pos = _decode_integer(data, pos, 0x1F)
                if table_size > self.max_table_size:
                    raise HpackError("a dynamic table size update above "
                                     "SETTINGS_HEADER_TABLE_SIZE")
                self.table_size = table_size
                self._evict(table_size)
                continue
            else:  # a literal: with incremental indexing (6.2.1), without (6.2.2), never (6.2.3)
                indexing = byte & 0x40 != 0
                index, pos = _decode_integer(data, pos, 0x3F if indexing else 0x0F)
                if index:
                    name = self._name(index)
                else:
                    name, pos = _decode_string(data, pos)
                value, pos = _decode_string(data, pos)
                field = (name, value)
                size = len(name) + len(value) + _ENTRY_OVERHEAD
                if indexing:
                    self._add(field, size)
            total += size
            if total > limit:
                raise HeaderListTooLarge(f"a header list larger than {limit} bytes")
            headers.append(field)
        return headers

    def _name(self, index: i64) -> bytes:
        """The name of the entry at `index` (a literal's indexed name)."""
        if index <= _STATIC_COUNT:
            return _STATIC_TABLE[index - 1][0]  # (index 0 means a literal name: not here)
        position = len(self.entries) - (index - _STATIC_COUNT)
        if position < self.first:
            raise HpackError(f"index {index} is past the dynamic table")
        name: bytes = self.entries[position][0]
        return name

    def _add(self, field: Any, size: i64) -> None:
        """RFC 7541 4.4: evict until the new entry fits; one larger than the table empties it
        and is not added."""
        if size > self.table_size:
            self._evict(0)
            return
        self._evict(self.table_size - size)
        self.entries.append(field)
        self.sizes.append(size)
        self.size += size

    def _evict(self, room: i64) -> None:
        """Evict the oldest entries until they take at most `room` bytes."""
        entries = self.entries
        sizes = self.sizes
        first = self.first
        size = self.size
        while size > room:
            size -= sizes[first]
            entries[first] = None  # not kept alive by its slot
            first += 1
        self.first = _compacted(entries, sizes, first)
        self.size = size


# Encoded representations short enough to be one byte, made once: the first byte of a literal
# with incremental indexing (name index < 63), a string's length (< 127, not Huffman).
_INDEXED_NAME: Final[list[bytes]] = [bytes((0x40 | i,)) for i in range(63)]
# Fields whose values are secrets a compression oracle could guess one try at a time (RFC
# 7541 7.1.3): sent as never-indexed literals, which an intermediary must pass on as such,
# and kept out of our table.
_NEVER_INDEXED: Final = frozenset((b"set-cookie", b"authorization", b"proxy-authorization",
                                   b"cookie"))
_LENGTH: Final[list[bytes]] = [bytes((i,)) for i in range(127)]


def _encode_integer(value: i64, mask: i64, flags: i64) -> bytes:
    """The integer `value` with a prefix of the bits in `mask`, or-ed with `flags` (5.1)."""
    if value < mask:
        return bytes((flags | value,))
    out = [flags | mask]
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length(string: bytes) -> bytes:
    """A string's length prefix (not Huffman)."""
    length: i64 = len(string)
    return _LENGTH[length] if length < 127 else _encode_integer(length, 0x7F, 0)


class Encoder:
    """Encodes a connection's response header blocks, in order (they share the table)."""

    def __init__(self) -> None:
        # The size our table may take (the peer's SETTINGS_HEADER_TABLE_SIZE, capped), and
        # what its entries take.
        self.table_size: i64 = _ENCODER_TABLE_LIMIT
        self.size: i64 = 0
        # Entries (field tuples) and their sizes, oldest first; from `first` on they are in
        # the table. Entry number n (counting every entry ever added from 0) has index
        # 61 + added - n while n >= evicted.
        self.entries: list[Any] = []
        self.sizes: list[int] = []
        self.first: i64 = 0
        self.added: i64 = 0
        self.evicted: i64 = 0
        # The number of each field in the table, and of the newest entry with each name.
        self.fields: dict[Any, int] = {}
        self.names: dict[bytes, int] = {}
        # A size change to signal at the start of the next block (RFC 7541 4.2): the smallest
        # size since the last block (-1: none), then table_size.
        self.smallest_update: i64 = -1

    def set_max_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE changed: use at most that from now on."""
        new: i64 = max(0, min(size, _ENCODER_TABLE_LIMIT))
        if new == self.table_size:
            return
        if self.smallest_update < 0 or new < self.smallest_update:
            self.smallest_update = new
        self.table_size = new
        self._evict(new)

    def encode(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        """One header block of `headers` (names lowercase, pseudo-headers first)."""
        parts: list[bytes] = []
        if self.smallest_update >= 0:
            if self.smallest_update < self.table_size:
                parts.append(_encode_integer(self.smallest_update, 0x1F, 0x20))
            parts.append(_encode_integer(self.table_size, 0x1F, 0x20))
            self.smallest_update = -1
        fields = self.fields
        # One-byte representations (an index below 127: nearly every field from a response's
        # second block on) gather in a machine word, turned into bytes 7 at a time or before
        # a longer one: int.to_bytes is one C call, cheaper than a part per field to join.
        word: i64 = 0
        count: i64 = 0
        items: list[Any] = headers  # the tuples as objects (see _STATIC)
        for field in items:
            # Our table first: a response's fields are there from its second block on (a
            # field of the static table is never added to it).
            number: i64 = fields.get(field, -1)
            if number >= 0:
                index: i64 = _STATIC_COUNT + self.added - number
            else:
                index = _STATIC_FIELDS.get(field, 0)
            if 0 < index < 127:
                word = (word << 8) | 0x80 | index
                count += 1
                if count == 7:
                    parts.append(int(word).to_bytes(7, "big"))
                    word = 0
                    count = 0
                continue
            if count:
                parts.append(int(word).to_bytes(int(count), "big"))
                word = 0
                count = 0
            if index:
                parts.append(_encode_integer(index, 0x7F, 0x80))
                continue
            name: bytes = field[0]
            value: bytes = field[1]
            name_index: i64 = _STATIC_NAMES.get(name, 0)
            if not name_index:
                number = self.names.get(name, -1)
                if number >= 0:
                    name_index = _STATIC_COUNT + self.added - number
            size: i64 = len(name) + len(value) + _ENTRY_OVERHEAD
            if name in _NEVER_INDEXED:  # never indexed (6.2.3, 7.1.3), by us or a proxy
                parts.append(_encode_integer(name_index, 0x0F, 0x10))
                if not name_index:
                    parts.append(_length(name))
                    parts.append(name)
            elif size <= self.table_size:  # literal with incremental indexing (6.2.1)
                if name_index:
                    parts.append(_INDEXED_NAME[name_index] if name_index < 63
                                 else _encode_integer(name_index, 0x3F, 0x40))
                else:
                    parts.append(b"\x40")
                    parts.append(_length(name))
                    parts.append(name)
                self._add(field, name, size)
            else:  # too large for the table (or a table of 0): without indexing (6.2.2)
                parts.append(_encode_integer(name_index, 0x0F, 0))
                if not name_index:
                    parts.append(_length(name))
                    parts.append(name)
            parts.append(_length(value))
            parts.append(value)
        last = int(word).to_bytes(int(count), "big")
        if not parts:
            return last
        parts.append(last)
        return b"".join(parts)

    def _add(self, field: Any, name: bytes, size: i64) -> None:
        """Add a field that fits the table (the caller checked), evicting as the peer will."""
        self._evict(self.table_size - size)
        self.entries.append(field)
        self.sizes.append(size)
        self.size += size
        self.fields[field] = self.added
        self.names[name] = self.added
        self.added += 1

    def _evict(self, room: i64) -> None:
        """Evict the oldest entries until they take at most `room` bytes, forgetting their
        numbers (unless a newer entry has the same field or name)."""
        entries = self.entries
        sizes = self.sizes
        fields = self.fields
        names = self.names
        first = self.first
        evicted = self.evicted
        size = self.size
        while size > room:
            field = entries[first]
            size -= sizes[first]
            if fields.get(field, -1) == evicted:
                del fields[field]
            name: bytes = field[0]
            if names.get(name, -1) == evicted:
                del names[name]
            entries[first] = None  # not kept alive by its slot
            first += 1
            evicted += 1
        self.first = _compacted(entries, sizes, first)
        self.evicted = evicted
        self.size = size
