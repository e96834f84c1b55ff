"""Listening sockets: parse bind addresses, bind them in the master, clean up unix socket files."""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class BindAddress:
    """A parsed --bind value."""

    kind: str  # "tcp", "unix" or "fd"
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1


def parse_bind(value: str) -> BindAddress:
    """Parse HOST:PORT, [IPv6]:PORT, unix:/path or fd://N; raises ValueError."""
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
    """One bound, listening socket owned by the master and inherited by every worker."""

    def __init__(self, sock: socket.socket, address: BindAddress, owned: bool = True,
                 name: str = ""):
        self.socket = sock
        self.address = address
        self.owned = owned  # bound by us (a unix socket file is ours to remove), not handed in
        self.name = name  # systemd's LISTEN_FDNAMES entry, if any

    def describe(self) -> str:
        text = self._where()
        return f"{text} ({self.name})" if self.name else text

    def _where(self) -> str:
        if self.address.kind == "unix":
            return f"unix:{self.address.path}"
        name = self.socket.getsockname()
        if self.socket.family == socket.AF_INET6:
            return f"http://[{name[0]}]:{name[1]}"
        if self.socket.family == socket.AF_INET:
            return f"http://{name[0]}:{name[1]}"
        return f"fd://{self.socket.fileno()}"

    def close(self, unlink: bool) -> None:
        """Close the socket; the master that bound a unix socket also removes its file."""
        self.socket.close()
        if unlink and self.owned and self.address.kind == "unix":
            try:
                os.unlink(self.address.path)
            except FileNotFoundError:
                pass


def _bind_tcp(address: BindAddress, backlog: int) -> socket.socket:
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_unix_socket(path: str) -> None:
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
    _remove_stale_unix_socket(address.path)
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


def bind_all(binds: list[str], backlog: int) -> list[Listener]:
    """Bind every address; on any failure close what was bound and raise OSError."""
    listeners: list[Listener] = []
    try:
        for value in binds:
            address = parse_bind(value)
            try:
                sock = _BINDERS[address.kind](address, backlog)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise OSError(exc.errno, f"cannot listen on {value}: {reason}") from exc
            sock.setblocking(False)
            listeners.append(Listener(sock, address, owned=address.kind != "fd"))
    except BaseException:
        for listener in listeners:
            listener.close(unlink=True)
        raise
    return listeners


SD_LISTEN_FDS_START = 3  # systemd passes sockets from this descriptor on


def from_systemd(environ: dict) -> list[Listener] | None:
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
