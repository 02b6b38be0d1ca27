"""Outlier detection (Envoy's, passive): eject endpoints that keep failing, for a while.

Sans-IO: the detector is fed each try's outcome (:meth:`OutlierDetector.report`) and the time
(:meth:`OutlierDetector.tick`, due at :attr:`OutlierDetector.next_deadline`), and answers
with ejections and returns. Endpoints are keyed by address ``(host, port)``.

Outcomes, as in Envoy with local-origin errors not split off:

- status 0 (no response: connect failure, reset, timeout) is a *local-origin failure*; it
  counts towards ``consecutive_local_origin_failures``, ``consecutive_gateway_errors`` and
  ``consecutive_5xx``;
- 502, 503, 504 count towards ``consecutive_gateway_errors`` and ``consecutive_5xx``; any
  other 5xx towards ``consecutive_5xx`` only (and ends a run of gateway errors);
- any response ends a run of local-origin failures; a non-5xx response ends every run.

Reaching a threshold ejects the endpoint for ``base_ejection_s`` times the number of times it
was ejected (capped at ``max_ejection_s``, or at ``base_ejection_s`` if that is larger). An
interval without an ejection, spent back in service, lowers that number by one again.

Every ``interval_s``, with ``success_rate`` set, endpoints with at least ``request_volume``
tries in the interval are compared when there are at least ``minimum_hosts`` of them: those
whose success rate is below ``mean - stdev_factor * stdev`` are ejected (cause
``success_rate``).

At most ``max_ejection_percent`` of the endpoints are ejected at once (rounded down), except
that one endpoint may always be ejected when the percentage is above zero and none is, as
Envoy does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from meshcore.model.policy import OutlierDetection

__all__ = ["Address", "Ejection", "EndpointOutliers", "OutlierDetector", "TickResult"]

#: An endpoint's address: ``(host, port)``.
Address = tuple[str, int]

_GATEWAY = frozenset((502, 503, 504))


@dataclass(slots=True)
class EndpointOutliers:
    """What the detector knows of one endpoint."""

    consecutive_5xx: int = 0
    consecutive_gateway_errors: int = 0
    consecutive_local_origin_failures: int = 0
    #: Ejected until this time (None: in service).
    ejected_until: float | None = None
    #: Ejections so far (lowered again by quiet intervals); the ejection time's multiplier.
    times_ejected: int = 0
    #: When it last came back (or was last ejected); quiet intervals count from here.
    last_change: float = 0.0
    #: Tries and successes in the current success-rate interval.
    requests: int = 0
    successes: int = 0

    def reset_counts(self) -> None:
        """Forget the runs of failures."""
        self.consecutive_5xx = 0
        self.consecutive_gateway_errors = 0
        self.consecutive_local_origin_failures = 0

    def describe(self, now: float, wall_now: float) -> dict[str, object]:
        """State for the admin API; ``now`` is the detector's clock, ``wall_now`` the same
        instant in Unix time (for ``ejected_until``)."""
        until = self.ejected_until
        left = None if until is None else max(until - now, 0.0)
        return {
            "ejected": until is not None,
            "ejected_for_s": None if left is None else round(left, 3),
            "ejected_until": None
            if left is None
            else datetime.fromtimestamp(wall_now + left, UTC).isoformat(timespec="milliseconds"),
            "times_ejected": self.times_ejected,
            "consecutive_5xx": self.consecutive_5xx,
            "consecutive_gateway_errors": self.consecutive_gateway_errors,
            "consecutive_local_origin_failures": self.consecutive_local_origin_failures,
        }


@dataclass(frozen=True, slots=True)
class Ejection:
    """An endpoint taken out of service."""

    address: Address
    cause: str
    until: float


@dataclass(slots=True)
class TickResult:
    """What a :meth:`OutlierDetector.tick` changed."""

    ejections: list[Ejection] = field(default_factory=list)
    returned: list[Address] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.ejections or self.returned)


class OutlierDetector:
    """Outlier state of one cluster's endpoints."""

    __slots__ = ("_ejected", "_next_interval", "config", "endpoints")

    def __init__(self, config: OutlierDetection, addresses: Iterable[Address], now: float) -> None:
        self.config = config
        self.endpoints: dict[Address, EndpointOutliers] = {
            a: EndpointOutliers(last_change=now) for a in addresses
        }
        self._ejected: frozenset[Address] = frozenset()
        self._next_interval = now + config.interval_s

    @property
    def ejected(self) -> frozenset[Address]:
        """Endpoints out of service now (a new object whenever it changes)."""
        return self._ejected

    @property
    def next_deadline(self) -> float:
        """When :meth:`tick` has work next: the interval's end or the first return."""
        deadline = self._next_interval
        for address in self._ejected:
            until = self.endpoints[address].ejected_until
            if until is not None and until < deadline:
                deadline = until
        return deadline

    def update(self, config: OutlierDetection, addresses: Iterable[Address], now: float) -> bool:
        """New configuration or endpoint set; endpoints that stay keep their state.

        True if the ejected set changed (an ejected endpoint left the cluster).
        """
        if config.interval_s != self.config.interval_s:
            self._next_interval = now + config.interval_s
        self.config = config
        old = self.endpoints
        self.endpoints = {a: old.get(a) or EndpointOutliers(last_change=now) for a in addresses}
        ejected = frozenset(a for a in self._ejected if a in self.endpoints)
        changed = ejected != self._ejected
        if changed:
            self._ejected = ejected
        return changed

    def _may_eject(self) -> bool:
        percent = self.config.max_ejection_percent
        if percent <= 0:
            return False
        ejected = len(self._ejected)
        return ejected == 0 or (ejected + 1) * 100 <= percent * len(self.endpoints)

    def _eject(self, address: Address, state: EndpointOutliers, cause: str, now: float) -> Ejection:
        config = self.config
        state.times_ejected += 1
        cap = max(config.max_ejection_s, config.base_ejection_s)
        state.ejected_until = now + min(config.base_ejection_s * state.times_ejected, cap)
        state.last_change = now
        state.reset_counts()
        self._ejected = self._ejected | {address}
        return Ejection(address, cause, state.ejected_until)

    def report(self, address: Address, status: int, now: float) -> Ejection | None:
        """One try's outcome on ``address``: a status, or 0 for no response."""
        state = self.endpoints.get(address)
        if state is None or state.ejected_until is not None:
            # Unknown (left the cluster) or ejected (a late answer): not counted.
            return None
        state.requests += 1
        if status and status < 500:
            state.successes += 1
            if state.consecutive_5xx or state.consecutive_local_origin_failures:
                state.reset_counts()
            state.consecutive_gateway_errors = 0
            return None
        config = self.config
        cause = None
        state.consecutive_5xx += 1
        if state.consecutive_5xx >= config.consecutive_5xx:
            cause = "consecutive_5xx"
        if status == 0 or status in _GATEWAY:
            state.consecutive_gateway_errors += 1
            if state.consecutive_gateway_errors >= config.consecutive_gateway_errors:
                cause = cause or "consecutive_gateway_errors"
        else:
            state.consecutive_gateway_errors = 0
        if status == 0:
            state.consecutive_local_origin_failures += 1
            if state.consecutive_local_origin_failures >= config.consecutive_local_origin_failures:
                cause = "consecutive_local_origin_failures"
        else:
            state.consecutive_local_origin_failures = 0
        if cause is None or not self._may_eject():
            return None
        return self._eject(address, state, cause, now)

    def tick(self, now: float) -> TickResult:
        """Return endpoints whose ejection is over and, at an interval's end, run the
        success-rate check and lower the ejection counts of quiet endpoints."""
        result = TickResult()
        for address in self._ejected:
            state = self.endpoints[address]
            if state.ejected_until is not None and state.ejected_until <= now:
                state.ejected_until = None
                state.last_change = now
                state.reset_counts()
                result.returned.append(address)
        if result.returned:
            self._ejected = self._ejected - frozenset(result.returned)
        if now >= self._next_interval:
            interval = self.config.interval_s
            # Whole intervals passed (a quiet cluster is not ticked for each).
            self._next_interval += interval * (1 + (now - self._next_interval) // interval)
            self._success_rate(now, result)
            for state in self.endpoints.values():
                quiet = state.ejected_until is None and now - state.last_change >= interval
                if quiet and state.times_ejected:
                    state.times_ejected -= 1
                    state.last_change = now
                state.requests = state.successes = 0
        return result

    def _success_rate(self, now: float, result: TickResult) -> None:
        rule = self.config.success_rate
        if rule is None:
            return
        rates = {
            a: s.successes / s.requests
            for a, s in self.endpoints.items()
            if s.ejected_until is None and s.requests >= rule.request_volume
        }
        if len(rates) < rule.minimum_hosts:
            return
        mean = sum(rates.values()) / len(rates)
        stdev = math.sqrt(sum((r - mean) ** 2 for r in rates.values()) / len(rates))
        threshold = mean - rule.stdev_factor * stdev
        for address, rate in sorted(rates.items(), key=lambda item: item[1]):
            if rate >= threshold or not self._may_eject():
                break
            result.ejections.append(
                self._eject(address, self.endpoints[address], "success_rate", now)
            )
