"""Listening sockets of a sidecar, kept across snapshot swaps.

A listener whose address stays the same keeps its socket (and its accept queue) when a new
snapshot arrives; only the configuration new connections pick up changes. Connections run in
one nursery of their own, so closing a listener never cuts connections it accepted.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from meshcore.model import Listener
from meshcore.net.accept import Acceptor, ConnectionLimits, default_max_connections
from meshcore.runtime.activation import InheritedSocket, match_socket
from meshd.config import ListenerConfig, RuntimeConfig
from meshd.context import ProxyShared
from meshd.errors import SnapshotRejected
from meshd.http.connection import serve_http
from meshd.net.listen import bind_tcp, nodelay_listener
from meshd.net.stream import SocketStream
from meshd.tcp.config import TcpListenerConfig
from meshd.tcp.proxy import serve_tcp


@dataclass(eq=False)
class ListenerSlot:
    """One bound socket and the configuration its new connections get."""

    model: Listener
    sock: socket.socket
    config: ListenerConfig
    shared: ProxyShared
    inherited: bool = False
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    acceptor: Acceptor | None = None

    @property
    def port(self) -> int:
        """The port actually bound (differs from the model's when it asked for 0)."""
        return int(self.sock.getsockname()[1])

    async def handle(self, stream: SocketStream) -> None:
        """Serve a new connection; HTTP requests follow the slot's configuration as it changes."""
        cfg = self.config
        tls = self.shared.tls
        if tls is not None and tls.inbound_active and self.model.direction == "inbound":
            accepted = await tls.accept(stream, self.shared.connections)
            if accepted is None:
                return  # refused (plaintext under STRICT, failed handshake): closed
            down, peer_identity = accepted
            if isinstance(cfg, TcpListenerConfig):
                await serve_tcp(down, cfg, self.shared, peer_identity=peer_identity)
            else:
                await serve_http(down, cfg, self.shared, self, peer_identity=peer_identity)
            return
        if isinstance(cfg, TcpListenerConfig):
            await serve_tcp(stream, cfg, self.shared)
        else:
            await serve_http(stream, cfg, self.shared, self)


#: Time to first byte of http listeners that don't set one.
HTTP_FIRST_BYTE_TIMEOUT_S = 10.0


def connection_limits(lst: Listener) -> ConnectionLimits:
    """The connection-level limits of ``lst``, its defaults filled in."""
    first_byte = lst.first_byte_timeout_s
    if first_byte is None and lst.protocol == "http":
        first_byte = HTTP_FIRST_BYTE_TIMEOUT_S
    return ConnectionLimits(
        max_connections=lst.max_connections or default_max_connections(),
        first_byte_timeout_s=first_byte,
    )


class ListenerManager:
    """Binds, swaps and closes listeners; owns every downstream connection."""

    def __init__(
        self,
        shared: ProxyShared,
        inherited: list[InheritedSocket] | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        self.shared = shared
        self.slots: dict[str, ListenerSlot] = {}
        self._inherited = list(inherited or [])
        #: Bind with SO_REUSEPORT (set when worker processes share the listeners).
        self.reuse_port = reuse_port
        self._nursery: trio.Nursery | None = None
        self._connections: trio.Nursery | None = None
        self._live = 0
        self._stopped = False
        self._all_closed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the accept loops and the connections until cancelled."""
        async with trio.open_nursery() as connections, trio.open_nursery() as accepts:
            self._connections = connections
            self._nursery = accepts
            task_status.started()
            await trio.sleep_forever()

    def apply(self, runtime: RuntimeConfig) -> None:
        """Bind new listeners, retarget kept ones, close gone ones.

        All new sockets are bound before anything changes, so a snapshot whose listener
        can't bind is rejected whole and the running one stays.
        """
        assert self._nursery is not None and self._connections is not None
        wanted = {lst.name: lst for lst in runtime.snapshot.listeners}
        by_address = {str(s.model.address): s for s in self.slots.values()}
        if self._stopped:
            raise SnapshotRejected("draining: listeners are closed")
        new_socks: dict[str, tuple[socket.socket, bool]] = {}
        failed = ""
        try:
            for name, lst in wanted.items():
                failed = name
                slot = self.slots.get(name)
                if slot is not None and slot.model.address == lst.address:
                    continue
                if (
                    str(lst.address) in by_address
                    and by_address[str(lst.address)].model.name in wanted
                ):
                    continue
                new_socks[name] = self._open(lst)
        except OSError as exc:
            for sock, inherited in new_socks.values():
                if not inherited:
                    sock.close()
            lst = wanted[failed]
            raise SnapshotRejected(
                f"cannot bind listener {lst.name!r} on {lst.address}: {exc.strerror or exc}"
            ) from exc
        old = self.slots
        self.slots = {}
        for name, lst in wanted.items():
            cfg = runtime.listeners[name]
            slot = old.pop(name, None)
            if slot is None or name in new_socks:
                moved = by_address.get(str(lst.address))
                if name not in new_socks and moved is not None:
                    # Same address under a new name: keep the socket.
                    old.pop(moved.model.name, None)
                    moved.model, moved.config = lst, cfg
                    if moved.acceptor is not None:
                        moved.acceptor.limits = connection_limits(lst)
                    self.slots[name] = moved
                    continue
                if slot is not None:
                    self._close(slot)
                sock, inherited = new_socks[name]
                slot = ListenerSlot(lst, sock, cfg, self.shared, inherited=inherited)
                self._nursery.start_soon(self._accept, slot)
            else:
                slot.model, slot.config = lst, cfg
            if slot.acceptor is not None:
                slot.acceptor.limits = connection_limits(lst)
            self.slots[name] = slot
        for slot in old.values():
            self._close(slot)

    @property
    def has_inherited(self) -> bool:
        """Listening sockets came from the service manager (socket activation)."""
        return bool(self._inherited)

    def _open(self, lst: Listener) -> tuple[socket.socket, bool]:
        found = match_socket(self._inherited, lst.name, lst.address.host, lst.address.port)
        if found is not None:
            self._inherited.remove(found)
            found.sock.setblocking(False)
            nodelay_listener(found.sock)
            return found.sock, True
        return bind_tcp(lst.address.host, lst.address.port, reuse_port=self.reuse_port), False

    async def _serve(self, slot: ListenerSlot, sock: socket.socket, addr: Any) -> None:
        self._live += 1
        try:
            await slot.handle(SocketStream(sock, accepted_from=addr))
        finally:
            self._live -= 1
            if not self._live:
                self._all_closed.set()

    async def _accept(self, slot: ListenerSlot) -> None:
        assert self._connections is not None
        stats = self.shared.stats

        def count(event: str) -> None:
            stats.listener_limit_event(slot.model.name, event)

        # A partial, not a closure: a coroutine frame less in every connection's task (its
        # memory, and one hop less on each of its wake-ups).
        serve = partial(self._serve, slot)
        slot.acceptor = Acceptor(connection_limits(slot.model), serve, on_event=count)
        with slot.scope:
            try:
                await slot.acceptor.serve(slot.sock, self._connections)
            finally:
                trio.lowlevel.notify_closing(slot.sock)
                slot.sock.close()

    @staticmethod
    def _close(slot: ListenerSlot) -> None:
        slot.scope.cancel()

    def stop_accepting(self, *, close_silent: bool = True) -> None:
        """Close every listening socket (draining); accepted connections go on.

        Connections that have not sent a byte yet are closed too unless ``close_silent`` is
        false (then :meth:`close_silent` does it later). A listening socket shared with the
        service manager or a successor stays open there, its accept queue with it: this
        process only closes its own descriptor, and never between an accept and its handler.
        """
        self._stopped = True
        for slot in self.slots.values():
            self._close(slot)
        if close_silent:
            self.close_silent()

    def close_silent(self) -> None:
        """Close the accepted connections that have not sent a byte yet."""
        for slot in self.slots.values():
            if slot.acceptor is not None:
                slot.acceptor.close_silent()

    def close_unused_inherited(self) -> None:
        """Close the inherited sockets no listener uses (after a hand-off: the previous
        process's listeners that the configuration in force dropped), so their ports refuse
        rather than queue connections nobody accepts."""
        for item in self._inherited:
            item.sock.close()
        self._inherited.clear()

    def inherited_sockets(self) -> list[tuple[str, socket.socket]]:
        """Name and socket of the listeners serving an inherited socket (worker processes
        accept from the same ones)."""
        if self._stopped:
            return []
        return [(name, slot.sock) for name, slot in self.slots.items() if slot.inherited]

    def listening_sockets(self) -> list[tuple[str, socket.socket]]:
        """Name and socket of every listener (what a successor takes over)."""
        return [(name, slot.sock) for name, slot in self.slots.items() if not self._stopped]

    @property
    def connection_count(self) -> int:
        """Downstream connections open now."""
        return self._live

    async def wait_connections_done(self) -> None:
        """Return once no downstream connection is open."""
        while self._live:
            self._all_closed = trio.Event()
            await self._all_closed.wait()

    def cancel_connections(self) -> None:
        """Cut every downstream connection (the drain timeout ran out)."""
        assert self._connections is not None
        self._connections.cancel_scope.cancel()

    def describe(self) -> list[dict[str, object]]:
        """JSON-able listener state for the admin API."""
        return [
            {
                "name": s.model.name,
                "direction": s.model.direction,
                "protocol": s.model.protocol,
                "address": f"{s.model.address.host}:{s.port}",
                "inherited": s.inherited,
                "route_table": s.model.route_table,
                "cluster": s.model.cluster,
            }
            for s in self.slots.values()
        ]
