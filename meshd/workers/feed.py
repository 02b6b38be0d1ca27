"""The primary's side of the worker channels: what every worker must follow, sent to each.

The primary runs the one control session (controld long-poll, enrollment and renewals,
registry registration). :class:`WorkerFeed` keeps the latest of what workers take from it
(identity, revoked serials, the snapshot in controld mode, the drain) and sends each worker
the latest state on connect and after every change: a worker that falls behind skips to the
newest value rather than replaying a queue. Each worker answers with the snapshot version it
applied (or the error it rejected it with), shown in the primary's ``/stats``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import trio

from meshd.workers.channel import ChannelError, LineReader, encode

if TYPE_CHECKING:
    from meshcore.model import Snapshot
    from meshd.identity.material import Identity
    from meshd.mtls import IdentitySource

__all__ = ["WorkerFeed", "WorkerLink"]

log = structlog.get_logger("meshd.workers")

_RECEIVE_MAX = 65536


@dataclass
class WorkerLink:
    """One worker as the primary sees it through its channel."""

    index: int
    pid: int
    #: The snapshot version the worker last applied (None before the first).
    version: int | None = None
    #: Its last rejection ("version N: error"), cleared by the next success.
    error: str | None = None
    synced: bool = False

    def describe(self) -> dict[str, Any]:
        """JSON-able state for ``/stats``."""
        return {"index": self.index, "pid": self.pid, "version": self.version, "error": self.error}


class WorkerFeed:
    """The latest identity, revocations, snapshot and drain, for every worker channel."""

    def __init__(self) -> None:
        self._identity: dict[str, Any] | None = None
        self._revoked: dict[str, Any] | None = None
        self._snapshot: dict[str, Any] | None = None
        self._drain: dict[str, Any] | None = None
        self._changed = trio.Event()
        #: Connected workers by index.
        self.links: dict[int, WorkerLink] = {}

    # -- what the primary publishes ------------------------------------------------------------

    def publish_snapshot(self, snapshot: Snapshot) -> None:
        """``snapshot`` is in service in the primary (controld mode): workers apply it too."""
        document = snapshot.model_dump(mode="json")
        self._set(
            "_snapshot", {"kind": "snapshot", "version": snapshot.version, "snapshot": document}
        )

    def publish_identity(self, identity: Identity | None) -> None:
        """The workload identity in force (None: none, or expired)."""
        message: dict[str, Any] = {"kind": "identity"}
        if identity is not None:
            message.update(
                key=identity.key_pem.decode("ascii"),
                cert=identity.cert_pem.decode("ascii"),
                bundle=[pem.decode("ascii") for pem in identity.bundle_pems],
            )
        self._set("_identity", message)

    def publish_revoked(self, serials: frozenset[int]) -> None:
        """Revoked peer certificate serials."""
        self._set("_revoked", {"kind": "revoked", "serials": [f"{s:x}" for s in sorted(serials)]})

    def announce_drain(self) -> None:
        """The primary's drain delay began: workers answer ``/ready`` 503 and wait for SIGTERM."""
        self._set("_drain", {"kind": "drain"})

    def _set(self, attr: str, message: dict[str, Any]) -> None:
        setattr(self, attr, message)
        self._changed.set()
        self._changed = trio.Event()

    async def follow_identity(self, source: IdentitySource) -> None:
        """Publish ``source``'s identity and revocations on every change, until cancelled."""
        identity, revoked = source.current, source.revoked
        self.publish_identity(identity)
        self.publish_revoked(revoked)
        version = source.version
        while True:
            version = await source.wait_version(version)
            # A change of one must not resend the other (a worker would rebuild its contexts).
            if source.current is not identity:
                identity = source.current
                self.publish_identity(identity)
            if source.revoked != revoked:
                revoked = source.revoked
                self.publish_revoked(revoked)

    # -- one worker ----------------------------------------------------------------------------

    def waiting(self) -> list[dict[str, Any]]:
        """The messages a new worker gets first, in order."""
        return [m for m in (self._identity, self._revoked, self._snapshot) if m is not None]

    async def serve(self, link: WorkerLink, stream: trio.abc.Stream) -> None:
        """Keep the worker behind ``stream`` up to date until it closes its end."""
        self.links[link.index] = link
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop, link, stream)
                try:
                    await self._receive_loop(link, stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError, ChannelError) as exc:
                    log.warning("worker channel closed", worker=link.index, error=str(exc))
                nursery.cancel_scope.cancel()
        finally:
            if self.links.get(link.index) is link:
                del self.links[link.index]

    async def _send_loop(self, link: WorkerLink, stream: trio.abc.Stream) -> None:
        sent: dict[str, dict[str, Any]] = {}
        while True:
            changed = self._changed
            batch = [
                m
                for m in (*self.waiting(), self._drain)
                if m is not None and sent.get(m["kind"]) is not m
            ]
            if not link.synced:
                batch.append({"kind": "synced"})
                link.synced = True
            for message in batch:
                sent[message["kind"]] = message
            if batch:
                try:
                    await stream.send_all(b"".join(encode(m) for m in batch))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the receiving side sees the worker go

            await changed.wait()

    async def _receive_loop(self, link: WorkerLink, stream: trio.abc.Stream) -> None:
        reader = LineReader()
        while True:
            data = await stream.receive_some(_RECEIVE_MAX)
            if not data:
                return
            for message in reader.feed(data):
                if message["kind"] == "applied":
                    link.version, link.error = message.get("version"), None
                elif message["kind"] == "rejected":
                    link.error = f"version {message.get('version')}: {message.get('error')}"
                    log.error("a worker rejected the snapshot", worker=link.index, error=link.error)

    def describe(self) -> list[dict[str, Any]]:
        """Each connected worker's pid and snapshot version."""
        return [self.links[i].describe() for i in sorted(self.links)]
