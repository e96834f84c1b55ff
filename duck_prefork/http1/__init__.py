"""HTTP/1.1 on the wire: the connection (framing, keep-alive, limits, flow control, timeouts),
the two parser adapters (httptools on the fast path, h11 as the reference) and the request-head
rules both are held to.

May import: logs, net (a connection's facts, the protocol switch) and the standard library,
h11, httptools. Never asgi/ or upstream/: the connection is handed the request handler (the
ASGI pipeline) by the worker.
"""
