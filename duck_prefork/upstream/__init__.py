"""Upstream pass-through: path prefixes served by another HTTP/1.1 server (a legacy WSGI app
under gunicorn, say) instead of the ASGI app, 101 tunnels included (--upstream PREFIX=URL).

  routes.py    PREFIX=URL specs, the route table (longest prefix wins) and nginx's proxy_pass
               target rule; sans-IO
  headers.py   the request headers an upstream gets (hop-by-hop removed, X-Forwarded-* and
               Forwarded), the response headers a client gets; sans-IO
  codec.py     the client side of HTTP/1.1: the request written, the response read by a fast
               path with h11 as the strict reference (h11's outcome either way); sans-IO
  pool.py      a worker's keep-alive connections to each upstream over the codec, the
               once-a-second sweep of their timeouts
  exchange.py  UpstreamASGI: the worker's request handler with upstreams, wrapping the ASGI
               pipeline, with the seed's upstream stages (django_apply_middlewares_to_response,
               handle_django_connection_upgrade); Exchange: one request with its upstream
  tunnel.py    a 101's byte tunnel between the client's connection and the upstream's

The worker wraps its asgi.pipeline.ASGI in UpstreamASGI only when --upstream is given, so a
worker without upstreams runs none of this. All but tunnel.py are compiled with mypyc
(build.py): the exchange is per request. May import: asgi (the pipeline it extends), http1
(the connection a tunnel takes over, as websocket.py does), net, stream, logs, h11.
"""
