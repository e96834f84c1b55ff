"""Sockets and connections below the wire protocols.

Owns: the listening sockets (listeners.py: TCP, unix, inherited fd:// and systemd's,
--reuse-port slots; address syntax, binding, describing), a connection's facts and the
protocol switch (stages.py), and (later) what happens to a connection before a wire protocol
speaks on it: TLS contexts, the PROXY protocol header.
May import: the standard library and logs only. Wire protocols, asgi and worker import it.
"""
