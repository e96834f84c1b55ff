"""The PROXY protocol header (HAProxy's specification, versions 1 and 2), sans-IO.

A balancer that speaks it (HAProxy `send-proxy`/`send-proxy-v2`, nginx `proxy_protocol on`,
AWS NLB, GCP, ...) opens each connection with one header saying who the client is, then
relays the client's bytes. `parse(buffer, accept)` reads that header from the start of what
has arrived so far and returns None (need more), or the header and how many bytes it took (the
rest is the client's first request, kept); it raises ProxyProtocolError for anything the
specification does not allow, as early as the bytes show it (a first byte that starts no
header is refused at once, not after the timeout). It never reads past the header.

  v1  text, one line of at most 107 bytes with its CRLF:
        PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\\r\\n      (TCP6 likewise)
        PROXY UNKNOWN[ anything]\\r\\n                          (the client is unknown)
      single spaces, addresses as the family writes them (IPv4 dotted quad, no leading zeros;
      IPv6 per RFC 4291, no zone), ports 0..65535 in decimal with no leading zeros. Addresses
      are given in their canonical text form (inet_ntop: 2001:db8::7, ::ffff:192.0.2.1).
  v2  binary: the 12-byte signature, version 2 and the command (LOCAL 0, PROXY 1), the family
      and transport, the length of what follows (the addresses, then TLVs). LOCAL (the
      balancer's own connection: health checks) ignores everything after the length. PROXY
      takes AF_INET, AF_INET6, AF_UNIX addresses (AF_UNSPEC: the client is unknown) over
      STREAM (or UNSPEC) transport; a DGRAM header makes no sense on a TCP connection.
      TLVs: ALPN, AUTHORITY, CRC32C (checked when present), NOOP, UNIQUE_ID (at most 128
      bytes), SSL with its sub-TLVs (version, CN, cipher, signature and key algorithms),
      NETNS; others (0xE0-0xEF custom, a cloud's own) are kept raw. A TLV that overruns the
      header, or an SSL sub-TLV that overruns the SSL TLV, is an error.

The payload of a v2 header is limited to MAX_V2_LENGTH bytes (the format allows 65535): more
is refused as soon as its length is read, so a peer cannot make a connection buffer 64 KiB.
"""

from __future__ import annotations

import re
import socket
from typing import Any, Final

from ..errors import ProxyProtocolError

__all__ = ["MAX_V1_LENGTH", "MAX_V2_LENGTH", "V2_SIGNATURE", "ProxyHeader", "ProxyProtocolError",
           "crc32c", "parse"]

V1_PREFIX: Final = b"PROXY "
MAX_V1_LENGTH: Final = 107  # the specification's bound, CRLF included
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER: Final = 16  # signature, version/command, family/transport, length
MAX_V2_LENGTH: Final = 4096  # payload bytes accepted (addresses and TLVs)

ACCEPT_CHOICES: Final = ("v1", "v2", "any")

LOCAL, PROXY = "LOCAL", "PROXY"
_COMMANDS: Final = {0x0: LOCAL, 0x1: PROXY}

# v2 family (high nibble) -> (name, size of its address block: source, destination, ports).
_FAMILIES: Final = {0x0: ("UNSPEC", 0), 0x1: ("INET", 12), 0x2: ("INET6", 36), 0x3: ("UNIX", 216)}
_STREAM_TRANSPORTS: Final = (0x0, 0x1)  # UNSPEC, STREAM; 0x2 DGRAM is refused

# TLV types (section 2.2 of the specification).
PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
PP2_TYPE_NETNS: Final = 0x30
MAX_UNIQUE_ID: Final = 128
# The SSL TLV's client bits and sub-TLVs.
PP2_CLIENT_SSL: Final = 0x01
PP2_CLIENT_CERT_CONN: Final = 0x02
PP2_CLIENT_CERT_SESS: Final = 0x04
_SSL_SUBTYPES: Final = {0x21: "version", 0x22: "cn", 0x23: "cipher", 0x24: "sig_alg",
                        0x25: "key_alg"}

