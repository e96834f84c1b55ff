"""The ASGI side of a worker: the request pipeline (pipeline.py, the seed's `ASGI` class and its
stages), WebSocket sessions over wsproto (websocket.py), the lifespan protocol (lifespan.py),
and the forwarded headers of trusted proxies (forwarded.py).

May import: logs, the standard library, wsproto, net (a connection's facts, the protocol
switch a WebSocket takes the connection over with), and the http1 connection it serves
requests on (until the stream interface stands between them).
"""
