"""Load balancers: pick one endpoint of a cluster for each request.

Sans-IO and synchronous. A balancer is built for one fixed endpoint set and is cheap to build,
so excluding endpoints (ejected by outlier detection, failing health checks) means building a
new balancer over the remaining ones with :func:`make_balancer`.

The caller reports each request's start and end with :meth:`Balancer.started` and
:meth:`Balancer.finished`; only :class:`LeastRequest` uses them, the others ignore them.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence
from functools import reduce
from math import gcd
from typing import Protocol

from meshcore.model import Endpoint
from meshcore.model.policy import LbPolicy

__all__ = [
    "Balancer",
    "LbPolicy",
    "LeastRequest",
    "RoundRobin",
    "WeightedRandom",
    "make_balancer",
]


class Balancer(Protocol):
    """Chooses endpoints of one fixed endpoint set."""

    def pick(self) -> Endpoint | None:
        """The endpoint for the next request, or None when there are no endpoints."""
        ...

    def started(self, endpoint: Endpoint) -> None:
        """A request began on ``endpoint`` (one that :meth:`pick` returned)."""
        ...

    def finished(self, endpoint: Endpoint) -> None:
        """A request that :meth:`started` on ``endpoint`` ended, however it ended."""
        ...


def _new_rng(rng: random.Random | None) -> random.Random:
    return rng if rng is not None else random.Random()  # noqa: S311 - spreading load, not crypto


class _Fixed:
    """Zero or one endpoint: nothing to choose."""

    __slots__ = ("_endpoint", "endpoints")

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        assert len(endpoints) <= 1
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self._endpoint = endpoints[0] if endpoints else None

    def pick(self) -> Endpoint | None:
        return self._endpoint

    def started(self, endpoint: Endpoint) -> None:
        pass

    def finished(self, endpoint: Endpoint) -> None:
        pass


class RoundRobin:
    """Smooth weighted round robin (nginx's algorithm); deterministic.

    With weights 5, 1, 1 for a, b, c each cycle is ``a a b a c a a``: heavier endpoints get
    proportionally more requests, interleaved rather than in bursts. Equal weights are a plain
    rotation.
    """

    __slots__ = ("_current", "_next", "_total", "_weights", "endpoints")

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        weights = [e.weight for e in self.endpoints]
        # Dividing by the gcd keeps the same sequence with smaller numbers.
        divisor = reduce(gcd, weights, 0) or 1
        #: None when all weights are equal: then a rotation index is all the state needed.
        self._weights: tuple[int, ...] | None = (
            tuple(w // divisor for w in weights) if len(set(weights)) > 1 else None
        )
        self._total = sum(self._weights) if self._weights else 0
        self._current = [0] * len(self.endpoints)
        self._next = 0

    def pick(self) -> Endpoint | None:
        """The next endpoint of the sequence, or None when there are none."""
        endpoints = self.endpoints
        weights = self._weights
        if weights is None:
            if not endpoints:
                return None
            index = self._next
            self._next = index + 1 if index + 1 < len(endpoints) else 0
            return endpoints[index]
        # Every endpoint gains its weight; the one now ahead wins and pays the total back.
        current = self._current
        best = 0
        best_value = current[0] + weights[0]
        current[0] = best_value
        for i in range(1, len(weights)):
            value = current[i] + weights[i]
            current[i] = value
            if value > best_value:
                best, best_value = i, value
        current[best] = best_value - self._total
        return endpoints[best]

    def started(self, endpoint: Endpoint) -> None:
        """Ignored: the sequence does not depend on load."""

    def finished(self, endpoint: Endpoint) -> None:
        """Ignored: the sequence does not depend on load."""


class WeightedRandom:
    """Each pick independent, with probability proportional to the endpoint's weight."""

    __slots__ = ("_cumulative", "_equal", "_last", "_rng", "_total", "endpoints")

    def __init__(self, endpoints: Sequence[Endpoint], *, rng: random.Random | None = None) -> None:
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self._rng = _new_rng(rng)
        self._equal = len({e.weight for e in self.endpoints}) <= 1
        cumulative: list[int] = []
        total = 0
        for endpoint in self.endpoints:
            total += endpoint.weight
            cumulative.append(total)
        self._cumulative = tuple(cumulative)
        self._total = float(total)
        self._last = len(self.endpoints) - 1

    def pick(self) -> Endpoint | None:
        """A random endpoint, or None when there are none."""
        endpoints = self.endpoints
        if len(endpoints) <= 1:
            return endpoints[0] if endpoints else None
        return endpoints[self._draw()]

    def _draw(self) -> int:
        # Needs at least one endpoint. random() < 1, so the products stay below the bound.
        if self._equal:
            return int(self._rng.random() * len(self.endpoints))
        point = self._rng.random() * self._total
        return bisect_right(self._cumulative, point, 0, self._last)

    def started(self, endpoint: Endpoint) -> None:
        """Ignored: picks do not depend on load."""

    def finished(self, endpoint: Endpoint) -> None:
        """Ignored: picks do not depend on load."""


class LeastRequest:
    """Power of two choices (Envoy's P2C): of two random endpoints, the less loaded one.

    Load is active requests divided by weight. With equal weights the two candidates are
    distinct and drawn uniformly; otherwise each is drawn in proportion to its weight, so
    without concurrency traffic still splits by weight. Ties go to the first candidate, which
    is itself random.
    """

    __slots__ = (
        "_active",
        "_by_id",
        "_by_value",
        "_random",
        "_rng",
        "_slot",
        "_weighted",
        "_weights",
        "endpoints",
    )

    def __init__(self, endpoints: Sequence[Endpoint], *, rng: random.Random | None = None) -> None:
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self._rng = _new_rng(rng)
        self._random = WeightedRandom(self.endpoints, rng=self._rng)
        self._weights = tuple(e.weight for e in self.endpoints)
        self._weighted = len(set(self._weights)) > 1
        self._active = [0] * len(self.endpoints)
        # Lookups by identity are several times cheaper than hashing a pydantic model; the
        # value lookup covers an equal endpoint from elsewhere (e.g. another snapshot).
        # Equal endpoints listed twice share a counter.
        self._by_value: dict[Endpoint, int] = {}
        for i, endpoint in enumerate(self.endpoints):
            self._by_value.setdefault(endpoint, i)
        self._by_id = {id(e): self._by_value[e] for e in self.endpoints}
        #: Position in ``endpoints`` -> counter index.
        self._slot = tuple(self._by_value[e] for e in self.endpoints)

    def active(self, endpoint: Endpoint) -> int:
        """Requests in flight on ``endpoint`` as far as this balancer knows."""
        index = self._index(endpoint)
        return 0 if index is None else self._active[index]

    def pick(self) -> Endpoint | None:
        """The less loaded of two random endpoints, or None when there are none."""
        endpoints = self.endpoints
        count = len(endpoints)
        if count <= 1:
            return endpoints[0] if endpoints else None
        active = self._active
        if self._weighted:
            draw = self._random._draw
            i = draw()
            j = draw()
            weights = self._weights
            slot = self._slot
            # active/weight compared without division; ties (and i == j) keep the first.
            if active[slot[i]] * weights[j] <= active[slot[j]] * weights[i]:
                return endpoints[i]
            return endpoints[j]
        rnd = self._rng.random
        i = int(rnd() * count)
        j = int(rnd() * (count - 1))
        if j >= i:
            j += 1
        slot = self._slot
        return endpoints[i] if active[slot[i]] <= active[slot[j]] else endpoints[j]

    def started(self, endpoint: Endpoint) -> None:
        """Count a request in flight on ``endpoint``; unknown endpoints are ignored."""
        index = self._index(endpoint)
        if index is not None:
            self._active[index] += 1

    def finished(self, endpoint: Endpoint) -> None:
        """Count a request on ``endpoint`` as done."""
        index = self._index(endpoint)
        # Clamped: a request may have started on a balancer this one replaced.
        if index is not None and self._active[index] > 0:
            self._active[index] -= 1

    def _index(self, endpoint: Endpoint) -> int | None:
        index = self._by_id.get(id(endpoint))
        if index is None:
            index = self._by_value.get(endpoint)
        return index


def make_balancer(
    policy: LbPolicy, endpoints: Sequence[Endpoint], *, rng: random.Random | None = None
) -> Balancer:
    """A balancer of ``policy`` over ``endpoints`` (zero or one endpoint: a trivial one)."""
    if len(endpoints) <= 1:
        return _Fixed(endpoints)
    if policy == "round_robin":
        return RoundRobin(endpoints)
    if policy == "random":
        return WeightedRandom(endpoints, rng=rng)
    if policy == "least_request":
        return LeastRequest(endpoints, rng=rng)
    raise ValueError(f"unknown load balancing policy: {policy!r}")