_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_FAMILIES: Final = {b"TCP4": socket.AF_INET, b"TCP6": socket.AF_INET6}


class ProxyHeader:
    """One parsed header. `client` and `server`: (host, port) from a PROXY header of the INET
    families, (path, None) for AF_UNIX, None where the header gives no address (LOCAL, UNKNOWN,
    UNSPEC): the connection's own addresses stand then, or no client at all (see stage.py).
    `tlvs`: every TLV by type, raw; the known ones decoded in the other fields."""

    __slots__ = ("version", "command", "family", "client", "server", "tlvs", "alpn",
                 "authority", "unique_id", "ssl", "netns")

    def __init__(self, version: int, command: str, family: str,
                 client: tuple | None = None, server: tuple | None = None) -> None:
        self.version = version
        self.command = command
        self.family = family  # v1: TCP4, TCP6, UNKNOWN; v2: INET, INET6, UNIX, UNSPEC
        self.client = client
        self.server = server
        self.tlvs: dict[int, bytes] = {}
        self.alpn: bytes | None = None
        self.authority: str | None = None
        self.unique_id: bytes | None = None
        self.ssl: dict[str, Any] | None = None
        self.netns: str | None = None

    @property
    def secure(self) -> bool:
        """The client spoke TLS to the balancer (the SSL TLV with its PP2_CLIENT_SSL bit)."""
        return self.ssl is not None and self.ssl["client_ssl"]

    def extension(self) -> dict[str, Any]:
        """scope["extensions"]["proxy_protocol"] (README, PROXY protocol)."""
        return {"version": self.version, "command": self.command, "family": self.family,
                "alpn": self.alpn, "authority": self.authority, "unique_id": self.unique_id,
                "ssl": self.ssl, "netns": self.netns, "tlvs": dict(self.tlvs)}

    def __repr__(self) -> str:
        return (f"ProxyHeader(v{self.version} {self.command} {self.family} "
                f"client={self.client!r} server={self.server!r} tlvs={sorted(self.tlvs)})")


def parse(buffer: bytes, accept: str = "any") -> tuple[ProxyHeader, int] | None:
    """The header at the start of `buffer` and its length in bytes, or None while it is
    incomplete (and still valid so far). `accept`: "v1", "v2" or "any". Raises
    ProxyProtocolError."""
    if not buffer:
        return None
    first = buffer[0]
    if first == V1_PREFIX[0]:
        if accept == "v2":
            raise ProxyProtocolError("v1 header where v2 is required")
        return _parse_v1(buffer)
    if first == V2_SIGNATURE[0]:
        if accept == "v1":
            # (a v2 signature so far: say so only once it is certain)
            if V2_SIGNATURE.startswith(buffer[:12]):
                if len(buffer) < 12:
                    return None
                raise ProxyProtocolError("v2 header where v1 is required")
            raise ProxyProtocolError("no PROXY header")
        return _parse_v2(buffer)
    raise ProxyProtocolError("no PROXY header")


# --- v1 -------------------------------------------------------------------------------------

