"""Cleartext HTTP/2 with prior knowledge (h2c, RFC 9113 3.3), from trusted peers only.

A stage (net/stages.py) on plain TCP listeners when --http2 is on: a peer in
--forwarded-allow-ips (a proxy speaking h2c to its upstream) whose first bytes are the 24-byte
connection preface goes on as HTTP/2; every other connection goes on to HTTP/1.1 with the
bytes read, so that an untrusted client's preface is what it is there, a request HTTP/1.1
refuses. The check of trust costs one lookup and no read; a trusted peer's first bytes are
read up to the preface (or the first byte that differs). The Upgrade: h2c dance is not
offered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ..net.stages import Stage, StagedConnection
from .connection import H2

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def is_preface(data: bytes) -> bool | None:
    """True: `data` starts with the whole preface; False: it cannot; None: too short to say."""
    if len(data) >= len(PREFACE):
        return data.startswith(PREFACE)
    return None if PREFACE.startswith(data) else False


class PriorKnowledge(Stage):
    """One connection's choice between h2c (a trusted peer that sent the preface) and
    HTTP/1.1."""

    name = "HTTP/2 preface"

    def __init__(self, trusts: Callable[[tuple | None], bool], timeout: float) -> None:
        self.trusts = trusts
        self.timeout = timeout
        self.read = b""

    def start(self, link: StagedConnection, data: bytes) -> None:
        self.link = link
        if not self.trusts(link.facts.client):
            link.finish(data)  # HTTP/1.1, whatever it sends
        elif data:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        data = self.read + data
        verdict = is_preface(data)
        if verdict is None:
            self.read = data
            return
        if verdict:
            self.link.facts.protocol = H2
        self.link.finish(data)
