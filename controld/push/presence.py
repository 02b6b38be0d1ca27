"""Sidecars connecting, going quiet, and snapshot features they can't enforce, as events.

A poll ending is not a disconnect (the next one follows at once): a sidecar counts as
connected while a poll is parked or the last one ended within twice its wait
(:meth:`~controld.push.proxy.ProxyState.connected`). That is a matter of time passing, so
:class:`PresenceWatch` looks at the hub once a second and :class:`Presence` (pure: rows in,
events out) says what changed since the last look.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import trio

from controld.events.ring import EventSink, NewEvent, record_all

__all__ = ["INTERVAL_S", "Presence", "PresenceRow", "PresenceWatch"]

#: How often the watch looks.
INTERVAL_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class PresenceRow:
    """One registered sidecar as the hub sees it now."""

    proxy_id: str
    connected: bool
    #: Feature -> snapshot path of what its latest snapshot needs and it doesn't enforce.
    unsupported: Mapping[str, str]


class Presence:
    """What each sidecar looked like at the last :meth:`update` (sans I/O)."""

    def __init__(self) -> None:
        self._connected: dict[str, bool] = {}
        self._unsupported: dict[str, frozenset[tuple[str, str]]] = {}

    def update(self, rows: Iterable[PresenceRow]) -> list[NewEvent]:
        """The events since the last call: connections starting and stopping, and new sets
        of unsupported features (a sidecar that left is forgotten quietly: the hub records
        its deregistration)."""
        events: list[NewEvent] = []
        connected: dict[str, bool] = {}
        unsupported: dict[str, frozenset[tuple[str, str]]] = {}
        for row in rows:
            pid = row.proxy_id
            connected[pid] = row.connected
            if row.connected != self._connected.get(pid, False):
                if row.connected:
                    events.append(NewEvent("sidecar.connected", pid))
                else:
                    detail = "long-poll stopped beyond twice its wait"
                    events.append(NewEvent("sidecar.disconnected", pid, detail, "warning"))
            gaps = unsupported[pid] = frozenset(row.unsupported.items())
            if gaps and gaps != self._unsupported.get(pid, frozenset()):
                detail = ", ".join(f"{feature} at {path}" for feature, path in sorted(gaps))
                events.append(NewEvent("sidecar.unsupported", pid, detail, "warning"))
        self._connected, self._unsupported = connected, unsupported
        return events


class PresenceWatch:
    """Records :class:`Presence` events of ``rows()`` (the hub's) every ``interval_s``."""

    def __init__(
        self,
        rows: Callable[[], Iterable[PresenceRow]],
        events: EventSink,
        *,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self._rows = rows
        self._events = events
        self._interval_s = interval_s
        self._presence = Presence()

    def check(self) -> None:
        """Look once."""
        record_all(self._events, self._presence.update(self._rows()))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Look every ``interval_s`` until cancelled."""
        task_status.started()
        while True:
            self.check()
            await trio.sleep(self._interval_s)
