"""Listening sockets: parse bind addresses, bind them in the master, clean up unix socket files.

With --reuse-port every TCP bind is a group of SO_REUSEPORT sockets, one per worker slot: the
kernel hashes each new connection to one socket of the group, so the workers share connections
evenly instead of whichever is awake first taking a burst. Unix sockets and sockets handed in
(fd://N, systemd) cannot be multiplied and stay shared by every worker.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class BindAddress:
    """A parsed --bind value."""

    kind: str  # "tcp", "unix" or "fd"
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1
    tls: bool = False  # https://HOST:PORT, https+unix:/path: the listener speaks TLS


TLS_PREFIX = "https://"
TLS_UNIX_PREFIX = "https+unix:"


def parse_bind(value: str) -> BindAddress:
    """Parse HOST:PORT, [IPv6]:PORT, unix:/path or fd://N, each maybe prefixed: http://HOST:PORT
    (the same as HOST:PORT), https://HOST:PORT and https+unix:/path (TLS); raises ValueError."""
    if value.startswith(TLS_PREFIX):
        rest = value[len(TLS_PREFIX):]
        if rest.startswith(("unix:", "fd://")):
            raise ValueError("for a TLS unix socket write https+unix:/path")
        return replace(parse_bind(rest), tls=True)
    if value.startswith(TLS_UNIX_PREFIX):
        return replace(parse_bind("unix:" + value[len(TLS_UNIX_PREFIX):]), tls=True)
    if value.startswith("http://"):
        rest = value[len("http://"):]
        if rest.startswith(("unix:", "fd://")):
            raise ValueError("http:// takes HOST:PORT")
        return parse_bind(rest)
    if value.startswith("unix:"):
        path = value[len("unix:"):]
        if not path:
            raise ValueError("unix: needs a socket path")
        return BindAddress("unix", path=path)
    if value.startswith("fd://"):
        digits = value[len("fd://"):]
        if not digits.isdigit():
            raise ValueError("fd:// needs a file descriptor number")
        return BindAddress("fd", fd=int(digits))
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep or not host:
            raise ValueError("expected [IPv6]:PORT")
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError("expected HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError("port must be a number from 0 to 65535")
    return BindAddress("tcp", host=host, port=int(port))


class Listener:
    """One bound, listening socket owned by the master and inherited by every worker, or, with
    --reuse-port, by the workers of one slot only."""

    def __init__(self, sock: socket.socket, address: BindAddress, owned: bool = True,
                 name: str = "", slot: int = 0):
        self.socket = sock
        self.address = address
        self.owned = owned  # bound by us (a unix socket file is ours to remove), not handed in
        self.name = name  # systemd's LISTEN_FDNAMES entry, if any
        self.slot = slot  # --reuse-port: the worker number this socket is for; 0: every worker

    def serves(self, number: int) -> bool:
        """Whether worker NUMBER accepts on this socket."""
        return self.slot in (0, number)

    @property
    def tls(self) -> bool:
        """Whether this listener's connections speak TLS (see tls/plan.py)."""
        return self.address.tls

    def describe(self) -> str:
        text = self._where()
        return f"{text} ({self.name})" if self.name else text

    def _where(self) -> str:
        scheme = "https" if self.address.tls else "http"
        if self.address.kind == "unix":
            return f"{'https+' if self.address.tls else ''}unix:{self.address.path}"
        name = self.socket.getsockname()
        if self.socket.family == socket.AF_INET6:
            return f"{scheme}://[{name[0]}]:{name[1]}"
        if self.socket.family == socket.AF_INET:
            return f"{scheme}://{name[0]}:{name[1]}"
        return f"fd://{self.socket.fileno()}"

    def close(self, unlink: bool) -> None:
        """Close the socket; the master that bound a unix socket also removes its file."""
        self.socket.close()
        if unlink and self.owned and self.address.kind == "unix":
            try:
                os.unlink(self.address.path)
            except FileNotFoundError:
                pass


def tls_by_default(binds: list[str]) -> list[str]:
    """With a certificate and no bind that says https://: every TCP bind is TLS (gunicorn's
    habit), unix sockets and fd:// stay plain."""
    if any(parse_bind(value).tls for value in binds):
        return binds
    return [TLS_PREFIX + value.removeprefix("http://") if parse_bind(value).kind == "tcp"
            else value for value in binds]


def mark_tls(listeners: list[Listener], binds: list[str], certificate: bool) -> None:
    """Sockets systemd passed: with a certificate and no bind that says https://, every TCP
    socket is TLS (as for binds, tls_by_default); else a TCP socket on the port of an https://
    bind and a unix socket at the path of an https+unix: bind."""
    parsed = [parse_bind(value) for value in binds]
    every_tcp = certificate and not any(address.tls for address in parsed)
    tls_ports = {address.port for address in parsed if address.tls and address.kind == "tcp"}
    tls_paths = {address.path for address in parsed if address.tls and address.kind == "unix"}
    for listener in listeners:
        address = listener.address
        if address.kind == "unix":
            tls = address.path in tls_paths
        else:
            tls = every_tcp or address.port in tls_ports
        listener.address = replace(address, tls=tls)


def _bind_tcp(address: BindAddress, backlog: int, reuse_port: bool = False) -> socket.socket:
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return _tcp_socket(family, sockaddr, backlog, reuse_port)


def _tcp_socket(family: int, sockaddr: tuple, backlog: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def remove_stale_unix_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: a leftover from a server that died
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another server is listening on {path}")


def _bind_unix(address: BindAddress, backlog: int) -> socket.socket:
    remove_stale_unix_socket(address.path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address.path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _adopt_fd(address: BindAddress, backlog: int) -> socket.socket:
    sock = socket.socket(fileno=address.fd)
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise OSError(errno.ENOTSOCK, f"fd {address.fd} is not a stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.listen(backlog)
    sock.set_inheritable(False)
    return sock


_BINDERS = {"tcp": _bind_tcp, "unix": _bind_unix, "fd": _adopt_fd}


def address_of(sock: socket.socket) -> BindAddress:
    """What a listening socket is bound to, for one inherited across a re-exec."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return BindAddress("unix", path=name if isinstance(name, str) else "")
    return BindAddress("tcp", host=name[0], port=name[1])


def bind_all(binds: list[str], backlog: int, slots: int = 0) -> list[Listener]:
    """Bind every address; on any failure close what was bound and raise OSError.
    With `slots` (--reuse-port), each TCP address gets one socket for every worker slot
    1..slots (see open_slot); the other kinds one socket shared by all."""
    listeners: list[Listener] = []
    try:
        for value in binds:
            address = parse_bind(value)
            reuse_port = slots > 0 and address.kind == "tcp"
            try:
                if reuse_port:
                    sock = _bind_tcp(address, backlog, reuse_port=True)
                else:
                    sock = _BINDERS[address.kind](address, backlog)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise OSError(exc.errno, f"cannot listen on {value}: {reason}") from exc
            sock.setblocking(False)
            listeners.append(Listener(sock, address, owned=address.kind != "fd",
                                      slot=1 if reuse_port else 0))
        for number in range(2, slots + 1):
            listeners += open_slot(listeners, number, backlog)
    except BaseException:
        for listener in listeners:
            listener.close(unlink=True)
        raise
    return listeners


def _group_of(listener: Listener) -> tuple:
    """--reuse-port: what the sockets of one group share, the family and the bound address."""
    return listener.socket.family, listener.socket.getsockname()


def _groups(listeners: list[Listener]) -> dict[tuple, Listener]:
    """--reuse-port: one socket of each group, by group."""
    groups: dict[tuple, Listener] = {}
    for listener in listeners:
        if listener.slot:
            groups.setdefault(_group_of(listener), listener)
    return groups


def open_slot(listeners: list[Listener], number: int, backlog: int) -> list[Listener]:
    """--reuse-port: bind worker slot NUMBER's own socket in every group that has none for
    it yet (on the group's actual port, so port 0 means one port for all); returns the new
    sockets, or closes them and raises OSError. No group: no socket, nothing to do."""
    have = {_group_of(listener) for listener in listeners if listener.slot == number}
    opened: list[Listener] = []
    try:
        for key, template in _groups(listeners).items():
            if key in have:
                continue
            family, sockaddr = key
            sock = _tcp_socket(family, sockaddr, backlog, reuse_port=True)
            sock.setblocking(False)
            opened.append(Listener(sock, template.address, slot=number))
    except OSError as exc:
        for listener in opened:
            listener.close(unlink=False)
        raise OSError(exc.errno, f"cannot open worker {number}'s SO_REUSEPORT socket: "
                                 f"{exc.strerror or exc}") from exc
    return opened


def describe_all(listeners: list[Listener]) -> str:
    """For the log: every address once; a --reuse-port group says how many sockets it has."""
    sizes = Counter(_group_of(listener) for listener in listeners if listener.slot)
    groups = [f"{template.describe()} (SO_REUSEPORT: {sizes[group]} sockets, one per worker)"
              for group, template in _groups(listeners).items()]
    return ", ".join(groups + [listener.describe() for listener in listeners if not listener.slot])


SD_LISTEN_FDS_START = 3  # systemd passes sockets from this descriptor on


def from_systemd(environ: MutableMapping[str, str]) -> list[Listener] | None:
    """The sockets systemd passed (socket activation), or None if it passed none to us. The
    variables are removed, so that our children do not take the sockets for theirs."""
    pid, count = environ.pop("LISTEN_PID", ""), environ.pop("LISTEN_FDS", "")
    names = environ.pop("LISTEN_FDNAMES", "").split(":")
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return None
    listeners = []
    for index in range(int(count)):
        sock = socket.socket(fileno=SD_LISTEN_FDS_START + index)
        sock.set_inheritable(False)
        sock.setblocking(False)
        name = names[index] if index < len(names) else ""
        listeners.append(Listener(sock, address_of(sock), owned=False, name=name))
    return listeners