def _parse_v1(buffer: bytes) -> tuple[ProxyHeader, int] | None:
    if not (buffer.startswith(V1_PREFIX) or V1_PREFIX.startswith(buffer)):
        raise ProxyProtocolError("no PROXY header")
    end = buffer.find(b"\r\n", 0, MAX_V1_LENGTH)
    if end < 0:
        if len(buffer) >= MAX_V1_LENGTH:
            raise ProxyProtocolError(f"v1 header longer than {MAX_V1_LENGTH} bytes")
        cr = buffer.find(b"\r")
        if 0 <= cr < len(buffer) - 1 or b"\n" in buffer:
            raise ProxyProtocolError("v1 header with a CR or LF before its end")
        return None
    line = buffer[6:end]
    if b"\r" in line or b"\n" in line:
        raise ProxyProtocolError("v1 header with a CR or LF before its end")
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        return ProxyHeader(1, PROXY, "UNKNOWN"), end + 2  # the rest of the line is ignored
    parts = line.split(b" ")
    if len(parts) != 5:
        raise ProxyProtocolError("v1 header: expected TCP4|TCP6 SRC DST SPORT DPORT")
    family, source, destination, source_port, destination_port = parts
    address_family = _V1_FAMILIES.get(family)
    if address_family is None:
        raise ProxyProtocolError(f"v1 header: unknown protocol {family[:16]!r}")
    client_host = _v1_address(address_family, source)
    server_host = _v1_address(address_family, destination)
    header = ProxyHeader(1, PROXY, family.decode("ascii"),
                         (client_host, _v1_port(source_port)),
                         (server_host, _v1_port(destination_port)))
    return header, end + 2


def _v1_address(family: int, text: bytes) -> str:
    """An address as v1 writes it, in its canonical text form. glibc's inet_pton is strict:
    an IPv4 dotted quad of four decimal parts with no leading zeros, an IPv6 address with no
    zone or brackets."""
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text.decode("ascii")))
    except (OSError, UnicodeDecodeError, ValueError):
        name = "IPv4" if family == socket.AF_INET else "IPv6"
        raise ProxyProtocolError(f"v1 header: bad {name} address {text[:46]!r}") from None


def _v1_port(text: bytes) -> int:
    if _PORT.fullmatch(text) is None or int(text) > 65535:
        raise ProxyProtocolError(f"v1 header: bad port {text[:8]!r}")
    return int(text)


# --- v2 -------------------------------------------------------------------------------------

def _parse_v2(buffer: bytes) -> tuple[ProxyHeader, int] | None:
    if not V2_SIGNATURE.startswith(buffer[:12]):
        raise ProxyProtocolError("v2 header: wrong signature")
    if len(buffer) < V2_HEADER:
        if len(buffer) > 12 and buffer[12] >> 4 != 2:
            raise ProxyProtocolError(f"v2 header: version {buffer[12] >> 4}, not 2")
        return None
    version_command, family_transport = buffer[12], buffer[13]
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"v2 header: version {version_command >> 4}, not 2")
    command = _COMMANDS.get(version_command & 0x0F)
    if command is None:
        raise ProxyProtocolError(f"v2 header: unknown command {version_command & 0x0F:#x}")
    length = int.from_bytes(buffer[14:16], "big")
    if length > MAX_V2_LENGTH:
        raise ProxyProtocolError(f"v2 header: length {length} beyond {MAX_V2_LENGTH}")
    total = V2_HEADER + length
    if command == LOCAL:
        # The balancer's own connection: the family and everything after the length are
        # ignored (specification 2.2), but the whole announced block is still consumed.
        if len(buffer) < total:
            return None
        return ProxyHeader(2, LOCAL, "UNSPEC"), total
    family_entry = _FAMILIES.get(family_transport >> 4)
    if family_entry is None:
        raise ProxyProtocolError(f"v2 header: unknown address family {family_transport >> 4:#x}")
    if family_transport & 0x0F not in _STREAM_TRANSPORTS:
        raise ProxyProtocolError(f"v2 header: transport {family_transport & 0x0F:#x} is not "
                                 "a stream")
    family, address_size = family_entry
    if length < address_size:
        raise ProxyProtocolError(f"v2 header: {length} bytes cannot hold {family} addresses")
    if len(buffer) < total:
        return None
    block = buffer[V2_HEADER:total]
    header = ProxyHeader(2, PROXY, family)
    if family == "INET":
        header.client = (socket.inet_ntop(socket.AF_INET, block[0:4]),
                         int.from_bytes(block[8:10], "big"))
        header.server = (socket.inet_ntop(socket.AF_INET, block[4:8]),
                         int.from_bytes(block[10:12], "big"))
    elif family == "INET6":
        header.client = (socket.inet_ntop(socket.AF_INET6, block[0:16]),
                         int.from_bytes(block[32:34], "big"))
        header.server = (socket.inet_ntop(socket.AF_INET6, block[16:32]),
                         int.from_bytes(block[34:36], "big"))
    elif family == "UNIX":
        header.server = (_unix_path(block[108:216]), None)
    _read_tlvs(header, buffer[:total], V2_HEADER + address_size)
    return header, total


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _tlvs(data: bytes, start: int, end: int, what: str) -> list[tuple[int, int, int]]:
    """(type, value start, value end) of each TLV in data[start:end]; raises for one that
    overruns `end`."""
    found = []
    at = start
    while at < end:
        if at + 3 > end:
            raise ProxyProtocolError(f"v2 header: {what} overruns the header")
        kind = data[at]
        size = int.from_bytes(data[at + 1:at + 3], "big")
        value_end = at + 3 + size
        if value_end > end:
            raise ProxyProtocolError(f"v2 header: {what} {kind:#04x} of {size} bytes overruns "
                                     "the header")
        found.append((kind, at + 3, value_end))
        at = value_end
    return found


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ProxyProtocolError(f"v2 header: {what} is not UTF-8") from None


