"""A set of keyed deadlines served by one task (TTL checks, session TTLs)."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import trio

__all__ = ["DeadlineQueue"]

K = TypeVar("K", bound=Hashable)


class DeadlineQueue(Generic[K]):
    """Keys with a deadline on Trio's clock; :meth:`run` calls back as each one passes.

    Setting a key again moves its deadline; stale heap entries are skipped lazily, so every
    operation is O(log n) and one task serves any number of timers.
    """

    def __init__(self) -> None:
        self._deadlines: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, key: object) -> bool:
        return key in self._deadlines

    def set_in(self, key: K, seconds: float) -> None:
        """Expire ``key`` ``seconds`` from now (replacing any earlier deadline)."""
        self.set_at(key, trio.current_time() + seconds)

    def set_at(self, key: K, when: float) -> None:
        """Expire ``key`` at ``when`` on Trio's clock."""
        self._deadlines[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))
        if self._heap[0][2] == key:
            self._changed.set()

    def discard(self, key: K) -> None:
        """Forget ``key``."""
        self._deadlines.pop(key, None)

    def deadline(self, key: K) -> float | None:
        """The pending deadline of ``key``, if any."""
        return self._deadlines.get(key)

    async def run(self, on_expire: Callable[[K], None]) -> None:
        """Serve forever: call ``on_expire(key)`` (then forget the key) once it is due."""
        while True:
            now = trio.current_time()
            heap = self._heap
            while heap and heap[0][0] <= now:
                when, _, key = heapq.heappop(heap)
                if self._deadlines.get(key) == when:
                    del self._deadlines[key]
                    on_expire(key)
            nxt = heap[0][0] if heap else math.inf
            self._changed = trio.Event()
            with trio.move_on_at(nxt):
                await self._changed.wait()
