"""Load balancers: pick one endpoint of a fixed endpoint set for each request.

Sans-IO and synchronous. A balancer is built for one fixed endpoint set and is cheap to build;
:class:`~meshd.cluster.selector.EndpointSelector` builds one per group of usable endpoints
(priority tier, zone) and rebuilds them when endpoint health changes.

Policies: ``round_robin`` (smooth weighted), ``random`` (weighted), ``least_request`` (P2C on
requests in flight), ``ewma`` (P2C on peak-EWMA latency x load, :mod:`.lb_ewma`),
``ring_hash`` and ``maglev`` (consistent hashing of a request key, :mod:`.lb_hash`).
Load-aware balancers read a shared :class:`~meshd.cluster.lb_load.LoadBook`; the caller
reports each request's start and end (:meth:`Balancer.started`, :meth:`Balancer.finished`)
there or through the balancer.
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
from meshd.cluster.lb_ewma import PeakEwma
from meshd.cluster.lb_hash import HashTables, Maglev, RingHash
from meshd.cluster.lb_load import LoadBook

__all__ = [
    "HASH_POLICIES",
    "Balancer",
    "LbPolicy",
    "LeastRequest",
    "Maglev",
    "PeakEwma",
    "RingHash",
    "RoundRobin",
    "WeightedRandom",
    "make_balancer",
]

#: Policies that pick by a request key (a request without one goes to a random endpoint).
HASH_POLICIES: frozenset[LbPolicy] = frozenset({"ring_hash", "maglev"})


class Balancer(Protocol):
    """Chooses endpoints of one fixed endpoint set."""

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The endpoint set, in order."""
        ...

    def pick(self, key: int | None = None) -> Endpoint | None:
        """The endpoint for the next request, or None when there are no endpoints.

        ``key``: the request's 64-bit hash for the hashing policies (others ignore it);
        None: no key, a random endpoint.
        """
        ...

    def started(self, endpoint: Endpoint) -> None:
        """A request began on ``endpoint`` (one that :meth:`pick` returned)."""
        ...

    def finished(self, endpoint: Endpoint, latency_s: float | None = None) -> None:
        """A request that :meth:`started` on ``endpoint`` ended, however it ended;
        ``latency_s``: how long it took, for the latency-aware policy."""
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

    def pick(self, key: int | None = None) -> Endpoint | None:
        return self._endpoint

    def started(self, endpoint: Endpoint) -> None:
        pass

    def finished(self, endpoint: Endpoint, latency_s: float | None = None) -> None:
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

    def pick(self, key: int | None = None) -> Endpoint | None:
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

    def finished(self, endpoint: Endpoint, latency_s: float | None = None) -> None:
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

    def pick(self, key: int | None = None) -> Endpoint | None:
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

    def finished(self, endpoint: Endpoint, latency_s: float | None = None) -> None:
        """Ignored: picks do not depend on load."""


class LeastRequest:
    """Power of two choices (Envoy's P2C): of two random endpoints, the less loaded one.

    Load is requests in flight (from the :class:`LoadBook`) divided by weight. With equal
    weights the two candidates are distinct and drawn uniformly; otherwise each is drawn in
    proportion to its weight, so without concurrency traffic still splits by weight. Ties go
    to the first candidate, which is itself random.
    """

    __slots__ = ("_book", "_loads", "_random", "_rng", "_weighted", "_weights", "endpoints")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        rng: random.Random | None = None,
        book: LoadBook | None = None,
    ) -> None:
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self._rng = _new_rng(rng)
        self._book = book if book is not None else LoadBook(self.endpoints)
        self._random = WeightedRandom(self.endpoints, rng=self._rng)
        self._weights = tuple(e.weight for e in self.endpoints)
        self._weighted = len(set(self._weights)) > 1
        # Equal endpoints (same address) listed twice share one load.
        self._loads = tuple(self._book.get(e) for e in self.endpoints)

    def active(self, endpoint: Endpoint) -> int:
        """Requests in flight on ``endpoint`` as far as this balancer knows."""
        load = self._book.find(endpoint)
        return 0 if load is None else load.in_flight

    def pick(self, key: int | None = None) -> Endpoint | None:
        """The less loaded of two random endpoints, or None when there are none."""
        endpoints = self.endpoints
        count = len(endpoints)
        if count <= 1:
            return endpoints[0] if endpoints else None
        loads = self._loads
        if self._weighted:
            draw = self._random._draw
            i = draw()
            j = draw()
            weights = self._weights
            # in_flight/weight compared without division; ties (and i == j) keep the first.
            if loads[i].in_flight * weights[j] <= loads[j].in_flight * weights[i]:
                return endpoints[i]
            return endpoints[j]
        rnd = self._rng.random
        i = int(rnd() * count)
        j = int(rnd() * (count - 1))
        if j >= i:
            j += 1
        return endpoints[i] if loads[i].in_flight <= loads[j].in_flight else endpoints[j]

    def started(self, endpoint: Endpoint) -> None:
        """Count a request in flight on ``endpoint``; unknown endpoints are ignored."""
        load = self._book.find(endpoint)
        if load is not None:
            load.in_flight += 1

    def finished(self, endpoint: Endpoint, latency_s: float | None = None) -> None:
        """Count a request on ``endpoint`` as done (clamped at zero: a request may have
        started on a balancer this one replaced)."""
        self._book.finished(endpoint)


def make_balancer(
    policy: LbPolicy,
    endpoints: Sequence[Endpoint],
    *,
    rng: random.Random | None = None,
    book: LoadBook | None = None,
    tables: HashTables | None = None,
) -> Balancer:
    """A balancer of ``policy`` over ``endpoints`` (zero or one endpoint: a trivial one).

    ``book``: the cluster's shared load (``least_request``, ``ewma``); None: a private one.
    ``tables``: recently built hash tables to reuse (``ring_hash``, ``maglev``).
    """
    if len(endpoints) <= 1:
        return _Fixed(endpoints)
    if policy == "round_robin":
        return RoundRobin(endpoints)
    if policy == "random":
        return WeightedRandom(endpoints, rng=rng)
    if policy == "least_request":
        return LeastRequest(endpoints, rng=rng, book=book)
    if policy == "ewma":
        return PeakEwma(endpoints, rng=rng, book=book)
    if policy == "ring_hash":
        return RingHash(endpoints, rng=rng, tables=tables)
    if policy == "maglev":
        return Maglev(endpoints, rng=rng, tables=tables)
    raise ValueError(f"unknown load balancing policy: {policy!r}")
