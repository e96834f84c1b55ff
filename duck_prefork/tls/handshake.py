"""The TLS handshake, as the one stage of a TLS listener's connections (net/stages.py).

The first bytes decide: a TLS record (0x16, a ClientHello) starts the handshake; anything that
looks like an HTTP request gets a short plain-text 400 saying to use https (as nginx does),
then a close; anything else is closed. The handshake is the event loop's own SSLProtocol
(uvloop's, in C), put on the connection's transport and fed the bytes already read; its
handshake timeout is --tls-handshake-timeout, and the worker's sweep holds the whole stage,
from accept, to the same limit (a client that connects and never says ClientHello). Once it
is done the facts say "https", carry scope["extensions"]["tls"] and name the protocol ALPN
chose, and the connection goes on to it (HTTP/1.1, or HTTP/2 with --http2) over the TLS
transport; closing that transport sends close_notify (waiting up to SHUTDOWN_TIMEOUT for the
peer's).

A handshake that fails is never a traceback nor a log line of its own: failures are counted
by reason, and the worker's tick logs one summary line at most every SUMMARY_INTERVAL.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
import ssl
from collections import Counter
from typing import Any

from ..logs import log
from ..net.stages import Stage
from .context import Certificates, rfc4514

SHUTDOWN_TIMEOUT = 5.0  # seconds the TLS shutdown (close_notify both ways) may take
SUMMARY_INTERVAL = 60.0  # seconds between two summary lines of failed handshakes
TLS_HANDSHAKE_RECORD = 0x16

# A fatal unrecognized_name alert (RFC 6066 3), sent as a plaintext record: the answer to a
# ClientHello for a name no certificate covers, with --tls-reject-unknown-sni. (The loop's
# SSLProtocol closes a failed handshake without sending OpenSSL's alert, so the stage reads the
# name itself and answers before the handshake starts.)
UNRECOGNIZED_NAME_ALERT = bytes((0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112))
MAX_RECORD = 5 + 16384 + 2048  # a TLS record: header, the largest plaintext, some slack

PLAIN_HTTP_BODY = b"This port speaks HTTPS: use https:// in the URL.\n"
PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     b"Content-Length: " + str(len(PLAIN_HTTP_BODY)).encode() + b"\r\n"
                     b"Connection: close\r\n\r\n" + PLAIN_HTTP_BODY)

_DER = ssl._ssl.ENCODING_DER  # type: ignore[attr-defined]
# ASGI TLS extension: tls_version is the protocol's 16-bit code point.
_TLS_VERSIONS = {"TLSv1.3": 0x0304, "TLSv1.2": 0x0303, "TLSv1.1": 0x0302, "TLSv1": 0x0301}
# Failure reasons in the summary, for OpenSSL's reasons worth a word.
_REASONS = {
    "UNSUPPORTED_PROTOCOL": "TLS version too old",
    "WRONG_VERSION_NUMBER": "not TLS",
    "HTTP_REQUEST": "plain HTTP",
    "NO_SHARED_CIPHER": "no shared cipher",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
    "CERTIFICATE_VERIFY_FAILED": "client certificate not verified",
    "TLSV1_ALERT_UNKNOWN_CA": "client does not trust the certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "client rejected the certificate",
    "CALLBACK_FAILED": "unknown SNI name",
    "TLSV1_ALERT_UNRECOGNIZED_NAME": "unknown SNI name",
    "CLIENTHELLO_TLSEXT": "bad ClientHello",
}


def _protocol_class(loop: asyncio.AbstractEventLoop) -> Any:
    """The loop's own SSLProtocol: uvloop's (C) under uvloop, asyncio's otherwise."""
    try:
        import uvloop
        import uvloop.loop

        if isinstance(loop, uvloop.Loop):
            return uvloop.loop.SSLProtocol  # type: ignore[attr-defined]
    except ImportError:
        pass
    return asyncio.sslproto.SSLProtocol


class _QuietEofWarning(logging.Filter):
    """SSLProtocol warns, per connection, when the application protocol's eof_received
    returns True (HTTP/1.1 keeps its side open for a response still owed to a client that
    half-closed; over TLS the close_notify ends the connection anyway): not for the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("returning true from eof_received()")


_QUIET_EOF_WARNING = _QuietEofWarning()


class HandshakeFailures:
    """Failed handshakes by reason, logged as one line at most every SUMMARY_INTERVAL."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.next_summary = 0.0

    def add(self, reason: str) -> None:
        self.counts[reason] += 1

    def flush(self, now: float) -> None:
        """From the worker's tick: the summary line, if one is due."""
        if not self.counts or now < self.next_summary:
            return
        total = sum(self.counts.values())
        detail = ", ".join(f"{count} {reason}" for reason, count in self.counts.most_common())
        log.info("TLS: %d failed handshake%s (%s); next summary in %g s at the earliest",
                 total, "" if total == 1 else "s", detail, SUMMARY_INTERVAL)
        self.counts.clear()
        self.next_summary = now + SUMMARY_INTERVAL


