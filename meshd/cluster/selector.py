"""A cluster's endpoint choice at run time: health, priority tiers, locality, balancing.

Pure and synchronous (the random generator and the clock are injected). The selector owns
the cluster's :class:`~meshd.cluster.lb_load.LoadBook` and one balancer per group of
endpoints that :func:`~meshd.cluster.priority.plan` sends traffic to; health changes
(:meth:`EndpointSelector.set_unavailable`) recompute the groups. A new snapshot's selector
takes over the previous one's state (``previous=``): latency estimates, in-flight counts,
the unavailable set and recently built hash tables, for the endpoints that stay. The
selector of a replaced snapshot, still used by the requests that began on it, is told which
of its endpoints the cluster no longer has (``removed``) and never picks them again.
"""

from __future__ import annotations

import random
import time
from bisect import bisect_right
from collections.abc import Callable, Collection

from meshcore.model import Cluster, Endpoint
from meshd.cluster.lb import HASH_POLICIES, Balancer, make_balancer
from meshd.cluster.lb_hash import HashTables
from meshd.cluster.lb_hash import hash_key as key_of
from meshd.cluster.lb_load import Addr, LoadBook, addr
from meshd.cluster.priority import Group, TierLoad, plan

__all__ = ["EndpointSelector"]

_MASK64 = (1 << 64) - 1
#: Further picks tried when a pick lands on an endpoint to exclude, before falling back to
#: a plain choice among the others.
_REPICKS = 3


