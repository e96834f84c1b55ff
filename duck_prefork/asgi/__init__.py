"""The ASGI side of a worker: the request pipeline (pipeline.py, the seed's `ASGI` class and its
stages), WebSocket sessions over wsproto (websocket.py) and their handshakes over HTTP/1.1 and
HTTP/2 (websocket_handshake.py), the lifespan protocol (lifespan.py), and the forwarded
headers of trusted proxies (forwarded.py).

It serves streams (duck_prefork/stream.py: a request head, a body channel, a response sink, a
close) and never sees a wire protocol's bytes: pipeline.py imports stream, not http1/.
May import: logs, stream, net (a connection's facts, the protocol switch a WebSocket takes the
connection over with), the standard library, wsproto. websocket.py still imports the HTTP/1.1
connection it takes the transport over from (FlowControlledProtocol, the handover, the error
bytes); over HTTP/2 its transport is an http2.tunnel.TunnelStream, known by type only (the
connection hands it over with the hook, WebSocketUpgrade.over_http2).
"""
