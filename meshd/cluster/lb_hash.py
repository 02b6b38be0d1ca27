"""Consistent hashing balancers: a request key always maps to the same endpoint.

Both hash a 64-bit request key (:func:`hash_key`) onto endpoints by weight, and both are
consistent: adding or removing one of N endpoints moves about 1/N of the keys (only keys of
the removed endpoint, or keys the added one takes over). Endpoints are placed by address
(``host:port``), so the same endpoint lands at the same place in every snapshot. A request
without a key goes to a random endpoint (weighted).

The tables are index tables into the endpoint tuple; :class:`HashTables` keeps the last few
so that a health change flapping back and forth doesn't rebuild them each time.
"""

from __future__ import annotations

import random
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from meshcore.model import Endpoint

try:
    # What hashlib.blake2b is: CPython's own BLAKE2, never OpenSSL's. Not through hashlib,
    # which loads OpenSSL's libcrypto (~3.5 MB resident) when imported (issue 15).
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - a Python built without its own BLAKE2
    from hashlib import blake2b

__all__ = [
    "MAGLEV_TABLE_SIZE",
    "RING_POINTS_PER_ENDPOINT",
    "HashTables",
    "Maglev",
    "RingHash",
    "hash_key",
]

_MASK64 = (1 << 64) - 1
#: Ring points of an endpoint of average weight (Ketama uses 160): the share of keys of each
#: endpoint stays within about +-10% of its weight's share.
RING_POINTS_PER_ENDPOINT = 160
#: Cap on the ring's size whatever the weights (bounds memory and build time).
RING_MAX_POINTS = 1 << 17
#: Maglev's lookup table size: a prime, much larger than the endpoint count (as Envoy).
#: Fixed, so that a key's slot never changes when endpoints come and go.
MAGLEV_TABLE_SIZE = 65537


