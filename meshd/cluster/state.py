"""A cluster's health as this sidecar sees it, kept across snapshots.

A snapshot swap builds new :class:`~meshd.cluster.runtime.ClusterRuntime` objects; what must
outlive them lives here, one :class:`ClusterState` per cluster *name* in the sidecar's
:class:`ClusterStates` (as :class:`~meshd.cluster.pool.PoolManager` keeps pools by address):
the circuit breaker's in-flight counts, the retry budget's window, outlier detection and the
active health check results. State of an endpoint that stays in the cluster is kept; a
removed cluster's state is dropped.

:attr:`ClusterState.unavailable` is what the load balancer must avoid: endpoints ejected by
outlier detection or failing their active health check. It is a new object whenever it
changes, and whenever the cluster's endpoints do, so the request path notices a change with
one identity check. :attr:`ClusterState.members` are the endpoints of the newest snapshot:
a replaced snapshot's runtime, still serving the requests that began on it (their retries),
avoids every endpoint it lists that is no longer one of them (:meth:`ClusterState.removed`):
the state of such an endpoint (an ejection) is gone, but so is the endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from meshcore.model import Cluster
from meshcore.model.policy import HealthCheck, RetryBudget
from meshd.cluster.breaker import Breaker
from meshd.cluster.budget import RetryBudgetWindow
from meshd.cluster.outlier import Address, OutlierDetector, TickResult
from meshd.policystats import PolicyStats

__all__ = ["ClusterState", "ClusterStates", "EndpointHealth"]

Clock = Callable[[], float]


@dataclass(slots=True)
class EndpointHealth:
    """Active health check results of one endpoint.

    A new endpoint starts healthy: it is in the snapshot only because the registry calls it
    healthy, and it should take traffic at once rather than after ``healthy_threshold``
    checks.
    """

    healthy: bool = True
    #: Failures (while healthy) or successes (while unhealthy) in a row.
    streak: int = 0
    checks: int = 0
    last_result: str | None = None

    def record(self, ok: bool, check: HealthCheck) -> bool:
        """One check's result; True if the endpoint changed between healthy and unhealthy."""
        self.checks += 1
        self.last_result = "success" if ok else "failure"
        if ok == self.healthy:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak >= (check.healthy_threshold if ok else check.unhealthy_threshold):
            self.healthy = ok
            self.streak = 0
            return True
        return False


