"""The sidecar's side of a tap: which requests match, how many may be kept, and the buffer.

controld tells the sidecar its active taps in each telemetry answer; :class:`TapSampler` is
installed as :attr:`meshd.context.ProxyShared.tap` only while one is active. Each tap keeps at
most ``max_events_per_s`` events per second (a token bucket holding one second's worth; while
no tap has a token, :meth:`TapSampler.wants` says so after one comparison and a request is not
looked at; while one has, only a request its filter matches is recorded), the buffer holds at
most :data:`~meshcore.api.report.MAX_TAP_EVENTS` events between two reports, and the events
are built from the kept records and go out with the next report.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True, slots=True)
class _Match:
    """A tap filter made ready for the request path: plain values, compared as they come."""

    source: str | None
    destination: str | None
    #: Upper case, as the request path names methods.
    method: str | None
    status: int | None
    prefix: bytes | None

    @classmethod
    def of(cls, flt: TapFilter) -> _Match:
        return cls(
            flt.source,
            flt.destination,
            flt.method.upper() if flt.method is not None else None,
            flt.status,
            flt.path_prefix.encode("latin-1") if flt.path_prefix is not None else None,
        )

    def __call__(
        self, source: str, destination: str, method: str, code: int, target: bytes
    ) -> bool:
        return (
            (self.source is None or self.source == source)
            and (self.destination is None or self.destination == destination)
            and (self.method is None or self.method == method)
            and (self.status is None or self.status == code)
            and (self.prefix is None or target.startswith(self.prefix))
        )


def matches(flt: TapFilter, rec: ExchangeRecord) -> bool:
    """Every field given in ``flt`` matches ``rec``."""
    return _Match.of(flt)(rec.source, rec.destination, rec.method, rec.code, rec.target)


@dataclass(slots=True)
class _Tap:
    spec: ActiveTap
    match: _Match
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

    def next_token(self, now: float) -> float:
        """When the bucket has a token again (``now`` if it has one; inf: it never will)."""
        if self.ready(now):
            return now
        rate = self.spec.max_events_per_s
        return self.stamp + (1.0 - self.tokens) / rate if rate > 0 else math.inf


class TapSampler:
    """Active taps and the events they sampled (a :class:`~meshd.context.TapObserver`).

    The request path calls :meth:`wants` for every request while a tap is active: one clock
    read and one comparison while no tap has a token (most requests, since taps are rate
    bound), the taps' filters while one has. :meth:`observe` keeps the record as it is; the
    wire events are built in :meth:`take_events`, once per report.
    """

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
        #: (tap id, wall-clock time, record) of the events kept since the last report.
        self._kept: deque[tuple[str, float, ExchangeRecord]] = deque()
        self._max_buffer = max_buffer
        #: :meth:`wants` is False until then: no tap has a token before, or the buffer is full
        #: (inf until :meth:`take_events`).
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
                if old.spec.filter != spec.filter:
                    old.match = _Match.of(spec.filter)
                old.spec = spec
                old.until = now + spec.remaining_s
                kept[spec.id] = old
            else:
                kept[spec.id] = _Tap(spec, _Match.of(spec.filter), now + spec.remaining_s, 1.0, now)
        self._taps = kept
        self._quiet_until = 0.0

    def wants(self, source: str, destination: str, method: str, code: int, target: bytes) -> bool:
        """Some active tap has a token left and matches this exchange, and the buffer has
        room (else the request is not looked at any further: no record is made for it)."""
        now = self._clock()
        if now < self._quiet_until:
            return False
        matched = False
        # The filter first: it is what most requests fail when a tap is narrow, and its
        # comparisons cost less than refilling the bucket.
        for tap in self._taps.values():
            if tap.until > now and tap.match(source, destination, method, code, target):
                if tap.ready(now):
                    return True
                matched = True
        if matched:
            # Matching taps are out of tokens: nothing to look at until the first is back.
            self._quiet(now)
        return False

    def observe(self, record: ExchangeRecord) -> None:
        """Keep ``record`` as an event of every active tap it matches, within their rates."""
        now = self._clock()
        fields = (record.source, record.destination, record.method, record.code, record.target)
        for tap in self._taps.values():
            if tap.until <= now or not tap.match(*fields):
                continue
            if not tap.take(now) or len(self._kept) >= self._max_buffer:
                self.dropped += 1
                continue
            self.sampled += 1
            self._kept.append((tap.spec.id, self._wall(), record))
        self._quiet(now)

    def take_events(self) -> list[SidecarTapEvent]:
        """The events kept since the last call (built now, off the request path)."""
        events = [self._event(*kept) for kept in self._kept]
        self._kept.clear()
        self._quiet_until = 0.0  # the buffer has room again
        return events

    def _quiet(self, now: float) -> None:
        """:meth:`wants` says no until the first live tap's next token, or, with the buffer
        full, until the next :meth:`take_events`."""
        if len(self._kept) >= self._max_buffer:
            self._quiet_until = math.inf
            return
        self._quiet_until = min(
            (t.next_token(now) for t in self._taps.values() if t.until > now),
            default=math.inf,
        )

    @staticmethod
    def _event(tap_id: str, ts: float, rec: ExchangeRecord) -> SidecarTapEvent:
        traceparent = rec.traceparent_out or rec.traceparent_in
        trace_id = traceparent[3:35].decode("ascii", "replace") if traceparent else ""
        return SidecarTapEvent(
            tap_id=tap_id,
            ts=ts,
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
