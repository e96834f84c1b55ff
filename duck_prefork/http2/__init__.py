"""HTTP/2: the protocol as a sans-IO machine (machine.py) with its HPACK codec (hpack.py), the
connection on asyncio (frames <-> streams, flow control, limits, drain), the stream (a request
head, a body channel, a response sink as HEADERS/DATA frames), the tunnel stream (an extended
CONNECT's stream as a transport: WebSockets over HTTP/2, RFC 8441), and the limits and their
decisions. (Cleartext HTTP/2 from trusted peers is a switch in http1/connection.py's sniff.)

May import: stream (the stream interface), net (stages), http1.connection (the worker's shared
ServerState and the flow-control base), logs, errors. Not h2: it is the tests' reference, as
h11 is HTTP/1.1's. Never asgi/ or upstream/: the request handler is handed in
(ServerState.handler).
"""
