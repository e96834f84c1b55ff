"""Sockets and connections below the wire protocols.

Owns: the listening sockets (listeners.py: TCP, unix, inherited fd:// and systemd's,
--reuse-port slots; address syntax, binding, describing), and what happens to a connection
before a wire protocol speaks on it and when it changes protocol (stages.py: the connection's
facts, its stages, the protocol choice, the protocol switch), and the PROXY protocol header
(proxy_protocol.py, sans-IO) as a stage (proxy_stage.py).
May import: the standard library, logs and errors only. Wire protocols, asgi and worker import
it.
"""
