"""A worker process: what runs after fork, until it exits.

Owns: the post-fork setup, the event loop and the drain (process.py), accepting connections
(acceptor.py), the channel to the master (channel.py: both ends' message format), the
health and readiness probes answered before the app (probes.py).
May import: config, logs, hooks, loader, net, http1 and asgi, which it wires together: the
wire protocol is handed the ASGI pipeline, never the other way round.
"""
