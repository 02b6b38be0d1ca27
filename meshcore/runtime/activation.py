"""systemd socket activation (``sd_listen_fds_with_names``) without libsystemd.

The service manager passes listening sockets as fds 3, 4, ... and describes them in
``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES``. Only listening TCP sockets
(``AF_INET``/``AF_INET6``, ``SOCK_STREAM``) are supported: anything else raises
:class:`UnsupportedSocketError` rather than being skipped, because a silently ignored socket
would leave the daemon binding the port itself and failing with ``EADDRINUSE`` later, far
from the cause.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

from meshcore.errors import MeshError

__all__ = [
    "SD_LISTEN_FDS_START",
    "ActivationError",
    "InheritedSocket",
    "UnsupportedSocketError",
    "adopt_socket",
    "listen_fds",
    "match_socket",
]

SD_LISTEN_FDS_START = 3
_ENV_KEYS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(MeshError):
    """The socket activation environment is malformed."""


class UnsupportedSocketError(ActivationError):
    """An inherited fd is not a listening TCP socket."""

    def __init__(self, fd: int, reason: str) -> None:
        super().__init__(f"inherited fd {fd}: {reason}")
        self.fd = fd
        self.reason = reason


@dataclass(frozen=True, slots=True)
class InheritedSocket:
    """A listening socket passed in by the service manager (non-blocking, close-on-exec)."""

    fd: int
    name: str
    family: socket.AddressFamily
    sock: socket.socket
    address: tuple[str, int]


def listen_fds(
    environ: MutableMapping[str, str] = os.environ, *, unset: bool = True
) -> list[InheritedSocket]:
    """The sockets passed by socket activation, in fd order; [] when there are none for us.

    ``LISTEN_PID`` must equal this process's pid, otherwise the variables were inherited from
    a parent and the fds are not ours. With ``unset`` the three variables are removed from
    ``environ`` (even on error) so child processes don't mistake the fds for theirs.
    Raises :class:`ActivationError` on malformed variables and :class:`UnsupportedSocketError`
    (after closing the sockets already taken) for an fd that is not a listening TCP socket.
    """
    try:
        return _listen_fds(environ)
    finally:
        if unset:
            for key in _ENV_KEYS:
                environ.pop(key, None)


def _listen_fds(environ: MutableMapping[str, str]) -> list[InheritedSocket]:
    pid = environ.get("LISTEN_PID")
    if pid is None or pid.strip() != str(os.getpid()):
        return []
    try:
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError as exc:
        raise ActivationError(f"LISTEN_FDS is not a number: {environ.get('LISTEN_FDS')!r}") from exc
    if count <= 0:
        return []
    raw_names = environ.get("LISTEN_FDNAMES")
    names = raw_names.split(":") if raw_names else [""] * count
    if len(names) != count:
        raise ActivationError(f"LISTEN_FDNAMES has {len(names)} names for {count} fds")
    inherited: list[InheritedSocket] = []
    try:
        for offset, name in enumerate(names):
            inherited.append(_adopt(SD_LISTEN_FDS_START + offset, name))
    except BaseException:
        for item in inherited:
            item.sock.close()
        raise
    return inherited


def _adopt(fd: int, name: str) -> InheritedSocket:
    try:
        # Raises ENOTSOCK for FIFOs/files; detects family and type from the fd.
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise UnsupportedSocketError(fd, f"not a socket ({exc.strerror})") from exc
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != socket.SOCK_STREAM:
            raise UnsupportedSocketError(fd, "not a stream socket")
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise UnsupportedSocketError(fd, f"unsupported family {sock.family.name}")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            # Accept=yes hands over connected sockets; we only take listeners.
            raise UnsupportedSocketError(fd, "not listening")
        sock.set_inheritable(False)
        sock.setblocking(False)
        host, port = sock.getsockname()[:2]
    except BaseException:
        # Detach rather than close: on error the fd stays as the service manager gave it.
        sock.detach()
        raise
    return InheritedSocket(fd=fd, name=name, family=sock.family, sock=sock, address=(host, port))


def adopt_socket(fd: int, name: str) -> InheritedSocket:
    """The listening TCP socket at ``fd`` (passed down by a parent process under the listener
    name ``name``), checked as the ones from ``LISTEN_FDS`` are; raises
    :class:`UnsupportedSocketError`."""
    return _adopt(fd, name)


def match_socket(
    inherited: list[InheritedSocket], name: str, host: str, port: int
) -> InheritedSocket | None:
    """The inherited socket for the listener ``name`` bound to ``host:port``, if any.

    A socket whose fd name equals ``name`` wins; otherwise the bound address must match
    exactly: a wildcard (``0.0.0.0``/``::``) matches only a wildcard, never a specific
    address, and the other way round. IPv6 spellings are compared in canonical form.
    """
    if name:
        for item in inherited:
            if item.name == name:
                return item
    want = (_canonical_host(host), port)
    for item in inherited:
        if (_canonical_host(item.address[0]), item.address[1]) == want:
            return item
    return None


def _canonical_host(host: str) -> str:
    host = host.strip("[]")
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    return host
