"""The journal's core: a bounded ring of numbered control-plane events (pure, no I/O).

Values in, values out: the caller passes the time. Sequence numbers start at 1 and never
repeat within a process; when the ring is full the oldest event is dropped, and a reader that
asks for events it can no longer get is told how many it missed.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from meshcore.api.events import ControlEvent, ControlEvents, Severity

__all__ = [
    "DEFAULT_CAPACITY",
    "MAX_DETAIL",
    "EventRing",
    "EventSink",
    "NewEvent",
    "NullSink",
    "ResourceChange",
    "record_all",
    "record_changes",
    "rfc3339_ms",
]

#: Events kept (a rollout to 1000 sidecars records ~2000: push and ACK each).
DEFAULT_CAPACITY: Final = 4096
#: Longest detail kept (a NACK's error can be kilobytes; the proxy list has it whole).
MAX_DETAIL: Final = 300


class EventSink(Protocol):
    """Where the control plane's parts record events (the journal; :class:`NullSink` in
    tests and when nothing listens). Recording never blocks and never fails."""

    def record(
        self, kind: str, subject: str, detail: str = "", severity: Severity = "info"
    ) -> None:
        """Record one event (``kind`` from :data:`meshcore.api.events.EVENT_KINDS`)."""
        ...


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event a pure core found, for its shell to :meth:`record` (see :func:`record_all`)."""

    kind: str
    subject: str
    detail: str = ""
    severity: Severity = "info"


def record_all(sink: EventSink, events: Iterable[NewEvent]) -> None:
    """Record ``events`` in order."""
    for event in events:
        sink.record(event.kind, event.subject, event.detail, event.severity)


class NullSink:
    """An :class:`EventSink` that drops everything."""

    def record(
        self, kind: str, subject: str, detail: str = "", severity: Severity = "info"
    ) -> None:
        """Dropped."""


class ResourceChange(Protocol):
    """One resource an apply or delete touched (``controld.store.Change``)."""

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def action(self) -> str: ...


def record_changes(sink: EventSink, changes: Iterable[ResourceChange], author: str) -> None:
    """``resource.created``/``updated``/``deleted`` for each resource that changed."""
    for change in changes:
        if change.action in ("created", "updated", "deleted"):
            sink.record(f"resource.{change.action}", f"{change.kind}/{change.name}", f"by {author}")


def rfc3339_ms(when: float) -> str:
    """Unix seconds as ``2026-12-06T11:24:01.123Z``."""
    seconds = int(when // 1)
    millis = min(999, round((when - seconds) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


#: seq, time, kind, subject, detail, severity.
_Entry = tuple[int, float, str, str, str, Severity]


class EventRing:
    """At most ``capacity`` events, oldest dropped first.

    Appending is on the push hub's hot path (an event per snapshot pushed and per ACK), so the
    ring keeps plain tuples and builds the wire models only for a reader.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("the event ring holds at least one event")
        self._events: deque[_Entry] = deque(maxlen=capacity)
        self._seq = 0

    @property
    def last_seq(self) -> int:
        """The newest event's seq (0: none yet)."""
        return self._seq

    def __len__(self) -> int:
        return len(self._events)

    def append(
        self, now: float, kind: str, subject: str, detail: str = "", severity: Severity = "info"
    ) -> int:
        """Add an event at ``now`` (Unix seconds); its seq."""
        self._seq += 1
        if len(detail) > MAX_DETAIL:
            detail = detail[: MAX_DETAIL - 1] + "…"
        self._events.append((self._seq, now, kind, subject, detail, severity))
        return self._seq

    def after(self, after: int, limit: int) -> ControlEvents:
        """The oldest ``limit`` events numbered after ``after`` (see
        :class:`~meshcore.api.events.ControlEvents` for ``next``, ``missed`` and ``reset``)."""
        reset = after > self._seq
        if reset:
            after = 0
        first = self._events[0][0] if self._events else self._seq + 1
        missed = max(0, first - 1 - after)
        start = max(0, after + 1 - first)
        events = tuple(
            ControlEvent(
                seq=seq,
                time=rfc3339_ms(when),
                kind=kind,
                subject=subject,
                detail=detail,
                severity=severity,
            )
            for seq, when, kind, subject, detail, severity in itertools.islice(
                self._events, start, start + max(0, limit)
            )
        )
        next_seq = events[-1].seq if events else max(after, first - 1)
        return ControlEvents(events=events, next=next_seq, missed=missed, reset=reset)