def _read_tlvs(header: ProxyHeader, data: bytes, start: int) -> None:
    for kind, value_start, value_end in _tlvs(data, start, len(data), "TLV"):
        value = data[value_start:value_end]
        if kind == PP2_TYPE_NOOP:
            continue
        header.tlvs[kind] = value
        if kind == PP2_TYPE_CRC32C:
            if len(value) != 4:
                raise ProxyProtocolError("v2 header: CRC32C TLV of length other than 4")
            zeroed = data[:value_start] + b"\x00\x00\x00\x00" + data[value_end:]
            if crc32c(zeroed) != int.from_bytes(value, "big"):
                raise ProxyProtocolError("v2 header: CRC32C mismatch")
        elif kind == PP2_TYPE_ALPN:
            header.alpn = value
        elif kind == PP2_TYPE_AUTHORITY:
            header.authority = _text(value, "AUTHORITY")
        elif kind == PP2_TYPE_UNIQUE_ID:
            if len(value) > MAX_UNIQUE_ID:
                raise ProxyProtocolError(f"v2 header: UNIQUE_ID longer than {MAX_UNIQUE_ID} "
                                         "bytes")
            header.unique_id = value
        elif kind == PP2_TYPE_SSL:
            header.ssl = _ssl(data, value_start, value_end)
        elif kind == PP2_TYPE_NETNS:
            header.netns = _text(value, "NETNS")


def _ssl(data: bytes, start: int, end: int) -> dict[str, Any]:
    """The SSL TLV: client bits (1 byte), verify (4 bytes, 0 when the client certificate
    verified), then sub-TLVs."""
    if end - start < 5:
        raise ProxyProtocolError("v2 header: SSL TLV shorter than 5 bytes")
    client = data[start]
    ssl: dict[str, Any] = {
        "client_ssl": bool(client & PP2_CLIENT_SSL),
        "client_cert_conn": bool(client & PP2_CLIENT_CERT_CONN),
        "client_cert_sess": bool(client & PP2_CLIENT_CERT_SESS),
        "verify": int.from_bytes(data[start + 1:start + 5], "big"),
    }
    ssl.update(dict.fromkeys(_SSL_SUBTYPES.values()))
    for kind, value_start, value_end in _tlvs(data, start + 5, end, "SSL sub-TLV"):
        name = _SSL_SUBTYPES.get(kind)
        if name is not None:
            ssl[name] = _text(data[value_start:value_end], f"SSL {name}")
    return ssl


# --- CRC-32C (Castagnoli), for the CRC32C TLV -------------------------------------------------
# The standard library has none; a table-driven one is enough: it runs only for a header that
# carries the TLV, over at most V2_HEADER + MAX_V2_LENGTH bytes.

def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