class ClusterState:
    """Everything about one cluster that survives snapshot swaps."""

    __slots__ = (
        "_budget",
        "_unhealthy",
        "breaker",
        "clock",
        "due",
        "health",
        "health_check",
        "members",
        "name",
        "outliers",
        "stats",
        "unavailable",
    )

    def __init__(self, name: str, stats: PolicyStats, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.stats = stats
        self.clock = clock
        self.breaker = Breaker(name, stats)
        self._budget: RetryBudgetWindow | None = None
        #: None: the cluster has no outlier detection.
        self.outliers: OutlierDetector | None = None
        #: The active health check in force (None: none).
        self.health_check: HealthCheck | None = None
        self.health: dict[Address, EndpointHealth] = {}
        self._unhealthy: frozenset[Address] = frozenset()
        #: Ejected or unhealthy endpoints.
        self.unavailable: frozenset[Address] = frozenset()
        #: The endpoints of the snapshot configured last (None: not configured yet).
        self.members: frozenset[Address] | None = None
        #: When :meth:`tick` has work next (infinity: never): outlier returns and intervals.
        self.due = float("inf")

    def budget(self, params: RetryBudget) -> RetryBudgetWindow:
        """The retry budget window for ``params`` (a new, empty one if they changed)."""
        window = self._budget
        if window is None or (window.budget is not params and window.budget != params):
            window = self._budget = RetryBudgetWindow(params)
        return window

    def configure(self, model: Cluster) -> None:
        """Follow the cluster's newest snapshot: its endpoints and policies."""
        addresses = [(ep.host, ep.port) for ep in model.endpoints]
        members = frozenset(addresses)
        moved = members != self.members
        self.members = members
        config = model.outlier_detection
        now = self.clock()
        if config is None:
            self.outliers = None
        elif self.outliers is None:
            self.outliers = OutlierDetector(config, addresses, now)
        else:
            self.outliers.update(config, addresses, now)
        self.health_check = model.health_check
        if model.health_check is None:
            self.health = {}
        else:
            old = self.health
            self.health = {a: old.get(a) or EndpointHealth() for a in addresses}
        self._unhealthy = frozenset(a for a, h in self.health.items() if not h.healthy)
        # Endpoints came or went: runtimes of older snapshots must look again (removed()).
        self._refresh(renew=moved)
        self.budget(model.retry_budget)

    def removed(self, addresses: frozenset[Address]) -> frozenset[Address]:
        """Those of ``addresses`` (a runtime's endpoints) that the cluster no longer has."""
        members = self.members
        return frozenset() if members is None else addresses - members

    def _refresh(self, *, renew: bool = False) -> None:
        self.due = self.outliers.next_deadline if self.outliers is not None else float("inf")
        ejected = self.outliers.ejected if self.outliers is not None else frozenset()
        unavailable = ejected | self._unhealthy  # a new object
        if renew or unavailable != self.unavailable:
            self.unavailable = unavailable
        self.stats.set("meshd_outlier_ejected_endpoints", self.name, value=len(ejected))
        self.stats.set(
            "meshd_health_check_unhealthy_endpoints", self.name, value=len(self._unhealthy)
        )

    def report(self, address: Address, status: int) -> None:
        """One try's outcome (0: no response), for outlier detection."""
        outliers = self.outliers
        if outliers is None:
            return
        ejection = outliers.report(address, status, self.clock())
        if ejection is not None:
            self.stats.inc("meshd_outlier_ejections", self.name, ejection.cause)
            self._refresh()

    def tick(self) -> TickResult:
        """Return ejected endpoints whose time is up; run the interval's checks."""
        if self.outliers is None:
            return TickResult()
        result = self.outliers.tick(self.clock())
        for ejection in result.ejections:
            self.stats.inc("meshd_outlier_ejections", self.name, ejection.cause)
        # Always: the next interval's end moved on.
        self._refresh()
        return result

    def record_check(self, address: Address, ok: bool) -> None:
        """An active health check's result on ``address``."""
        check = self.health_check
        health = self.health.get(address)
        self.stats.inc("meshd_health_checks", self.name, "success" if ok else "failure")
        if check is None or health is None:
            return
        if health.record(ok, check):
            self._unhealthy = frozenset(a for a, h in self.health.items() if not h.healthy)
            self._refresh()

    def describe_endpoint(self, address: Address) -> dict[str, object]:
        """Health and outlier state of one endpoint for the admin API."""
        out: dict[str, object] = {}
        health = self.health.get(address)
        if health is not None:
            out["health_check"] = {
                "healthy": health.healthy,
                "streak": health.streak,
                "checks": health.checks,
                "last_result": health.last_result,
            }
        outliers = self.outliers
        state = outliers.endpoints.get(address) if outliers is not None else None
        if state is not None:
            out["outlier"] = state.describe(self.clock(), time.time())
        out["available"] = address not in self.unavailable
        return out


class ClusterStates:
    """The :class:`ClusterState` of every cluster of a sidecar, by cluster name."""

    def __init__(self, stats: PolicyStats | None = None, clock: Clock = time.monotonic) -> None:
        self.stats = stats if stats is not None else PolicyStats()
        self.clock = clock
        self._states: dict[str, ClusterState] = {}

    def get(self, name: str) -> ClusterState:
        """The state of cluster ``name`` (created empty on first use)."""
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = ClusterState(name, self.stats, self.clock)
        return state

    def apply(self, models: Iterable[Cluster]) -> None:
        """A snapshot is in service: configure its clusters, forget the others."""
        models = list(models)
        for model in models:
            self.get(model.name).configure(model)
        names = {m.name for m in models}
        for name in [n for n in self._states if n not in names]:
            del self._states[name]
            self.stats.set("meshd_outlier_ejected_endpoints", name, value=0)
            self.stats.set("meshd_health_check_unhealthy_endpoints", name, value=0)

    def __iter__(self) -> Iterator[ClusterState]:
        return iter(list(self._states.values()))
