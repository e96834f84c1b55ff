"""HTTP/1.1 on the wire: the connection (keep-alive, limits, flow control, timeouts), each
request as a stream with the response framing (stream.py: status line, Server/Date,
Content-Length or chunked, Connection: close, HEAD/1xx/204/304, 100 Continue), the two parser
adapters (httptools on the fast path, h11 as the reference) and the request-head rules both
are held to.

May import: logs, stream (the interface it implements), net (a connection's facts, the
protocol switch) and the standard library, h11, httptools. Never asgi/ or upstream/: the
connection is handed the request handler (the ASGI pipeline) by the worker, and gives it
streams.
"""
