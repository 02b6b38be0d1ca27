"""Per-endpoint load the balancers read: requests in flight and a peak-EWMA latency estimate.

Sans-IO: the clock is injected. A :class:`LoadBook` is shared by every balancer of one
cluster and handed on to the next snapshot's cluster with :meth:`LoadBook.adopt`, so the
estimates and in-flight counts of endpoints that stay survive a snapshot update. Endpoints
are keyed by address (host, port): two snapshots' equal endpoints are the same endpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from meshcore.model import Endpoint

__all__ = [
    "DEFAULT_DECAY_S",
    "DEFAULT_RTT_S",
    "FAILURE_PENALTY_S",
    "Addr",
    "EndpointLoad",
    "LoadBook",
    "addr",
]

#: An endpoint's identity across snapshots.
Addr = tuple[str, int]
#: Time constant of the latency average (Linkerd's default): an old sample's weight falls to
#: 1/e after 10 s, and an idle endpoint's estimate decays towards zero at the same pace, so
#: an endpoint that was slow once is tried again later.
DEFAULT_DECAY_S = 10.0
#: The latency assumed for an endpoint without a sample yet: low enough that a new endpoint
#: gets tried soon, high enough not to flood it.
DEFAULT_RTT_S = 0.03
#: The latency recorded for a try that got no response (connect failure, reset, timeout):
#: failing fast must not look fast.
FAILURE_PENALTY_S = 1.0


def addr(endpoint: Endpoint) -> Addr:
    """The address ``endpoint`` is known by in a :class:`LoadBook`."""
    return (endpoint.host, endpoint.port)


class EndpointLoad:
    """Mutable load of one endpoint (as seen by this sidecar)."""

    __slots__ = ("in_flight", "rtt_s", "stamp")

    def __init__(self) -> None:
        #: Requests started and not finished.
        self.in_flight = 0
        #: Peak-EWMA latency in seconds as of :attr:`stamp`; None until the first sample.
        self.rtt_s: float | None = None
        #: Clock reading of the last sample.
        self.stamp = 0.0


class LoadBook:
    """The :class:`EndpointLoad` of each endpoint of a cluster, by address."""

    __slots__ = ("_loads", "clock", "decay_s", "default_rtt_s")

    def __init__(
        self,
        endpoints: Iterable[Endpoint] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        decay_s: float = DEFAULT_DECAY_S,
        default_rtt_s: float = DEFAULT_RTT_S,
    ) -> None:
        self.clock = clock
        self.decay_s = decay_s
        self.default_rtt_s = default_rtt_s
        self._loads: dict[Addr, EndpointLoad] = {addr(e): EndpointLoad() for e in endpoints}

    def adopt(self, endpoints: Iterable[Endpoint]) -> LoadBook:
        """A book for ``endpoints`` that shares this one's state of the endpoints that stay
        (the very same objects, so requests still finishing on the old snapshot count too)."""
        book = LoadBook(clock=self.clock, decay_s=self.decay_s, default_rtt_s=self.default_rtt_s)
        for endpoint in endpoints:
            key = addr(endpoint)
            book._loads[key] = self._loads.get(key) or EndpointLoad()
        return book

    def get(self, endpoint: Endpoint) -> EndpointLoad:
        """The load of ``endpoint``; an endpoint not in the book gets a fresh entry."""
        key = (endpoint.host, endpoint.port)
        load = self._loads.get(key)
        if load is None:
            load = self._loads[key] = EndpointLoad()
        return load

    def find(self, endpoint: Endpoint) -> EndpointLoad | None:
        """The load of ``endpoint``, or None when it is not in the book."""
        return self._loads.get((endpoint.host, endpoint.port))

    def started(self, endpoint: Endpoint) -> None:
        """A request began on ``endpoint``."""
        self.get(endpoint).in_flight += 1

    def finished(self, endpoint: Endpoint) -> None:
        """A request on ``endpoint`` ended; clamped at zero (it may have started elsewhere)."""
        load = self.find(endpoint)
        if load is not None and load.in_flight > 0:
            load.in_flight -= 1

    def observe(self, endpoint: Endpoint, latency_s: float, *, failed: bool = False) -> None:
        """Feed one try's latency into the endpoint's estimate (peak-sensitive EWMA).

        A sample above the estimate replaces it at once (a slowdown shows immediately); a
        lower one is averaged in with a weight that grows with the time since the last
        sample. ``failed``: no response came; at least :data:`FAILURE_PENALTY_S` is recorded.
        """
        self.sample(self.get(endpoint), latency_s, self.clock(), failed=failed)

    def sample(
        self, load: EndpointLoad, latency_s: float, now: float, *, failed: bool = False
    ) -> None:
        """:meth:`observe` for a load already looked up, at clock reading ``now``."""
        if failed and latency_s < FAILURE_PENALTY_S:
            latency_s = FAILURE_PENALTY_S
        elif latency_s < 0.0:
            latency_s = 0.0
        estimate = load.rtt_s
        if estimate is None or latency_s > estimate:
            load.rtt_s = latency_s
        else:
            decay = math.exp(-max(now - load.stamp, 0.0) / self.decay_s)
            load.rtt_s = estimate * decay + latency_s * (1.0 - decay)
        load.stamp = now

    def latency(self, load: EndpointLoad, now: float | None = None) -> float:
        """The current estimate: the last one decayed towards zero since its sample, or the
        default for an endpoint without samples."""
        estimate = load.rtt_s
        if estimate is None:
            return self.default_rtt_s
        if now is None:
            now = self.clock()
        elapsed = now - load.stamp
        if elapsed <= 0.0:
            return estimate
        return estimate * math.exp(-elapsed / self.decay_s)

    def cost(self, load: EndpointLoad, weight: int, now: float) -> float:
        """Linkerd's cost: latency x (requests in flight + 1), divided by the weight."""
        return self.latency(load, now) * (load.in_flight + 1) / weight
