"""Socket activation of controld's listeners: which inherited socket serves which listener.

systemd (``controld.socket``) or any launcher speaking the same protocol passes listening TCP
sockets with ``LISTEN_FDS``/``LISTEN_FDNAMES`` (:func:`meshcore.runtime.activation.listen_fds`).
controld knows four listeners by name:

* ``admin``: the HTTP API (``--admin``, default 127.0.0.1:8501),
* ``push``: the sidecars' lean listener (``--push``, default 127.0.0.1:8502),
* ``tls``: the TLS listener (``--tls``, default 127.0.0.1:8503),
* ``registry``: the embedded registry (``--registry-listen``, default 127.0.0.1:8500).

A socket named after a listener serves it, whatever address the flags give (the socket unit
owns the address then). An unnamed socket (``LISTEN_FDNAMES`` unset or the name empty) serves
the listener whose configured ``host:port`` it is bound to. Listeners without a socket bind
their address as usual. A socket that serves no listener (an unknown name, a listener turned
``off``, the registry in external mode) is an error: binding the port ourselves later would
fail with "address in use", far from the cause.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshcore.runtime.activation import ActivationError, InheritedSocket, match_socket

__all__ = ["LISTENER_NAMES", "ListenerSockets", "assign_sockets"]

#: The ``LISTEN_FDNAMES`` names controld understands, in the order it starts them.
LISTENER_NAMES = ("registry", "push", "tls", "admin")


@dataclass(frozen=True)
class ListenerSockets:
    """Inherited listening sockets by listener name (``registry``, ``push``, ``tls``, ``admin``)."""

    by_name: Mapping[str, socket.socket] = field(default_factory=dict)
    #: ``{"admin": "127.0.0.1:8501", ...}``, taken when assigned (a server may detach its
    #: socket later).
    addresses: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str) -> socket.socket | None:
        """The socket of listener ``name``, or None when it binds its own address."""
        return self.by_name.get(name)

    def describe(self) -> dict[str, str]:
        """``{"admin": "127.0.0.1:8501", ...}`` for the log line saying what was inherited."""
        return dict(self.addresses)


def assign_sockets(
    inherited: list[InheritedSocket], addresses: Mapping[str, tuple[str, int] | None]
) -> ListenerSockets:
    """Match ``inherited`` sockets to the listeners at ``addresses`` (None: listener off).

    Raises :class:`ActivationError` (after closing every inherited socket) when a socket
    serves no listener or two sockets claim the same one.
    """
    try:
        return _assign(inherited, addresses)
    except ActivationError:
        for item in inherited:
            item.sock.close()
        raise


def _assign(
    inherited: list[InheritedSocket], addresses: Mapping[str, tuple[str, int] | None]
) -> ListenerSockets:
    by_name: dict[str, socket.socket] = {}
    taken: set[int] = set()
    for name in LISTENER_NAMES:
        address = addresses.get(name)
        if address is None:
            continue
        named = [item for item in inherited if item.name == name]
        if len(named) > 1:
            raise ActivationError(f"{len(named)} inherited sockets are named {name!r}")
        unnamed = [item for item in inherited if not item.name and item.fd not in taken]
        match = named[0] if named else match_socket(unnamed, "", *address)
        if match is not None:
            by_name[name] = match.sock
            taken.add(match.fd)
    unused = [item for item in inherited if item.fd not in taken]
    if unused:
        what = ", ".join(
            f"fd {item.fd} {item.name or '(unnamed)'} {item.address[0]}:{item.address[1]}"
            for item in unused
        )
        enabled = [name for name in LISTENER_NAMES if addresses.get(name) is not None]
        raise ActivationError(
            f"inherited sockets that serve no listener: {what} (controld's listeners: "
            f"{', '.join(enabled)}; name the sockets with FileDescriptorName=)"
        )
    bound: dict[str, str] = {}
    for name, sock in by_name.items():
        host, port = sock.getsockname()[:2]
        bound[name] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ListenerSockets(by_name, bound)
