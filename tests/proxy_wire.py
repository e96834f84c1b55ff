"""PROXY protocol headers as a balancer writes them, for the unit and integration tests."""

from __future__ import annotations

import ipaddress
import struct

from duck_prefork.net.proxy_protocol import V2_SIGNATURE, crc32c

LOCAL, PROXY = 0x0, 0x1
UNSPEC, INET, INET6, UNIX = 0x0, 0x1, 0x2, 0x3
STREAM, DGRAM = 0x1, 0x2


def v1(family: str = "TCP4", source: str = "203.0.113.7", destination: str = "198.51.100.1",
       source_port: int | str = 56324, destination_port: int | str = 443) -> bytes:
    return f"PROXY {family} {source} {destination} {source_port} {destination_port}\r\n".encode()


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def ssl_tlv(client: int = 0x01, verify: int = 0, **subs: str) -> bytes:
    codes = {"version": 0x21, "cn": 0x22, "cipher": 0x23, "sig_alg": 0x24, "key_alg": 0x25}
    body = struct.pack("!BI", client, verify) + b"".join(
        tlv(codes[name], value.encode()) for name, value in subs.items())
    return tlv(0x20, body)


def addresses(family: int, source: str, destination: str, source_port: int,
              destination_port: int) -> bytes:
    if family == INET or family == INET6:
        return (ipaddress.ip_address(source).packed + ipaddress.ip_address(destination).packed
                + struct.pack("!HH", source_port, destination_port))
    if family == UNIX:
        return source.encode().ljust(108, b"\0") + destination.encode().ljust(108, b"\0")
    return b""


def v2(command: int = PROXY, family: int = INET, transport: int = STREAM,
       source: str = "203.0.113.7", destination: str = "198.51.100.1", source_port: int = 56324,
       destination_port: int = 443, tlvs: bytes = b"", crc: bool = False,
       version: int = 2, length: int | None = None, signature: bytes = V2_SIGNATURE) -> bytes:
    """A v2 header; `crc`: append a CRC32C TLV with the right checksum; `length`: announce
    this length instead of the true one."""
    payload = addresses(family, source, destination, source_port, destination_port) + tlvs
    if crc:
        payload += tlv(0x03, b"\0\0\0\0")
    size = len(payload) if length is None else length
    header = signature + bytes((version << 4 | command, family << 4 | transport)) + \
        struct.pack("!H", size) + payload
    if crc:
        header = header[:-4] + struct.pack("!I", crc32c(header))
    return header