def reason_of(exc: BaseException | None) -> str:
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or type(exc).__name__
        return _REASONS.get(reason, reason.replace("_", " ").lower())
    if isinstance(exc, ConnectionResetError):
        return "reset by the client"
    if isinstance(exc, (ConnectionAbortedError, TimeoutError)):
        return "timed out"
    if exc is None:
        return "closed by the client"
    return type(exc).__name__


class TlsServer:
    """A worker's TLS side: the certificates it inherited, its timeouts, its failure counts,
    and the ASGI TLS extension's per-context parts (made once here, not per connection)."""

    def __init__(self, certificates: Certificates, handshake_timeout: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.certificates = certificates
        self.context = certificates.default
        self.handshake_timeout = handshake_timeout
        self.loop = loop
        self.protocol_class = _protocol_class(loop)
        self.failures = HandshakeFailures()
        logging.getLogger("asyncio").addFilter(_QUIET_EOF_WARNING)
        self.cipher_ids: dict[str, int] = {}
        for context in {id(c): c for c in (certificates.default, *certificates.by_name.values(),
                                            *certificates.wildcards.values())}.values():
            for cipher in context.get_ciphers():
                self.cipher_ids.setdefault(cipher["name"], cipher["id"] & 0xFFFF)

    def stage(self) -> TlsHandshake:
        """The stage factory of a TLS listener's ConnectionPlan."""
        return TlsHandshake(self)

    def extension(self, ssl_object: ssl.SSLObject) -> dict[str, Any]:
        """scope["extensions"]["tls"] for one connection (the ASGI TLS extension)."""
        chain: list[str] = []
        name = None
        peer = ssl_object.getpeercert()
        if peer:
            name = rfc4514(peer.get("subject", ()))  # type: ignore[arg-type]
            # What the client sent, leaf first (SSLObject.get_unverified_chain from 3.13).
            sent = ssl_object._sslobj.get_unverified_chain() or ()  # type: ignore[attr-defined]
            chain = [ssl.DER_cert_to_PEM_cert(cert.public_bytes(_DER)) for cert in sent]
            if not chain:
                der = ssl_object.getpeercert(binary_form=True)
                chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
        cipher = ssl_object.cipher()
        return {
            "server_cert": self.certificates.server_pem.get(id(ssl_object.context)),
            "client_cert_chain": chain,
            "client_cert_name": name,
            # A client certificate that does not verify fails the handshake (OpenSSL), so a
            # connection that got this far has none to report.
            "client_cert_error": None,
            "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
            "cipher_suite": self.cipher_ids.get(cipher[0]) if cipher else None,
        }


def server_name(record: bytes) -> bytes | None:
    """The SNI host name of a ClientHello record (RFC 8446 4.1.2, RFC 6066 3), or None if it
    has none or cannot be read (then OpenSSL judges the ClientHello)."""
    try:
        if record[0] != TLS_HANDSHAKE_RECORD or record[5] != 1:  # handshake, client_hello
            return None
        at = 9 + 2 + 32  # record and handshake headers, legacy_version, random
        at += 1 + record[at]  # legacy_session_id
        at += 2 + int.from_bytes(record[at:at + 2], "big")  # cipher_suites
        at += 1 + record[at]  # legacy_compression_methods
        end = at + 2 + int.from_bytes(record[at:at + 2], "big")
        at += 2
        while at + 4 <= end:
            kind = int.from_bytes(record[at:at + 2], "big")
            size = int.from_bytes(record[at + 2:at + 4], "big")
            at += 4
            if kind == 0:  # server_name: list length, then (type 0 host_name, length, name)
                if record[at + 2] != 0:
                    return None
                length = int.from_bytes(record[at + 3:at + 5], "big")
                name = record[at + 5:at + 5 + length]
                return name if len(name) == length else None
            at += size
    except IndexError:
        return None
    return None


class _HandshakeDone(asyncio.Protocol):
    """The SSLProtocol's application protocol until the handshake is done: its
    connection_made (the TLS transport ready) hands the connection on."""

    __slots__ = ("stage",)

    def __init__(self, stage: TlsHandshake) -> None:
        self.stage = stage

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.stage.handshake_done(transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # told by the waiter (TlsHandshake.handshake_over)


class TlsHandshake(Stage):
    """One connection's handshake (see the module docstring)."""

    name = "TLS handshake"

    def __init__(self, server: TlsServer) -> None:
        self.server = server
        self.timeout = server.handshake_timeout
        self.started = False  # the SSLProtocol has the transport
        self.hello = b""  # the start of a ClientHello, while its record is incomplete
        self.done = False  # handed on, or failed and counted

    def data_received(self, data: bytes) -> None:
        if self.started or self.done:
            return
        if self.hello:
            data = self.hello + data
        if data[0] != TLS_HANDSHAKE_RECORD:
            self._refuse(data)
            return
        if self.server.certificates.reject_unknown:
            record_end = 5 + int.from_bytes(data[3:5], "big") if len(data) >= 5 else MAX_RECORD
            if len(data) < record_end and len(data) < MAX_RECORD:
                self.hello = data  # the ClientHello's record is not all here yet
                return
            name = server_name(data[:record_end])
            if name is not None and not self._known(name):
                self._failed("unknown SNI name")
                self.link.transport.write(UNRECOGNIZED_NAME_ALERT)
                self.link.fail("unknown SNI name")
                return
        self.started = True
        link = self.link
        server = self.server
        transport = link.transport
        waiter = server.loop.create_future()
        protocol = server.protocol_class(
            server.loop, _HandshakeDone(self), server.context, waiter, server_side=True,
            ssl_handshake_timeout=self.timeout or None, ssl_shutdown_timeout=SHUTDOWN_TIMEOUT)
        waiter.add_done_callback(self.handshake_over)
        # As loop.start_tls does: reading paused while the protocol changes, so that the
        # transport reads for the new one the way it wants (SSLProtocol is a BufferedProtocol).
        transport.pause_reading()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        view = memoryview(data)
        while view and not transport.is_closing():
            buffer = protocol.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]
        if not transport.is_closing():
            transport.resume_reading()

    def _known(self, name: bytes) -> bool:
        try:
            self.server.certificates.choose(name.decode("ascii"))
        except (LookupError, UnicodeDecodeError):
            return False
        return True

    def _refuse(self, data: bytes) -> None:
        if 65 <= data[0] <= 90:  # an upper-case letter: the start of a method, plain HTTP
            self._failed("plain HTTP")
            self.link.transport.write(PLAIN_HTTP_ANSWER)
        else:
            self._failed("not TLS")
        self.link.fail("not a TLS ClientHello")

    def handshake_done(self, transport: asyncio.Transport) -> None:
        link = self.link
        if self.done or link.closed:
            transport.abort()
            return
        self.done = True
        facts = link.facts
        facts.scheme = "https"
        ssl_object = transport.get_extra_info("ssl_object")
        facts.tls = self.server.extension(ssl_object)
        facts.add_extension("tls", facts.tls)
        protocol = ssl_object.selected_alpn_protocol()
        if protocol:  # "h2" or "http/1.1": the wire protocol; none offered, HTTP/1.1
            facts.protocol = protocol
        link.finish(b"", transport=transport)

    def handshake_over(self, waiter: asyncio.Future) -> None:
        """The SSLProtocol's waiter: set after connection_made on success; with the reason on
        failure (or with nothing when the connection was lost before the end)."""
        exc = None if waiter.cancelled() else waiter.exception()
        if self.done:
            return
        self.done = True
        link = self.link
        timed_out = link.closed and self.timeout and \
            self.server.loop.time() - link.stage_started >= self.timeout
        self.server.failures.add("timed out" if timed_out else reason_of(exc))
        # The transport now belongs to the SSLProtocol, which closes it; the StagedConnection
        # is told here, as it would be by connection_lost.
        if not link.closed:
            link.abort()
        link.connection_lost(exc if isinstance(exc, Exception) else None)

    def eof_received(self) -> None:
        self._failed("closed by the client")
        self.link.fail("the client closed its side")

    def connection_lost(self, exc: Exception | None) -> None:
        """Lost before the handshake started (after, the waiter says how it ended)."""
        if not self.done and not self.started:
            link = self.link
            timed_out = self.timeout and \
                self.server.loop.time() - link.stage_started >= self.timeout - 1.0
            self._failed("timed out" if timed_out else reason_of(exc))

    def _failed(self, reason: str) -> None:
        if not self.done:
            self.done = True
            self.server.failures.add(reason)