def hash_key(data: bytes) -> int:
    """The 64-bit key of a request's hash input (header value, cookie value, source IP)."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def _name(endpoint: Endpoint) -> bytes:
    return f"{endpoint.host}:{endpoint.port}".encode()


def _signature(endpoints: Sequence[Endpoint]) -> tuple[tuple[str, int, int], ...]:
    return tuple((e.host, e.port, e.weight) for e in endpoints)


class HashTables:
    """The last few hash tables built, by endpoint set (address and weight, in order)."""

    __slots__ = ("_tables", "limit")

    def __init__(self, limit: int = 8) -> None:
        self.limit = limit
        self._tables: dict[tuple[object, ...], object] = {}

    def get(self, kind: str, endpoints: Sequence[Endpoint]) -> object | None:
        """A table of ``kind`` built for the same endpoint set, or None."""
        return self._tables.get((kind, _signature(endpoints)))

    def put(self, kind: str, endpoints: Sequence[Endpoint], table: object) -> None:
        """Remember ``table``; the oldest goes beyond :attr:`limit`."""
        key = (kind, _signature(endpoints))
        self._tables.pop(key, None)
        self._tables[key] = table
        while len(self._tables) > self.limit:
            del self._tables[next(iter(self._tables))]


class _RandomFallback:
    """Weighted random choice of an index, for requests without a key."""

    __slots__ = ("_cumulative", "_rng", "_total")

    def __init__(self, endpoints: Sequence[Endpoint], rng: random.Random | None) -> None:
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - not crypto
        cumulative: list[int] = []
        total = 0
        for endpoint in endpoints:
            total += endpoint.weight
            cumulative.append(total)
        self._cumulative = cumulative
        self._total = total

    def draw(self) -> int:
        point = self._rng.random() * self._total
        return bisect_right(self._cumulative, point, 0, len(self._cumulative) - 1)


_Ring = tuple[list[int], list[int]]


class RingHash:
    """Ketama-style ring: each endpoint owns points on a 64-bit ring, about
    :data:`RING_POINTS_PER_ENDPOINT` x weight / mean weight of them; a key goes to the owner
    of the first point at or after it (wrapping around)."""

    __slots__ = ("_owners", "_points", "_random", "endpoints")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        rng: random.Random | None = None,
        tables: HashTables | None = None,
    ) -> None:
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self._random = _RandomFallback(self.endpoints, rng)
        cached = tables.get("ring", self.endpoints) if tables is not None else None
        ring: _Ring
        if cached is None:
            ring = self._build(self.endpoints)
            if tables is not None:
                tables.put("ring", self.endpoints, ring)
        else:
            ring = cached  # type: ignore[assignment]
        self._points: list[int] = ring[0]
        self._owners: list[int] = ring[1]

    @staticmethod
    def _build(endpoints: Sequence[Endpoint]) -> _Ring:
        if not endpoints:
            return [], []
        total = sum(e.weight for e in endpoints)
        per_weight = RING_POINTS_PER_ENDPOINT * len(endpoints) / total
        if total * per_weight > RING_MAX_POINTS:
            per_weight = RING_MAX_POINTS / total
        pairs: list[tuple[int, int]] = []
        for index, endpoint in enumerate(endpoints):
            count = max(1, round(endpoint.weight * per_weight))
            name = _name(endpoint) + b"-"
            block = 0
            while count > 0:
                # One digest gives four points (as Ketama's MD5 does).
                digest = blake2b(name + str(block).encode(), digest_size=32).digest()
                for k in range(min(4, count)):
                    pairs.append((int.from_bytes(digest[8 * k : 8 * k + 8], "big"), index))
                count -= 4
                block += 1
        pairs.sort()
        return [p for p, _ in pairs], [i for _, i in pairs]

    def pick(self, key: int | None = None) -> Endpoint | None:
        """The endpoint owning ``key``; a random one without a key; None when empty."""
        endpoints = self.endpoints
        if len(endpoints) <= 1:
            return endpoints[0] if endpoints else None
        if key is None:
            return endpoints[self._random.draw()]
        index = bisect_left(self._points, key & _MASK64)
        if index == len(self._points):
            index = 0
        return endpoints[self._owners[index]]

    def started(self, endpoint: Endpoint) -> None:
        """Ignored: picks depend on the key only."""

    def finished(self, endpoint: Endpoint, latency_s: float | None = None) -> None:
        """Ignored: picks depend on the key only."""


class Maglev:
    """Google's Maglev lookup table (weighted as Envoy does): each endpoint fills table
    slots in its own pseudo-random order, in turns proportional to its weight; a key goes to
    the endpoint of slot ``key % table size``."""

    __slots__ = ("_random", "_size", "_table", "endpoints")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        rng: random.Random | None = None,
        tables: HashTables | None = None,
        table_size: int = MAGLEV_TABLE_SIZE,
    ) -> None:
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self._random = _RandomFallback(self.endpoints, rng)
        self._size = table_size
        kind = f"maglev{table_size}"
        cached = tables.get(kind, self.endpoints) if tables is not None else None
        table: list[int]
        if cached is None:
            table = self._build(self.endpoints, table_size)
            if tables is not None:
                tables.put(kind, self.endpoints, table)
        else:
            table = cached  # type: ignore[assignment]
        self._table = table

    @staticmethod
    def _build(endpoints: Sequence[Endpoint], size: int) -> list[int]:
        count = len(endpoints)
        if count == 0:
            return []
        # Filled in address order, so the table doesn't depend on the snapshot's order.
        order = sorted(range(count), key=lambda i: _name(endpoints[i]))
        offsets: list[int] = []
        skips: list[int] = []
        for i in order:
            digest = blake2b(_name(endpoints[i]), digest_size=16).digest()
            offsets.append(int.from_bytes(digest[:8], "big") % size)
            skips.append(int.from_bytes(digest[8:], "big") % (size - 1) + 1)
        weights = [endpoints[i].weight for i in order]
        top = max(weights)
        table = [-1] * size
        nexts = [0] * count
        # An endpoint takes a turn when iteration x weight reaches its target; each turn
        # raises the target by the top weight: the heaviest takes every turn, one of a third
        # of its weight every third.
        targets = [0] * count
        filled = 0
        iteration = 1
        while filled < size:
            for i in range(count):
                if iteration * weights[i] < targets[i]:
                    continue
                targets[i] += top
                offset, skip, step = offsets[i], skips[i], nexts[i]
                slot = (offset + skip * step) % size
                while table[slot] >= 0:
                    step += 1
                    slot = (offset + skip * step) % size
                table[slot] = i
                nexts[i] = step + 1
                filled += 1
                if filled == size:
                    break
            iteration += 1
        return [order[i] for i in table]

    def pick(self, key: int | None = None) -> Endpoint | None:
        """The endpoint of ``key``'s slot; a random one without a key; None when empty."""
        endpoints = self.endpoints
        if len(endpoints) <= 1:
            return endpoints[0] if endpoints else None
        if key is None:
            return endpoints[self._random.draw()]
        return endpoints[self._table[key % self._size]]

    def started(self, endpoint: Endpoint) -> None:
        """Ignored: picks depend on the key only."""

    def finished(self, endpoint: Endpoint, latency_s: float | None = None) -> None:
        """Ignored: picks depend on the key only."""
