"""The sidecar's side of a tap: which requests match, how many may be kept, and the buffer.

controld tells the sidecar its active taps in each telemetry answer; :class:`TapSampler` is
installed as :attr:`meshd.context.ProxyShared.tap` only while one is active. Each tap keeps at
most ``max_events_per_s`` events per second (a token bucket holding one second's worth; while
no tap has a token, :meth:`TapSampler.wants` says so and a request is not looked at), the
buffer holds at most :data:`~meshcore.api.report.MAX_TAP_EVENTS` events between two reports,
and the events go out with the next report.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshcore.api.report import MAX_TAP_EVENTS, ActiveTap, SidecarTapEvent
from meshcore.api.telemetry import TapFilter
from meshd.context import ExchangeRecord

__all__ = ["MAX_PATH", "TapSampler", "matches"]

#: Longest path kept in an event (characters).
MAX_PATH = 1024


def matches(flt: TapFilter, rec: ExchangeRecord) -> bool:
    """Every field given in ``flt`` matches ``rec``."""
    if flt.source is not None and flt.source != rec.source:
        return False
    if flt.destination is not None and flt.destination != rec.destination:
        return False
    if flt.method is not None and flt.method.upper() != rec.method:
        return False
    if flt.status is not None and flt.status != rec.code:
        return False
    return flt.path_prefix is None or rec.target.startswith(flt.path_prefix.encode("latin-1"))


@dataclass(slots=True)
class _Tap:
    spec: ActiveTap
    #: Monotonic time the tap ends.
    until: float
    tokens: float
    stamp: float

    def ready(self, now: float) -> bool:
        """A token is available at ``now`` (the bucket is refilled, none is taken)."""
        rate = self.spec.max_events_per_s
        self.tokens = min(float(rate), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        return self.tokens >= 1.0

    def take(self, now: float) -> bool:
        if not self.ready(now):
            return False
        self.tokens -= 1.0
        return True


class TapSampler:
    """Active taps and the events they sampled (a :class:`~meshd.context.RequestObserver`)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        max_buffer: int = MAX_TAP_EVENTS,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._taps: dict[str, _Tap] = {}
        self._events: deque[SidecarTapEvent] = deque()
        self._max_buffer = max_buffer
        #: :meth:`wants` is False until then (no tap has a token before).
        self._quiet_until = 0.0
        #: Events sampled, and matching events not kept (over the rate or the buffer).
        self.sampled = 0
        self.dropped = 0

    @property
    def active(self) -> bool:
        """Some tap has not ended yet."""
        now = self._clock()
        return any(t.until > now for t in self._taps.values())

    def set_taps(self, taps: Sequence[ActiveTap]) -> None:
        """The taps controld says are active now (a tap's rate budget carries over)."""
        now = self._clock()
        kept: dict[str, _Tap] = {}
        for spec in taps:
            old = self._taps.get(spec.id)
            if old is not None:
                old.spec = spec
                old.until = now + spec.remaining_s
                kept[spec.id] = old
            else:
                kept[spec.id] = _Tap(spec, now + spec.remaining_s, 1.0, now)
        self._taps = kept
        self._quiet_until = 0.0

    def wants(self) -> bool:
        """Some active tap has a token left and the buffer has room (else a request is not
        even looked at: the rate bound is what keeps a tap cheap)."""
        now = self._clock()
        if now < self._quiet_until or len(self._events) >= self._max_buffer:
            return False
        live = [tap for tap in self._taps.values() if tap.until > now]
        if any(tap.ready(now) for tap in live):
            return True
        # No token anywhere: nothing to look at until the first one is back.
        self._quiet_until = min(
            (t.stamp + (1.0 - t.tokens) / t.spec.max_events_per_s for t in live),
            default=float("inf"),
        )
        return False

    def observe(self, record: ExchangeRecord) -> None:
        """Keep ``record`` as an event of every active tap it matches, within their rates."""
        now = self._clock()
        for tap in self._taps.values():
            if tap.until <= now or not matches(tap.spec.filter, record):
                continue
            if not tap.take(now) or len(self._events) >= self._max_buffer:
                self.dropped += 1
                continue
            self.sampled += 1
            self._events.append(self._event(tap.spec.id, record))

    def take_events(self) -> list[SidecarTapEvent]:
        """The events buffered since the last call."""
        events = list(self._events)
        self._events.clear()
        self._quiet_until = 0.0  # the buffer has room again
        return events

    def _event(self, tap_id: str, rec: ExchangeRecord) -> SidecarTapEvent:
        traceparent = rec.traceparent_out or rec.traceparent_in
        trace_id = traceparent[3:35].decode("ascii", "replace") if traceparent else ""
        return SidecarTapEvent(
            tap_id=tap_id,
            ts=self._wall(),
            source=rec.source,
            destination=rec.destination,
            route=rec.route,
            endpoint=rec.endpoint,
            method=rec.method,
            path=rec.target[:MAX_PATH].decode("latin-1"),
            status=rec.code,
            latency_ms=round(rec.seconds * 1000, 3),
            identity=rec.peer_identity,
            trace_id=trace_id,
            direction=rec.direction,
        )
