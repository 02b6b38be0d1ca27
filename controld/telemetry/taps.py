"""Taps: an operator's request for sampled request events, and the events the sidecars send.

A tap lives ``duration_s`` (at most 600 s). Sidecars learn the active taps that may concern
them (their service is the filter's source or destination, or the filter names neither) in the
answer to each telemetry report, sample matching requests at most ``max_events_per_s`` each,
and send the events with their next report. controld keeps at most ``max_events_per_s`` per
second per tap over all sidecars (a token bucket of one second's worth) and at most
:data:`MAX_BUFFERED` events per tap; a reader long-polls ``events(after=N)``.

Events still arrive for :data:`GRACE_S` after a tap's end (the last reports); then the tap is
done. Ended taps are forgotten :data:`KEEP_ENDED_S` after their end.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import trio

from meshcore.api.report import ActiveTap, SidecarTapEvent
from meshcore.api.telemetry import TapCreated, TapEvent, TapEvents, TapRequest
from meshcore.errors import MeshError

__all__ = ["GRACE_S", "MAX_BUFFERED", "MAX_TAPS", "TapHub", "TooManyTaps", "UnknownTap"]

#: Events kept per tap for readers (oldest dropped first).
MAX_BUFFERED: Final = 1000
#: Taps active at once.
MAX_TAPS: Final = 32
#: Events are still accepted this long after a tap's end.
GRACE_S: Final = 2.0
#: An ended tap's remaining events stay readable this long.
KEEP_ENDED_S: Final = 60.0
#: Longest wait of one events long-poll.
MAX_WAIT_S: Final = 30.0


class UnknownTap(MeshError):
    """No tap with that id (never created, or forgotten)."""


class TooManyTaps(MeshError):
    """:data:`MAX_TAPS` taps are active already."""


@dataclass(slots=True, eq=False)
class _Tap:
    id: str
    request: TapRequest
    expires_at: float
    events: deque[tuple[int, TapEvent]] = field(default_factory=deque)
    seq: int = 0
    tokens: float = 0.0
    stamp: float = 0.0
    deleted_at: float | None = None
    dropped: int = 0
    changed: trio.Event = field(default_factory=trio.Event)

    def ends_at(self) -> float:
        return self.expires_at if self.deleted_at is None else min(self.expires_at, self.deleted_at)

    def done(self, now: float) -> bool:
        if self.deleted_at is not None:
            return True
        return now >= self.expires_at + GRACE_S

    def take(self, now: float) -> bool:
        rate = self.request.max_events_per_s
        self.tokens = min(float(rate), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class TapHub:
    """The active taps (see the module doc); ``clock`` gives Unix seconds."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._taps: dict[str, _Tap] = {}
        #: Events refused over a tap's rate or for an unknown or ended tap.
        self.dropped = 0

    def create(self, request: TapRequest) -> TapCreated:
        """Start a tap; :class:`TooManyTaps` when :data:`MAX_TAPS` are active."""
        now = self._clock()
        self._forget(now)
        if sum(1 for t in self._taps.values() if not t.done(now)) >= MAX_TAPS:
            raise TooManyTaps(f"{MAX_TAPS} taps are active already")
        tap_id = secrets.token_hex(8)
        tap = _Tap(tap_id, request, now + request.duration_s, tokens=1.0, stamp=now)
        self._taps[tap_id] = tap
        return TapCreated(id=tap_id, expires_at=tap.expires_at)

    def delete(self, tap_id: str) -> None:
        """Stop a tap now (its buffered events stay readable)."""
        tap = self._get(tap_id)
        if tap.deleted_at is None:
            tap.deleted_at = self._clock()
            tap.wake()

    def active_for(self, service: str) -> tuple[ActiveTap, ...]:
        """The running taps a sidecar of ``service`` may see requests of."""
        now = self._clock()
        self._forget(now)
        out = []
        for tap in self._taps.values():
            if tap.deleted_at is not None or tap.expires_at <= now:
                continue
            flt = tap.request.filter
            if flt.source not in (None, service) and flt.destination not in (None, service):
                continue
            out.append(
                ActiveTap(
                    id=tap.id,
                    filter=flt,
                    max_events_per_s=tap.request.max_events_per_s,
                    remaining_s=tap.expires_at - now,
                )
            )
        return tuple(out)

    def add_events(self, events: Iterable[SidecarTapEvent]) -> None:
        """Events from a sidecar's report (over the tap's rate, or for no live tap: dropped)."""
        now = self._clock()
        woken: set[str] = set()
        for event in events:
            tap = self._taps.get(event.tap_id)
            if tap is None or tap.deleted_at is not None or now >= tap.expires_at + GRACE_S:
                self.dropped += 1
                continue
            if not tap.take(now):
                tap.dropped += 1
                self.dropped += 1
                continue
            tap.seq += 1
            tap.events.append((tap.seq, TapEvent.model_validate(event.model_dump())))
            if len(tap.events) > MAX_BUFFERED:
                tap.events.popleft()
            woken.add(tap.id)
        for tap_id in woken:
            self._taps[tap_id].wake()

    async def events(self, tap_id: str, *, after: int, wait_s: float) -> TapEvents:
        """Events numbered after ``after``; waits up to ``wait_s`` for one (or the tap's end)."""
        tap = self._get(tap_id)
        wait_s = min(max(0.0, wait_s), MAX_WAIT_S)
        now = self._clock()
        if not self._ready(tap, after, now) and wait_s > 0:
            until_done = tap.expires_at + GRACE_S - now
            with trio.move_on_after(max(0.0, min(wait_s, until_done + 0.05))):
                await tap.changed.wait()
        now = self._clock()
        fresh = tuple(event for seq, event in tap.events if seq > after)
        return TapEvents(events=fresh, next=max(after, tap.seq), done=tap.done(now))

    def _ready(self, tap: _Tap, after: int, now: float) -> bool:
        return tap.seq > after or tap.done(now)

    def _get(self, tap_id: str) -> _Tap:
        tap = self._taps.get(tap_id)
        if tap is None:
            raise UnknownTap(f"no tap {tap_id!r}")
        return tap

    def _forget(self, now: float) -> None:
        for tap_id in [i for i, t in self._taps.items() if t.ends_at() + KEEP_ENDED_S < now]:
            del self._taps[tap_id]

    def status_json(self) -> dict[str, int]:
        """Counts for ``/v1/status``."""
        now = self._clock()
        return {
            "active": sum(1 for t in self._taps.values() if not t.done(now)),
            "dropped_events": self.dropped,
        }
