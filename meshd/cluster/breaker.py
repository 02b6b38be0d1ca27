"""Circuit breaking: a cluster's limits as counted by this sidecar, over all its endpoints.

One :class:`Breaker` per cluster name lives as long as the sidecar (in
:class:`~meshd.cluster.state.ClusterState`), so requests started on an older snapshot still
count after a swap. The limits themselves come with each call, from the snapshot of the
caller (:class:`~meshcore.model.ConnectionLimits`):

- ``max_requests``: requests in flight (between ``admit`` and ``done``);
- ``max_retries``: retries in flight (between ``begin_retry`` and ``end_retry``);
- ``max_connections``: open upstream connections of the cluster (pooled plus in use). At the
  limit a request that needs a new connection first closes idle ones of the cluster, then
  waits for one to be released: it is *pending*;
- ``max_pending_requests``: pending requests; one more is refused.

A refusal is immediate: :class:`~meshd.errors.PoolOverflow` (503 ``upstream_overflow``),
counted in ``meshd_upstream_overflow{cluster,limit}``. Nothing waits on the backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import trio

from meshcore.model.policy import ConnectionLimits
from meshd.errors import PoolOverflow
from meshd.policystats import PolicyStats

__all__ = ["Breaker"]

#: A pending request checks again this often even if no release woke it (a connection of
#: the cluster may close without passing through :meth:`Breaker.released`, e.g. a pool
#: shared with another cluster).
_RECHECK_S: Final = 0.25


class Breaker:
    """In-flight counts of one cluster and the refusal of what goes over a limit."""

    __slots__ = ("_lot", "cluster", "pending", "requests", "retries", "stats")

    def __init__(self, cluster: str, stats: PolicyStats) -> None:
        self.cluster = cluster
        self.stats = stats
        #: Requests admitted and not done.
        self.requests = 0
        #: Retries begun and not ended.
        self.retries = 0
        #: Requests waiting for a connection (``max_connections`` busy).
        self.pending = 0
        self._lot = trio.lowlevel.ParkingLot()

    def overflow(self, limit: str) -> PoolOverflow:
        """Count a refusal by ``limit`` and return the error to raise."""
        self.stats.inc("meshd_upstream_overflow", self.cluster, limit)
        return PoolOverflow("upstream_overflow", f"cluster {self.cluster}: {limit}")

    def admit(self, max_requests: int | None) -> None:
        """Count a request in flight; raises :class:`PoolOverflow` at ``max_requests`` (the
        cluster's ``limits.max_requests``, taken once per snapshot; None: no limit)."""
        if max_requests is not None and self.requests >= max_requests:
            raise self.overflow("max_requests")
        self.requests += 1

    def done(self) -> None:
        """A request :meth:`admit` let in has ended."""
        if self.requests > 0:
            self.requests -= 1

    def begin_retry(self, limits: ConnectionLimits | None) -> bool:
        """Count a retry in flight; False (counted) at ``max_retries``."""
        if limits is not None and self.retries >= limits.max_retries:
            self.overflow("max_retries")
            return False
        self.retries += 1
        return True

    def end_retry(self) -> None:
        """A retry :meth:`begin_retry` allowed has ended."""
        if self.retries > 0:
            self.retries -= 1

    async def wait_connection_room(
        self,
        limits: ConnectionLimits,
        open_connections: Callable[[], int],
        close_idle: Callable[[], bool],
    ) -> None:
        """Return once a new connection fits under ``max_connections``.

        ``open_connections`` counts the cluster's connections; ``close_idle`` closes idle ones
        (True if it closed any). With every connection busy the request is pending until one
        is released; raises :class:`PoolOverflow` if ``max_pending_requests`` are pending
        already.
        """
        while open_connections() >= limits.max_connections:
            if close_idle():
                continue
            if self.pending >= limits.max_pending_requests:
                raise self.overflow("max_pending_requests")
            self.pending += 1
            try:
                with trio.move_on_after(_RECHECK_S):
                    await self._lot.park()
            finally:
                self.pending -= 1

    def released(self) -> None:
        """A connection of the cluster was released: pending requests look again.

        Asks :attr:`pending`, not the parking lot: a task is in the lot only while counted
        there, and the lot's ``__bool__`` is an interpreted call on every request's release.
        """
        if self.pending:
            self._lot.unpark_all()

    def describe(self, limits: ConnectionLimits | None) -> dict[str, object]:
        """Counts (and limits) for the admin API."""
        out: dict[str, object] = {
            "requests": self.requests,
            "pending": self.pending,
            "retries": self.retries,
        }
        if limits is not None:
            out["limits"] = limits.model_dump(mode="json")
        return out
