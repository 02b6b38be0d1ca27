"""A sidecar's place in a line of processes: what it took over, what it hands on.

:class:`Succession` is the sidecar's side of :mod:`meshd.handoff`. Once the sidecar serves
it confirms the takeover to its predecessor (which then hands over), closes the handed-over
sockets its configuration no longer listens on, and serves the hand-off socket for its own
successor; when that one is ready it starts the sidecar's restart drain and stops the admin API
here (the successor serves the same admin socket).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog
import trio

from meshd.handoff import HandedSocket, HandoffError, HandoffServer, Takeover, bind_admin
from meshd.listeners import ListenerManager

if TYPE_CHECKING:
    from meshd.admin.server import AdminServer
    from meshd.workers import WorkerSupervisor

__all__ = ["Succession"]

log = structlog.get_logger("meshd.succession")


class SidecarView(Protocol):
    """The parts of a :class:`meshd.sidecar.Sidecar` a succession uses."""

    listeners: ListenerManager
    workers: WorkerSupervisor | None

    def is_draining(self) -> bool:
        """Draining has begun."""
        ...

    def start_restart(self, why: str) -> None:
        """Begin a restart drain."""
        ...


class Succession:
    """The takeover this process came from (if any) and the hand-off it serves (if any)."""

    def __init__(self, sidecar: SidecarView, takeover: Takeover | None, path: Path | None) -> None:
        self._sidecar = sidecar
        #: Sockets from the previous process, until this one confirms it serves.
        self.takeover = takeover
        #: Where the hand-off to a successor is served (None: nowhere).
        self.path = path
        self._admin_sock: socket.socket | None = None
        self._admin: AdminServer | None = None
        self._serving = trio.Event()

    def admin_socket(self, host: str, port: int, *, primary: bool) -> socket.socket:
        """The admin API's listening socket (taken over or bound here); the primary process
        keeps a copy of it for a successor."""
        sock = bind_admin(host, port, self.takeover)
        if primary:
            self._admin_sock = sock.dup()
        return sock

    def serving_admin(self, server: AdminServer) -> None:
        """The admin server in this process (stopped once a successor serves its socket)."""
        self._admin = server

    def serving(self) -> None:
        """The sidecar serves (READY): :meth:`run` confirms the takeover and opens the hand-off."""
        self._serving.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Once :meth:`serving`: confirm the takeover, then serve the hand-off until a
        successor is ready. Runs until cancelled (it owns the admin socket's copy)."""
        task_status.started()
        try:
            await self._serving.wait()
            took_over = self.takeover is not None
            if self.takeover is not None:
                self.takeover.confirm()
                self.takeover = None
                self._sidecar.listeners.close_unused_inherited()
            if self.path is not None:
                server = HandoffServer(
                    self.path, self._offer, self._successor_ready, replace=took_over
                )
                await server.run()
            await trio.sleep_forever()
        finally:
            if self._admin_sock is not None:
                self._admin_sock.close()

    def abandon(self) -> None:
        """This process failed before serving: its predecessor serves on."""
        if self.takeover is not None:
            self.takeover.abandon()
            self.takeover = None

    def _offer(self) -> list[HandedSocket]:
        sidecar = self._sidecar
        if sidecar.is_draining():
            raise HandoffError("draining")
        if sidecar.workers is not None:
            raise HandoffError("workers share the listeners: restart with socket activation")
        offered = [
            HandedSocket(name, "listener", sock)
            for name, sock in sidecar.listeners.listening_sockets()
        ]
        if self._admin_sock is not None:
            offered.append(HandedSocket("admin", "admin", self._admin_sock))
        return offered

    def _successor_ready(self, pid: int) -> None:
        self._sidecar.start_restart(f"successor {pid} took over")
        if self._admin is not None:
            # The successor answers on the same admin socket; ours would say "draining".
            self._admin.shutdown_nowait()
