"""Latency-aware balancing as Linkerd does it: power of two choices over peak EWMA cost."""

from __future__ import annotations

import random
from collections.abc import Sequence

from meshcore.model import Endpoint
from meshd.cluster.lb_load import LoadBook

__all__ = ["PeakEwma"]


class PeakEwma:
    """Of two distinct random endpoints, the one with the lower cost.

    Cost = latency estimate x (requests in flight + 1) / weight, read from the
    :class:`LoadBook` (see :meth:`LoadBook.observe` for the estimate: peak-sensitive, decaying
    with a 10 s time constant). An endpoint without samples costs the default latency, so new
    endpoints get tried; an idle slow endpoint's estimate decays, so it is tried again later.
    Ties go to the first candidate, which is itself random.
    """

    __slots__ = ("_book", "_loads", "_rng", "_weights", "endpoints")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        rng: random.Random | None = None,
        book: LoadBook | None = None,
    ) -> None:
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - not crypto
        self._book = book if book is not None else LoadBook(self.endpoints)
        self._loads = tuple(self._book.get(e) for e in self.endpoints)
        self._weights = tuple(e.weight for e in self.endpoints)

    def pick(self, key: int | None = None) -> Endpoint | None:
        """The cheaper of two random endpoints, or None when there are none."""
        endpoints = self.endpoints
        count = len(endpoints)
        if count <= 1:
            return endpoints[0] if endpoints else None
        rnd = self._rng.random
        i = int(rnd() * count)
        j = int(rnd() * (count - 1))
        if j >= i:
            j += 1
        book = self._book
        now = book.clock()
        loads = self._loads
        weights = self._weights
        if book.cost(loads[i], weights[i], now) <= book.cost(loads[j], weights[j], now):
            return endpoints[i]
        return endpoints[j]

    def cost(self, endpoint: Endpoint) -> float:
        """The current cost of ``endpoint`` (for tests and the admin view)."""
        return self._book.cost(self._book.get(endpoint), endpoint.weight, self._book.clock())

    def started(self, endpoint: Endpoint) -> None:
        """Count a request in flight on ``endpoint``; unknown endpoints are ignored."""
        load = self._book.find(endpoint)
        if load is not None:
            load.in_flight += 1

    def finished(self, endpoint: Endpoint, latency_s: float | None = None) -> None:
        """A request on ``endpoint`` ended; ``latency_s`` (if given) feeds its estimate."""
        self._book.finished(endpoint)
        if latency_s is not None:
            self._book.observe(endpoint, latency_s)
