"""Where a cluster's traffic goes given endpoint health: priority tiers, panic, locality.

Pure functions of values (Envoy's algorithms, simplified where noted); the
:class:`~meshd.cluster.selector.EndpointSelector` applies the result.

* **Priority load.** Tier P (``Endpoint.priority``; 0 is the primary) has availability
  ``min(100, 1.4 x healthy% of P)`` (1.4: Envoy's overprovisioning factor, so a tier that
  lost a few endpoints keeps all its traffic). Tiers in order take their availability from
  what is left of 100%; the rest spills to the next tier. When the availabilities add up to
  less than 100 they are scaled up to 100 in proportion; when no endpoint is healthy at all
  the first tier gets everything.
* **Panic.** When the availabilities add up to less than 100, a tier whose healthy% is below
  the panic threshold is in panic: its share goes to all its endpoints, healthy or not
  (sending to possibly failing endpoints beats overloading the few healthy ones). When every
  tier is in panic, tiers share the traffic in proportion to their endpoint counts.
  A threshold of 0 disables panic.
* **Locality.** Within a tier not in panic: when the caller's zone has endpoints in the tier
  and at least ``min_healthy_percent`` of them are healthy, all of the tier's share goes to
  the healthy ones of that zone. Below that, the zone keeps ``healthy% / min_healthy_percent``
  of the share and the rest spills over to the healthy endpoints of the other zones (by
  weight). A zone without healthy endpoints elsewhere keeps everything it can serve.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from meshcore.model import Endpoint

__all__ = ["OVERPROVISIONING", "Group", "TierLoad", "plan", "tier_loads"]

#: Envoy's default overprovisioning factor.
OVERPROVISIONING = 1.4


@dataclass(frozen=True, slots=True)
class TierLoad:
    """One priority tier's health and share of the traffic."""

    priority: int
    endpoints: int
    healthy: int
    #: Percent of the cluster's requests sent to this tier.
    load_percent: float
    #: All of the tier's endpoints are used, healthy or not.
    panic: bool


@dataclass(frozen=True, slots=True)
class Group:
    """Endpoints that share one balancer, and their share of the traffic."""

    priority: int
    percent: float
    endpoints: tuple[Endpoint, ...]
    #: True: the caller's zone; False: spill-over to other zones; None: no locality split.
    local: bool | None = None


def tier_loads(
    tiers: Sequence[tuple[int, int, int]], panic_threshold_percent: float
) -> list[TierLoad]:
    """The load of each tier, given ``(priority, endpoints, healthy)`` in priority order
    (every tier has at least one endpoint)."""
    health = [100.0 * healthy / total for _, total, healthy in tiers]
    avail = [min(100.0, OVERPROVISIONING * h) for h in health]
    total = min(100.0, sum(avail))
    loads: list[float] = []
    if total <= 0.0:
        loads = [100.0 if i == 0 else 0.0 for i in range(len(tiers))]
    else:
        remaining = 100.0
        for a in avail:
            share = min(remaining, a * 100.0 / total)
            loads.append(share)
            remaining -= share
    panic = [total < 100.0 and h < panic_threshold_percent for h in health]
    if tiers and all(panic):
        count = sum(t for _, t, _ in tiers)
        loads = [100.0 * t / count for _, t, _ in tiers]
    return [
        TierLoad(priority=p, endpoints=t, healthy=h, load_percent=load, panic=pan)
        for (p, t, h), load, pan in zip(tiers, loads, panic, strict=True)
    ]


def _locality(
    tier: Sequence[Endpoint],
    healthy: Sequence[Endpoint],
    load: TierLoad,
    zone: str,
    min_healthy_percent: int,
) -> list[Group]:
    in_zone = sum(1 for e in tier if e.zone == zone)
    local = tuple(e for e in healthy if e.zone == zone)
    other = tuple(e for e in healthy if e.zone != zone)
    if in_zone == 0 or not local or not other:
        return [Group(load.priority, load.load_percent, tuple(healthy))]
    local_health = 100.0 * len(local) / in_zone
    if local_health >= min_healthy_percent:
        return [Group(load.priority, load.load_percent, local, local=True)]
    kept = local_health / min_healthy_percent
    return [
        Group(load.priority, load.load_percent * kept, local, local=True),
        Group(load.priority, load.load_percent * (1.0 - kept), other, local=False),
    ]


def plan(
    endpoints: Sequence[Endpoint],
    unavailable: Collection[tuple[str, int]],
    *,
    panic_threshold_percent: float,
    zone: str | None = None,
    min_healthy_percent: int | None = None,
) -> tuple[list[TierLoad], list[Group]]:
    """Tier loads and the groups of endpoints traffic goes to (those with a share > 0).

    ``unavailable``: addresses of endpoints not to use (ejected, failing health checks).
    ``min_healthy_percent``: the locality policy's (None: no locality preference).
    """
    by_tier: dict[int, list[Endpoint]] = {}
    for endpoint in endpoints:
        by_tier.setdefault(endpoint.priority, []).append(endpoint)
    priorities = sorted(by_tier)
    healthy_by_tier = {
        p: [e for e in by_tier[p] if (e.host, e.port) not in unavailable] for p in priorities
    }
    loads = tier_loads(
        [(p, len(by_tier[p]), len(healthy_by_tier[p])) for p in priorities],
        panic_threshold_percent,
    )
    groups: list[Group] = []
    for load in loads:
        if load.load_percent <= 0.0:
            continue
        tier = by_tier[load.priority]
        if load.panic:
            groups.append(Group(load.priority, load.load_percent, tuple(tier)))
            continue
        healthy = healthy_by_tier[load.priority]
        if not healthy:
            continue
        if zone is None or min_healthy_percent is None:
            groups.append(Group(load.priority, load.load_percent, tuple(healthy)))
            continue
        groups.extend(_locality(tier, healthy, load, zone, min_healthy_percent))
    return loads, [g for g in groups if g.percent > 0.0 and g.endpoints]
