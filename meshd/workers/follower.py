"""A worker's side of its channel to the primary: identity, revocations, snapshots, drain.

A worker never talks to controld: the primary enrolls and renews the identity, long-polls the
snapshots and registers the instance; the worker follows it over the channel
(:mod:`meshd.workers.channel`). :class:`WorkerFollower` puts each message in force through
callbacks into the worker's sidecar and reports back the version it applied. The primary's
end closing (it exited, or was killed) drains the worker.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio
from pydantic import ValidationError

from meshcore.errors import ConfigError
from meshcore.model import Snapshot
from meshd.errors import SnapshotRejected
from meshd.workers.channel import ChannelError, LineReader, encode

if TYPE_CHECKING:
    # The identity modules (and cryptography) load only in workers of a sidecar with one.
    from meshd.workers.identity import RelayedIdentity

__all__ = ["WorkerFollower", "watch_primary"]

log = structlog.get_logger("meshd.workers")

_RECEIVE_MAX = 1024 * 1024
#: How often a worker checks that its primary process is still there (without a pidfd).
_PRIMARY_CHECK_S = 0.5


class WorkerFollower:
    """Reads the channel (a service object: :meth:`run`) and reports applied versions.

    ``apply`` puts a snapshot in service (raises :class:`SnapshotRejected` or
    :class:`ConfigError` to reject it); None when the worker reads its snapshot file itself.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        apply: Callable[[Snapshot], None] | None,
        on_drain: Callable[[], None],
        on_primary_gone: Callable[[], None],
        identity: RelayedIdentity | None = None,
    ) -> None:
        self._sock = sock
        self._apply = apply
        self._on_drain = on_drain
        self._on_gone = on_primary_gone
        #: Where the primary's identity goes (None: the sidecar has no enrolled identity).
        self.identity = identity
        #: Set once the primary's first batch (identity, snapshot) is in force here.
        self.synced = trio.Event()
        #: Set once a snapshot from the primary is in service (controld mode).
        self.first_snapshot = trio.Event()
        self._report: dict[str, Any] | None = None
        self._report_changed = trio.Event()

    def report_applied(self, version: int) -> None:
        """Tell the primary which snapshot version this worker serves."""
        self._send_report({"kind": "applied", "version": version})

    def _send_report(self, message: dict[str, Any]) -> None:
        self._report = message
        self._report_changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the primary until cancelled or its end closes (then the worker drains)."""
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(self._sock))
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(self._reports, stream)
            task_status.started()
            try:
                await self._receive(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ChannelError) as exc:
                log.error("channel to the primary broken", error=str(exc))
            log.warning("primary process gone, draining")
            self._on_gone()
            nursery.cancel_scope.cancel()

    async def _reports(self, stream: trio.SocketStream) -> None:
        while True:
            changed = self._report_changed
            report, self._report = self._report, None
            if report is not None:
                try:
                    await stream.send_all(encode(report))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the receiving side notices the primary is gone
            await changed.wait()

    async def _receive(self, stream: trio.SocketStream) -> None:
        reader = LineReader()
        while True:
            data = await stream.receive_some(_RECEIVE_MAX)
            if not data:
                return
            for message in reader.feed(data):
                self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["kind"]
        if kind == "identity" and self.identity is not None:
            try:
                self.identity.apply(message)
            except Exception as exc:  # noqa: BLE001 -- any parse failure: keep the old one
                log.error("the primary's identity is unusable here", error=str(exc))
        elif kind == "revoked" and self.identity is not None:
            self.identity.apply_revoked(message)
        elif kind == "snapshot":
            self._apply_snapshot(message)
        elif kind == "synced":
            self.synced.set()
        elif kind == "drain":
            self._on_drain()

    def _apply_snapshot(self, message: dict[str, Any]) -> None:
        version = message.get("version")
        if self._apply is None or not isinstance(version, int):
            return
        try:
            snapshot = Snapshot.model_validate({**message["snapshot"], "version": version})
            self._apply(snapshot)
        except (SnapshotRejected, ConfigError, ValidationError) as exc:
            log.error("snapshot from the primary rejected", version=version, error=str(exc))
            self._send_report({"kind": "rejected", "version": version, "error": str(exc)[:4096]})
            return
        self.first_snapshot.set()


async def watch_primary(primary: int, on_gone: Callable[[], None]) -> None:
    """Call ``on_gone`` once process ``primary`` has exited (file mode's workers, which may
    have no channel traffic for a long time, and a backstop for the channel)."""
    try:
        pidfd = os.pidfd_open(primary)
    except (AttributeError, OSError):
        # No pidfd (old kernel): notice the re-parenting instead.
        while os.getppid() == primary:  # noqa: ASYNC110 -- nothing to wait on
            await trio.sleep(_PRIMARY_CHECK_S)
    else:
        try:
            await trio.lowlevel.wait_readable(pidfd)  # readable once the process exits
        finally:
            trio.lowlevel.notify_closing(pidfd)
            os.close(pidfd)
    log.warning("primary process gone, draining", primary=primary)
    on_gone()
