"""HTTP/2 over h2: the connection (frames <-> streams, flow control, limits, drain), the
stream (a request head, a body channel, a response sink as HEADERS/DATA frames), the tunnel
stream (an extended CONNECT's stream as a transport: WebSockets over HTTP/2, RFC 8441), the
limits and their decisions, and the prior-knowledge stage for cleartext HTTP/2 from trusted
peers.

May import: stream (the stream interface), net (stages), http1.connection (the worker's shared
ServerState and the flow-control base), logs, errors, and h2/hyperframe/hpack. Never asgi/ or
upstream/: the request handler is handed in (ServerState.handler).
"""