def _mix(key: int, salt: int) -> int:
    """A well-spread 64-bit function of ``key`` and ``salt`` (splitmix64's finalizer)."""
    z = (key + (salt + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class EndpointSelector:
    """Chooses the endpoint of each try for one cluster of one snapshot."""

    __slots__ = (
        "_balancers",
        "_by_id",
        "_cumulative",
        "_groups",
        "_hashing",
        "_rng",
        "_single",
        "_tables",
        "_total",
        "book",
        "endpoints",
        "model",
        "removed",
        "tiers",
        "unavailable",
        "zone",
    )

    def __init__(
        self,
        model: Cluster,
        *,
        zone: str | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
        previous: EndpointSelector | None = None,
    ) -> None:
        self.model = model
        #: The caller's zone (Bootstrap.zone); used with the cluster's locality policy.
        self.zone = zone
        self.endpoints: tuple[Endpoint, ...] = model.endpoints
        if rng is None:
            rng = previous._rng if previous is not None else random.Random()  # noqa: S311
        self._rng: random.Random = rng
        self.book: LoadBook
        self._tables: HashTables
        if previous is not None:
            self.book = previous.book.adopt(self.endpoints)
            if clock is not None:
                self.book.clock = clock
            self._tables = previous._tables
        else:
            self.book = LoadBook(self.endpoints, clock=clock or time.monotonic)
            self._tables = HashTables()
        # Loads by endpoint identity: the request path hands back the snapshot's own objects,
        # and hashing a tuple of two fields per request is avoidable work (looked up inline in
        # started/finished/observe, a call less each; other endpoints go through the book).
        self._by_id = {id(e): self.book.get(e) for e in self.endpoints}
        self._hashing = model.lb_policy in HASH_POLICIES
        self.unavailable: frozenset[Addr] = frozenset()
        self.removed: frozenset[Addr] = frozenset()
        self.tiers: list[TierLoad] = []
        self._groups: list[Group] = []
        self._balancers: list[Balancer] = []
        self._cumulative: list[float] = []
        self._total = 0.0
        self._single: Balancer | None = None
        kept = previous.unavailable if previous is not None else frozenset()
        self.set_unavailable(kept & {addr(e) for e in self.endpoints})

    def set_unavailable(
        self, addrs: frozenset[Addr], removed: frozenset[Addr] = frozenset()
    ) -> None:
        """Endpoints (by host, port) not to send to: ejected or failing health checks.

        ``removed``: endpoints the cluster no longer has (a newer snapshot left them out: the
        registry dropped them or calls them unhealthy). They are not used at all, not even in
        panic, as if this snapshot did not list them.

        Replaces the previous sets and recomputes tier loads, panic and locality groups (sets
        equal to the current ones change nothing).
        """
        addrs = frozenset(addrs)
        if addrs == self.unavailable and removed == self.removed and self._balancers:
            return
        self.unavailable = addrs
        self.removed = removed
        endpoints = self.endpoints
        if removed:
            endpoints = tuple(e for e in endpoints if addr(e) not in removed)
        locality = self.model.locality
        self.tiers, self._groups = plan(
            endpoints,
            self.unavailable,
            panic_threshold_percent=self.model.panic_threshold_percent,
            zone=self.zone,
            min_healthy_percent=locality.min_healthy_percent if locality is not None else None,
        )
        self._balancers = [
            make_balancer(
                self.model.lb_policy,
                group.endpoints,
                rng=self._rng,
                book=self.book,
                tables=self._tables,
            )
            for group in self._groups
        ]
        cumulative: list[float] = []
        total = 0.0
        for group in self._groups:
            total += group.percent
            cumulative.append(total)
        self._cumulative = cumulative
        self._total = total
        self._single = self._balancers[0] if len(self._balancers) == 1 else None

    @property
    def groups(self) -> list[Group]:
        """Where traffic goes now: endpoints and percent per group."""
        return list(self._groups)

    def pick(
        self, hash_key: bytes | None = None, exclude: Collection[Endpoint] = ()
    ) -> Endpoint | None:
        """The endpoint for the next try, or None when no endpoint may be used.

        ``hash_key``: the request's hash input (``ring_hash``/``maglev``; ignored by
        other policies; None: a random endpoint). ``exclude``: endpoints earlier tries of the
        request used; another endpoint is chosen when there is one (the same tier first, then
        any other usable endpoint), else one of them.
        """
        key = key_of(hash_key) if hash_key is not None and self._hashing else None
        single = self._single
        picked = single.pick(key) if single is not None else self._pick(key, 0)
        if not exclude or picked is None:
            return picked
        tried = {addr(e) for e in exclude}
        if addr(picked) not in tried:
            return picked
        for attempt in range(1, _REPICKS + 1):
            again = self._pick(None if key is None else _mix(key, attempt), attempt)
            if again is not None and addr(again) not in tried:
                return again
        return self._fallback(tried) or picked

    def _pick(self, key: int | None, salt: int) -> Endpoint | None:
        single = self._single
        if single is not None:
            return single.pick(key)
        if not self._balancers:
            return None
        # With a key, the group is a function of the key too, so a key sticks to a group.
        if key is None:
            point = self._rng.random() * self._total
        else:
            point = _mix(key, salt + 1000) / 2.0**64 * self._total
        index = min(bisect_right(self._cumulative, point), len(self._balancers) - 1)
        return self._balancers[index].pick(key)

    def _fallback(self, tried: set[Addr]) -> Endpoint | None:
        """A random endpoint not tried: of the groups in use, else any available one."""
        in_use = [e for g in self._groups for e in g.endpoints if addr(e) not in tried]
        if in_use:
            return self._rng.choice(in_use)
        available = [
            e
            for e in sorted(self.endpoints, key=lambda e: e.priority)
            if addr(e) not in tried
            and addr(e) not in self.unavailable
            and addr(e) not in self.removed
        ]
        return available[0] if available else None

    def started(self, endpoint: Endpoint) -> None:
        """A try began on ``endpoint`` (counted in flight until :meth:`finished`)."""
        load = self._by_id.get(id(endpoint))
        (load if load is not None else self.book.get(endpoint)).in_flight += 1

    def finished(self, endpoint: Endpoint, latency_s: float | None = None) -> None:
        """A try that :meth:`started` on ``endpoint`` ended.

        ``latency_s``: how long it took; recorded as a latency sample unless one was
        :meth:`observe`-d for the endpoint since the try began (the request path's report
        is more precise; this covers callers that don't report).
        """
        load = self._by_id.get(id(endpoint))
        if load is None:
            load = self.book.get(endpoint)
        if load.in_flight > 0:  # clamped: the try may have started before a restart of counts
            load.in_flight -= 1
        if latency_s is None:
            return
        book = self.book
        now = book.clock()
        if load.stamp <= now - latency_s:
            book.sample(load, latency_s, now)

    def observe(self, endpoint: Endpoint, latency_s: float, *, failed: bool = False) -> None:
        """One try's latency on ``endpoint`` for the EWMA estimate; ``failed``: no response
        came (recorded as at least :data:`~meshd.cluster.lb_load.FAILURE_PENALTY_S`)."""
        book = self.book
        load = self._by_id.get(id(endpoint))
        book.sample(
            load if load is not None else book.get(endpoint), latency_s, book.clock(), failed=failed
        )

    def endpoint_state(self, endpoint: Endpoint) -> dict[str, object]:
        """JSON-able balancing state of ``endpoint`` for the admin API."""
        load = self.book.find(endpoint)
        ewma = None
        if load is not None and load.rtt_s is not None:
            ewma = round(self.book.latency(load) * 1000.0, 3)
        return {
            "priority": endpoint.priority,
            "zone": endpoint.zone,
            "available": addr(endpoint) not in self.unavailable,
            "in_flight": load.in_flight if load is not None else 0,
            "ewma_ms": ewma,
        }

    def describe(self) -> dict[str, object]:
        """JSON-able cluster-wide state for the admin API: tiers and where traffic goes."""
        return {
            "zone": self.zone,
            "panic_threshold_percent": self.model.panic_threshold_percent,
            "tiers": [
                {
                    "priority": t.priority,
                    "endpoints": t.endpoints,
                    "healthy": t.healthy,
                    "load_percent": round(t.load_percent, 2),
                    "panic": t.panic,
                }
                for t in self.tiers
            ],
        }
