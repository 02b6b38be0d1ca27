"""The window's parts: a bucket's rows and edges, per-sidecar counters, sums over a window.

Plain containers with ``__slots__`` (a full window holds tens of thousands of them); see
:mod:`controld.telemetry.window`.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from meshcore.api.report import LATENCY_BOUNDS_MS
from meshcore.api.telemetry import MAX_WINDOW_S, RESOLUTION_S

__all__ = ["COUNTERS", "SLOTS", "Bucket", "EdgeAcc", "Instance", "Row", "Sum", "percentile_ms"]

#: Buckets kept: the longest window, plus the one being filled.
SLOTS: Final = MAX_WINDOW_S // RESOLUTION_S + 1
_NBUCKETS: Final = len(LATENCY_BOUNDS_MS) + 1
#: Per-sidecar counters, in the order of their array slots.
COUNTERS: Final = (
    "retries",
    "overflows",
    "ejections",
    "rate_limited",
    "denied",
    "health_check_failures",
)
NCOUNTERS: Final = len(COUNTERS)
#: Error reasons kept per row; the rest are summed under ``other``.
_MAX_REASONS: Final = 16


class Row:
    """Requests of one row in one bucket."""

    __slots__ = ("errors", "hist", "reasons", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.hist = [0] * _NBUCKETS
        self.reasons: dict[str, int] = {}

    def add(self, requests: int, errors: dict[str, int], hist: Iterable[int]) -> None:
        """Merge one series of a report."""
        self.requests += requests
        reasons = self.reasons
        for reason, n in errors.items():
            self.errors += n
            key = reason if reason in reasons or len(reasons) < _MAX_REASONS else "other"
            reasons[key] = reasons.get(key, 0) + n
        own = self.hist
        for i, n in enumerate(hist):
            if i < _NBUCKETS:
                own[i] += n


class EdgeAcc:
    """One edge of the service graph in one bucket (or summed over a window)."""

    __slots__ = ("bytes", "failed", "mtls", "plain", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.failed = 0
        self.bytes = 0
        self.mtls = 0
        self.plain = 0


@dataclass(slots=True)
class Bucket:
    """Everything merged in one 10-second bucket."""

    routes: dict[tuple[str, str], Row] = field(default_factory=dict)
    endpoints: dict[tuple[str, str], Row] = field(default_factory=dict)
    edges: dict[tuple[str, str, str], EdgeAcc] = field(default_factory=dict)


class Instance:
    """One sidecar: its latest gauges and its counters per bucket (a ring of :data:`SLOTS`)."""

    __slots__ = (
        "cert_not_after",
        "counts",
        "dropped_series",
        "ejected",
        "last_contact",
        "proxy_id",
        "service",
        "snapshot_version",
        "stamps",
    )

    def __init__(self, proxy_id: str, service: str) -> None:
        self.proxy_id = proxy_id
        self.service = service
        self.last_contact = 0.0
        self.snapshot_version: int | None = None
        self.cert_not_after: float | None = None
        self.ejected: tuple[str, ...] = ()
        self.dropped_series = 0
        self.counts = array("q", bytes(8 * SLOTS * NCOUNTERS))
        self.stamps = array("q", [-1] * SLOTS)

    def add(self, slot: int, values: tuple[int, ...]) -> None:
        """Add a report's counters (in :data:`COUNTERS` order) to bucket ``slot``."""
        i = slot % SLOTS
        base = i * NCOUNTERS
        if self.stamps[i] != slot:
            self.stamps[i] = slot
            for k in range(NCOUNTERS):
                self.counts[base + k] = 0
        for k, v in enumerate(values):
            self.counts[base + k] += v

    def window_sums(self, first_slot: int) -> list[int]:
        """The counters summed over the buckets from ``first_slot`` on."""
        sums = [0] * NCOUNTERS
        for i, stamp in enumerate(self.stamps):
            if stamp >= first_slot:
                base = i * NCOUNTERS
                for k in range(NCOUNTERS):
                    sums[k] += self.counts[base + k]
        return sums


def percentile_ms(hist: list[int], q: float) -> float | None:
    """Upper bound (ms) of the histogram bucket holding the ``q`` quantile (None: empty).

    Observations above the last bound report twice the last bound.
    """
    total = sum(hist)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0
    for i, n in enumerate(hist):
        cumulative += n
        if cumulative >= rank:
            return (
                float(LATENCY_BOUNDS_MS[i])
                if i < len(LATENCY_BOUNDS_MS)
                else float(LATENCY_BOUNDS_MS[-1] * 2)
            )
    return float(LATENCY_BOUNDS_MS[-1] * 2)


class Sum:
    """A row summed over the buckets of a window, with its per-bucket requests."""

    __slots__ = ("errors", "hist", "reasons", "requests", "series")

    def __init__(self, nslots: int) -> None:
        self.requests = 0
        self.errors = 0
        self.hist = [0] * _NBUCKETS
        self.reasons: dict[str, int] = {}
        self.series = [0] * nslots

    def add(self, index: int, row: Row) -> None:
        """Add ``row``, the bucket at ``index`` of the window."""
        self.requests += row.requests
        self.errors += row.errors
        self.series[index] += row.requests
        for i, n in enumerate(row.hist):
            self.hist[i] += n
        for reason, n in row.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n

    def stats(self, seconds: float) -> dict[str, object]:
        """The :class:`~meshcore.api.telemetry.TrafficStats` fields; rates over ``seconds``."""
        requests = self.requests
        return {
            "requests": requests,
            "errors": self.errors,
            "rps": requests / seconds,
            "success_rate": (requests - self.errors) / requests if requests else None,
            "p50_ms": percentile_ms(self.hist, 0.50),
            "p95_ms": percentile_ms(self.hist, 0.95),
            "p99_ms": percentile_ms(self.hist, 0.99),
            "rps_series": tuple(n / RESOLUTION_S for n in self.series),
            "errors_by_reason": dict(sorted(self.reasons.items())),
        }
