"""Listening sockets: TCP, unix, inherited fd:// and systemd's, --reuse-port slots.

Owns: address syntax, binding, describing, and (later) what happens to a connection before a
wire protocol speaks on it: TLS contexts, the PROXY protocol header.
May import: the standard library and logs only.
"""
