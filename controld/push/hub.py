"""The push hub: sidecars long-poll it for their compiled snapshots (the Trio shell).

The rules live in :mod:`controld.push.state`; this module adds waiting. Each registered
proxy has one :class:`trio.Event` per *generation* of its state: publishing a new snapshot
for it (or unregistering it) sets the event and drops it, and the next waiter makes a fresh
one. A parked poll therefore costs one wait on an event, and a publish wakes only the polls
of the proxies whose snapshot changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from controld.events.ring import EventSink, NullSink
from controld.push.metrics import PushMetrics
from controld.push.presence import PresenceRow
from controld.push.state import (
    Compiled,
    ProxyStatus,
    PushObserver,
    PushState,
    SidecarInfo,
    UnknownProxy,
)
from meshcore.model.proxy import ProxyDescriptor
from meshcore.model.snapshot import Snapshot

__all__ = ["Envelope", "PushHub"]

#: Longest a poll may stay parked (the API caps ``wait`` at the same value).
MAX_WAIT_S = 300.0


@dataclass(frozen=True, slots=True)
class Envelope:
    """A snapshot ready to send: ``body`` is the JSON ``{"version", "hash", "snapshot"}``."""

    version: int
    hash: str
    body: bytes


class PushHub:
    """Registered sidecars, their compiled snapshots and the long-polls waiting for them.

    Everything runs on the Trio thread. ``metrics`` (the daemon's registry) gets the
    :class:`~controld.push.metrics.PushMetrics`; without it nothing is counted. ``events``
    gets the control-plane events (registrations, pushes, ACKs, NACKs, drains).
    """

    def __init__(
        self,
        *,
        metrics: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        events: EventSink | None = None,
    ) -> None:
        self._clock = clock
        self.journal: EventSink = events if events is not None else NullSink()
        self.metrics: PushMetrics | None = None
        observer: PushObserver | None = None
        if metrics is not None:
            observer = self.metrics = PushMetrics(metrics, connected=self.connected_count)
        self._state = PushState(observer)
        self._events: dict[str, trio.Event] = {}
        #: Proxies registered or changed since the reconciler last took them.
        self._dirty: set[str] = set()
        self._dirty_event = trio.Event()
        self._closed = False
        #: Drains asked for by an operator: proxy id -> [asked at, delivered to the sidecar].
        self._drains: dict[str, list[Any]] = {}

    # -- registrations -------------------------------------------------------------------------

    def register(self, descriptor: ProxyDescriptor, *, features: str | None = None) -> None:
        """Register or refresh a sidecar; a new or changed one is queued for compiling.

        ``features``: the registration's features header, if it had one.
        """
        drain = self._drains.get(descriptor.proxy_id)
        if drain is not None and drain[1]:
            # A sidecar registering after it was told to drain is a new process.
            del self._drains[descriptor.proxy_id]
        if descriptor.proxy_id not in self._state:
            self.journal.record("sidecar.registered", descriptor.proxy_id, descriptor.service)
        if self._state.register(descriptor, features=features):
            self._dirty.add(descriptor.proxy_id)
            self._dirty_event.set()

    def unregister(self, proxy_id: str) -> None:
        """Forget a sidecar (its parked polls raise :class:`UnknownProxy`)."""
        self._drains.pop(proxy_id, None)
        if self._state.unregister(proxy_id):
            self.journal.record("sidecar.deregistered", proxy_id)
            self._dirty.discard(proxy_id)
            self._wake(proxy_id)

    def descriptor(self, proxy_id: str) -> ProxyDescriptor | None:
        """The registered descriptor of ``proxy_id``, or None."""
        if proxy_id not in self._state:
            return None
        return self._state.get(proxy_id).descriptor

    def descriptors(self) -> Mapping[str, ProxyDescriptor]:
        """Registered descriptors by proxy id (a copy)."""
        return self._state.descriptors()

    async def wait_registrations(self) -> set[str]:
        """Wait until proxies were registered or changed; their ids (taken: asked once).

        Meant for one consumer, the :class:`~controld.push.reconciler.Reconciler`.
        """
        while not self._dirty:
            await self._dirty_event.wait()
            self._dirty_event = trio.Event()
        taken, self._dirty = self._dirty, set()
        return {pid for pid in taken if pid in self._state}

    # -- compiled snapshots --------------------------------------------------------------------

    def publish(
        self,
        compiled: Mapping[str, tuple[Snapshot, str]],
        *,
        revision: int,
        changed_at: float,
    ) -> None:
        """Install compiled ``{proxy_id: (snapshot, hash)}`` and wake the polls they answer.

        ``revision`` and ``changed_at`` (unix time) describe the change they carry, for the
        convergence metric.
        """
        changed = self._state.publish(
            compiled, revision=revision, changed_at=changed_at, now=self._clock()
        )
        for pid in changed:
            self._wake(pid)

    def close(self) -> None:
        """Release every parked poll with None (no news), now and from now on: the server
        is stopping and must not wait out long-polls."""
        self._closed = True
        events, self._events = self._events, {}
        for event in events.values():
            event.set()

    def is_closed(self) -> bool:
        """:meth:`close` was called."""
        return self._closed

    def _wake(self, proxy_id: str) -> None:
        event = self._events.pop(proxy_id, None)
        if event is not None:
            event.set()

    # -- drain ---------------------------------------------------------------------------------

    def request_drain(self, proxy_id: str) -> float:
        """Ask ``proxy_id`` to drain: its parked poll (or its next one) answers at once and
        carries the request (see :meth:`take_drain`). Returns when it was first asked;
        raises :class:`UnknownProxy`."""
        if proxy_id not in self._state:
            raise UnknownProxy(proxy_id)
        drain = self._drains.setdefault(proxy_id, [self._clock(), False])
        drain[1] = False
        self.journal.record("sidecar.drain_requested", proxy_id, severity="warning")
        self._wake(proxy_id)
        return float(drain[0])

    def take_drain(self, proxy_id: str) -> bool:
        """True once per request: the poll answering now tells the sidecar to drain."""
        drain = self._drains.get(proxy_id)
        if drain is None or drain[1]:
            return False
        drain[1] = True
        return True

    def drain_requested(self, proxy_id: str) -> float | None:
        """When a drain of ``proxy_id`` was asked for (None: never, or it registered anew)."""
        drain = self._drains.get(proxy_id)
        return None if drain is None else float(drain[0])

    def _drain_pending(self, proxy_id: str) -> bool:
        drain = self._drains.get(proxy_id)
        return drain is not None and not drain[1]

    # -- sidecar exchanges ---------------------------------------------------------------------

    async def poll(
        self,
        proxy_id: str,
        *,
        version: int | None,
        hash: str | None,
        wait: float | None = None,
        wait_s: float | None = None,
        features: str | None = None,
    ) -> Envelope | None:
        """ACK ``version``/``hash`` (what the sidecar runs; None on first contact) and answer.

        ``features`` is the poll's features header (None: the sidecar declares none).

        Returns the proxy's snapshot at once when it differs from ``hash`` (and wasn't NACKed),
        else waits up to ``wait`` (alias ``wait_s``) seconds for one; None if nothing came.
        Raises :class:`UnknownProxy` when the proxy isn't (or stops being) registered.
        """
        timeout = min(MAX_WAIT_S, max(0.0, wait if wait is not None else (wait_s or 0.0)))
        acked_before = self._state.get(proxy_id).acked
        state = self._state.observe_poll(
            proxy_id,
            version=version,
            hash=hash,
            wait_s=timeout,
            now=self._clock(),
            features=features,
        )
        if state.acked is not acked_before and state.acked is not None and state.acked.acked:
            self.journal.record("snapshot.acked", proxy_id, f"version {state.acked.version}")
        compiled = self._take(proxy_id)
        if (
            compiled is not None
            or timeout <= 0
            or self.is_closed()
            or self._drain_pending(proxy_id)
        ):
            return _envelope(compiled)
        state.parked += 1
        try:
            with trio.move_on_after(timeout):
                while True:
                    event = self._events.get(proxy_id)
                    if event is None:
                        event = self._events[proxy_id] = trio.Event()
                    await event.wait()
                    if self.is_closed():
                        return None
                    if proxy_id not in self._state or self._state.get(proxy_id) is not state:
                        raise UnknownProxy(proxy_id)
                    compiled = self._take(proxy_id)
                    if compiled is not None or self._drain_pending(proxy_id):
                        return _envelope(compiled)
            return None
        finally:
            state.parked -= 1
            state.last_contact = self._clock()

    def _take(self, proxy_id: str) -> Compiled | None:
        compiled = self._state.take(proxy_id)
        if compiled is not None:
            self.journal.record("snapshot.pushed", proxy_id, f"version {compiled.version}")
        return compiled

    def nack(self, proxy_id: str, *, version: int, hash: str, error: str) -> None:
        """Record that the sidecar rejected ``version``/``hash``; raises :class:`UnknownProxy`."""
        self._state.nack(proxy_id, version=version, hash=hash, error=error, now=self._clock())
        lines = error.strip().splitlines()
        reason = lines[0] if lines else "(no reason)"
        self.journal.record(
            "snapshot.nacked", proxy_id, f"version {version}: {reason}", severity="error"
        )

    # -- reporting -----------------------------------------------------------------------------

    def statuses(self) -> list[ProxyStatus]:
        """One :class:`~controld.push.state.ProxyStatus` per sidecar, sorted by proxy id."""
        return self._state.statuses(self._clock())

    def proxies(self) -> list[dict[str, Any]]:
        """The ``GET /v1/proxies`` entries (JSON-ready)."""
        return [status.as_json() for status in self._state.statuses(self._clock())]

    def sidecars(self) -> list[SidecarInfo]:
        """Each sidecar's declared features and ACKed snapshot (feature checks)."""
        return self._state.sidecars(self._clock())

    def presence(self) -> list[PresenceRow]:
        """Each sidecar's connection and unsupported features now (:class:`PresenceWatch`)."""
        now = self._clock()
        return [
            PresenceRow(pid, state.connected(now), state.unsupported())
            for pid, state in self._state.states()
        ]

    def connected_count(self) -> int:
        """Sidecars with a poll parked now or recently."""
        return self._state.connected_count(self._clock())

    def status_json(self) -> dict[str, Any]:
        """The ``push`` section of ``/v1/status``."""
        return {
            "proxies": len(self._state),
            "connected": self.connected_count(),
            "rollouts_pending": self._state.rollouts_pending(),
        }


def _envelope(compiled: Compiled | None) -> Envelope | None:
    if compiled is None:
        return None
    return Envelope(compiled.version, compiled.hash, compiled.body())
