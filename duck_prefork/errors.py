"""The exceptions raised on the per-request path.

They live apart from the modules that raise them because those are compiled by mypyc
(build.py), which cannot compile subclasses of built-in exceptions; each is re-exported where
it belongs (stream.py, http1/request_head.py, http2/hpack.py).
"""

from __future__ import annotations


class ClientDisconnected(OSError):
    """Raised by a stream's sink (and so by the ASGI send()) once the client has gone."""


class InvalidResponse(RuntimeError):
    """A response the wire protocol cannot send as given (a header with CR, LF or NUL, a
    malformed Content-Length, more body than the Content-Length said)."""


class ParseError(Exception):
    """The client sent something we refuse; `status` is the 4xx/5xx to answer with."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


class ParserStopped(Exception):
    """Raised from an llhttp callback to stop it (http1/parser_httptools.py keeps the reason).
    A new one each time: raising one instance again would grow its traceback without end."""


class ProxyProtocolError(ValueError):
    """A PROXY protocol header the specification does not allow (net/proxy_protocol.py); the
    connection is closed with no response."""


class UpstreamResponseError(Exception):
    """An upstream's response breaks HTTP/1.1 (upstream/codec.py): the exchange fails, 502."""


class UpstreamFailure(Exception):
    """An exchange with an upstream that cannot give a response: `status` is what the client
    is answered if nothing was sent yet (502 Bad Gateway, 504 Gateway Timeout)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class Http2ConnectionError(Exception):
    """The client broke HTTP/2 (http2/machine.py): a GOAWAY with `code` is queued and the
    connection must close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Http2StreamClosed(Exception):
    """Something to send on an HTTP/2 stream that can take no more (reset, ended, unknown), or
    on a connection that has ended (http2/machine.py)."""


class HpackError(Exception):
    """A header block HPACK cannot decode (http2/hpack.py): a COMPRESSION_ERROR, which ends
    the connection (RFC 9113 4.3: the decoder's table can no longer be trusted)."""


class HeaderListTooLarge(HpackError):
    """A header block whose decoded fields passed max_header_list_size (RFC 9113 6.5.2),
    refused as the fields are decoded, so that an HPACK bomb stops at the bound."""
