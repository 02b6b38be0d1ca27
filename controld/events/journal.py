"""The journal of control-plane events: the ring (:mod:`controld.events.ring`) plus waiting.

Everything runs on the Trio thread: the push hub, the API routes and the CA record events
here (:meth:`EventJournal.record`, one call each), and ``GET /v1/events`` long-polls
:meth:`EventJournal.wait_after`. A record wakes every parked reader at once (one event per
generation, like the hub's), so a parked reader costs one wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from controld.events.ring import DEFAULT_CAPACITY, EventRing
from meshcore.api.events import MAX_EVENTS_WAIT_S, ControlEvents, Severity

__all__ = ["EventJournal"]


class EventJournal:
    """The bounded journal (an :class:`~controld.events.ring.EventSink`); ``clock`` gives
    Unix seconds."""

    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._ring = EventRing(capacity)
        self._clock = clock
        self._changed = trio.Event()
        #: Readers parked now (a record with none skips making a new event).
        self._parked = 0
        self._closed = False

    @property
    def last_seq(self) -> int:
        """The newest event's seq (0: none yet)."""
        return self._ring.last_seq

    def record(
        self, kind: str, subject: str, detail: str = "", severity: Severity = "info"
    ) -> None:
        """Add an event now and wake the parked readers."""
        self._ring.append(self._clock(), kind, subject, detail, severity)
        if self._parked:
            self._changed.set()
            self._changed = trio.Event()

    def close(self) -> None:
        """Release parked readers now and from now on (the server is stopping)."""
        self._closed = True
        self._changed.set()

    async def wait_after(self, after: int, *, wait_s: float, limit: int) -> ControlEvents:
        """The events after ``after``; when there are none yet, waits up to ``wait_s``
        (at most :data:`~meshcore.api.events.MAX_EVENTS_WAIT_S`) for one."""
        wait_s = min(max(0.0, wait_s), MAX_EVENTS_WAIT_S)
        if after == self._ring.last_seq and wait_s > 0 and not self._closed:
            self._parked += 1
            try:
                with trio.move_on_after(wait_s):
                    await self._changed.wait()
            finally:
                self._parked -= 1
        return self._ring.after(after, limit)
