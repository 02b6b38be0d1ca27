"""Load balancing and failover through a real sidecar: client -> outbound sidecar -> apps.

Several :class:`helpers.TestApp` backends (each optionally slowed down) behind one cluster of
a file snapshot; each test proves its point by which backend saw the requests. Health is
marked in-process through the cluster's selector, as outlier detection and health checks do.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from helpers import (
    TIMEOUT,
    Scope,
    TestApp,
    admin_get,
    closed_port,
    port_of,
    serve_app,
    start_sidecar,
    write_sidecar_config,
)

from meshd.cluster.runtime import ClusterRuntime
from meshd.sidecar import Sidecar

pytestmark = pytest.mark.timeout(90)


class Backend(TestApp):
    """A test app that answers every HTTP request after ``delay_s``."""

    __test__ = False

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.delay_s:
            await trio.sleep(self.delay_s)
        await super().__call__(scope, receive, send)


async def backends(nursery: trio.Nursery, *delays: float) -> list[Backend]:
    apps = [Backend(d) for d in delays]
    for a in apps:
        await nursery.start(serve_app, a)
    return apps


async def sidecar(
    nursery: trio.Nursery,
    directory: Path,
    endpoints: list[dict[str, Any]],
    *,
    zone: str | None = None,
    **cluster_fields: Any,
) -> tuple[Sidecar, int]:
    path = write_sidecar_config(
        directory,
        service="web",
        app_port=closed_port(),
        listeners=[
            {"name": "out", "direction": "outbound", "address": "127.0.0.1:0", "cluster": "up"}
        ],
        clusters=[{"name": "up", "service": "up", "endpoints": endpoints, **cluster_fields}],
        extra={"zone": zone} if zone else None,
    )
    sc = await start_sidecar(nursery, path)
    return sc, port_of(sc, "out")


def endpoint(app: TestApp, **fields: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": app.port, **fields}


def cluster_of(sc: Sidecar) -> ClusterRuntime:
    assert sc.runtime is not None
    return sc.runtime.clusters["up"]


def mark_down(sc: Sidecar, *apps: TestApp) -> None:
    """Mark endpoints unavailable where health checks and outlier detection do: the cluster's
    long-lived state, which the runtime hands to its selector on the next pick."""
    cluster_of(sc).state.unavailable = frozenset(("127.0.0.1", a.port) for a in apps)


async def send(
    port: int, count: int, apps: list[Backend], headers: dict[str, str] | None = None
) -> Counter[int]:
    """``count`` sequential requests; which backend (index) answered each."""
    seen: Counter[int] = Counter()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(count):
            seen[await answered_by(client, apps, headers)] += 1
    return seen


async def answered_by(
    client: httpx.AsyncClient, apps: list[Backend], headers: dict[str, str] | None = None
) -> int:
    """Send one request; the index of the backend that saw it."""
    before = [a.requests for a in apps]
    with trio.fail_after(TIMEOUT):
        response = await client.get("/echo", headers=headers)
    assert response.status_code == 200, response.text
    after = [a.requests for a in apps]
    (index,) = [i for i, (b, n) in enumerate(zip(before, after, strict=True)) if n > b]
    return index


async def test_ewma_prefers_the_fast_endpoint(nursery: trio.Nursery, tmp_path: Path) -> None:
    apps = await backends(nursery, 0.0, 0.15)
    sc, port = await sidecar(nursery, tmp_path, [endpoint(a) for a in apps], lb_policy="ewma")
    seen = await send(port, 40, apps)
    assert seen[0] > 0.6 * 40, seen
    # /clusters shows the estimates (the slow one's only if it was ever tried).
    info = (await admin_get(sc, "/clusters")).json()
    (up,) = [c for c in info if c["name"] == "up"]
    fast, slow = up["endpoints"]
    # Shown, not compared: one stall of a shared machine is a peak the estimate keeps a while.
    assert fast["ewma_ms"] is not None, (seen, up)
    assert "ewma_ms" in slow
    assert (fast["in_flight"], slow["in_flight"]) == (0, 0)


async def test_ewma_moves_load_off_an_endpoint_that_slows_down(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    apps = await backends(nursery, 0.0, 0.0)
    _, port = await sidecar(nursery, tmp_path, [endpoint(a) for a in apps], lb_policy="ewma")
    await send(port, 10, apps)
    for app in apps:
        app.delay_s = 0.1  # both slow for a while: both get a peak sample
    assert sum((await send(port, 4, apps)).values()) == 4
    apps[0].delay_s = 0.0  # the first recovers; the second stays slow
    seen = await send(port, 30, apps)
    assert seen[0] > 0.6 * 30, seen


async def test_round_robin_spreads_for_comparison(nursery: trio.Nursery, tmp_path: Path) -> None:
    apps = await backends(nursery, 0.0, 0.05)
    _, port = await sidecar(nursery, tmp_path, [endpoint(a) for a in apps])
    assert await send(port, 10, apps) == {0: 5, 1: 5}


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
async def test_hash_on_a_header_is_sticky(
    nursery: trio.Nursery, tmp_path: Path, policy: str
) -> None:
    apps = await backends(nursery, 0.0, 0.0, 0.0)
    _, port = await sidecar(
        nursery,
        tmp_path,
        [endpoint(a) for a in apps],
        lb_policy=policy,
        hash_policy={"header": "x-user"},
    )
    owners: dict[str, int] = {}
    for user in (f"user-{i}" for i in range(12)):
        seen = await send(port, 3, apps, headers={"x-user": user})
        assert len(seen) == 1, (user, seen)  # every request of a user on one backend
        owners[user] = next(iter(seen))
    assert len(set(owners.values())) >= 2, owners  # and users spread over backends


async def test_hash_on_a_cookie_is_sticky(nursery: trio.Nursery, tmp_path: Path) -> None:
    apps = await backends(nursery, 0.0, 0.0, 0.0)
    _, port = await sidecar(
        nursery,
        tmp_path,
        [endpoint(a) for a in apps],
        lb_policy="ring_hash",
        hash_policy={"cookie": "session"},
    )
    for session in ("s1", "s2", "s3", "s4"):
        seen = await send(port, 3, apps, headers={"cookie": f"a=1; session={session}"})
        assert len(seen) == 1, (session, seen)


async def test_failover_to_the_next_tier_at_runtime(nursery: trio.Nursery, tmp_path: Path) -> None:
    apps = await backends(nursery, 0.0, 0.0, 0.0)
    primary, secondary, backup = apps
    sc, port = await sidecar(
        nursery,
        tmp_path,
        [endpoint(primary), endpoint(secondary), endpoint(backup, priority=1)],
    )
    assert set(await send(port, 6, apps)) == {0, 1}
    mark_down(sc, primary)  # 50% healthy x 1.4 = 70%: 30% spills to the backup tier
    spill = await send(port, 60, apps)
    assert set(spill) == {1, 2} and spill[2] < spill[1], spill
    mark_down(sc, primary, secondary)  # primary tier gone: all to the backup, no reload
    assert await send(port, 6, apps) == {2: 6}
    tiers = (await admin_get(sc, "/clusters")).json()[0]["tiers"]
    assert [(t["priority"], t["load_percent"]) for t in tiers] == [(0, 0.0), (1, 100.0)]
    mark_down(sc)  # back
    assert set(await send(port, 6, apps)) == {0, 1}


async def test_locality_prefers_the_callers_zone_then_spills(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    apps = await backends(nursery, 0.0, 0.0, 0.0)
    local_a, local_b, remote = apps
    sc, port = await sidecar(
        nursery,
        tmp_path,
        [
            endpoint(local_a, zone="z1"),
            endpoint(local_b, zone="z1"),
            endpoint(remote, zone="z2"),
        ],
        zone="z1",
        locality={"min_healthy_percent": 100},
        # No panic: with two of three down the tier would otherwise use all three.
        panic_threshold_percent=0,
    )
    assert set(await send(port, 10, apps)) == {0, 1}
    mark_down(sc, local_a)  # the zone is 50% healthy: keeps 50/100 of the traffic
    spill = await send(port, 60, apps)
    assert set(spill) == {1, 2}, spill
    assert 10 <= spill[2] <= 50, spill
    mark_down(sc, local_a, local_b)
    assert await send(port, 5, apps) == {2: 5}


async def test_balancer_state_survives_a_snapshot_reload(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    apps = await backends(nursery, 0.0, 0.1, 0.0)
    sc, port = await sidecar(
        nursery, tmp_path, [endpoint(apps[0]), endpoint(apps[1])], lb_policy="ewma"
    )
    mark_down(sc, apps[0])
    assert await send(port, 3, apps) == {1: 3}
    before = cluster_of(sc)
    slow = before.model.endpoints[1]
    estimate = before.selector.book.get(slow).rtt_s
    assert estimate is not None and estimate >= 0.1
    # A new snapshot adds an endpoint: the old ones keep their latency estimate.
    path = tmp_path / "snapshot.yaml"
    snapshot = yaml.safe_load(path.read_text())
    snapshot["version"] = 2
    snapshot["clusters"][0]["endpoints"].append(endpoint(apps[2]))
    path.write_text(yaml.safe_dump(snapshot))
    assert sc.reload()
    after = cluster_of(sc)
    assert after is not before
    assert after.selector.book.get(slow) is before.selector.book.get(slow)
    # Health marks come from the cluster's state, rebuilt from its real sources (health
    # checks, ejections) on each snapshot: test_cluster_health shows they survive a reload.
    mark_down(sc, apps[0])
    # Fast new endpoint vs the known-slow one: EWMA sends most traffic to the new one.
    seen = await send(port, 20, apps)
    assert 0 not in seen and seen[2] > 0.6 * 20, seen


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
async def test_removing_an_endpoint_moves_only_about_its_keys(
    nursery: trio.Nursery, tmp_path: Path, policy: str
) -> None:
    apps = await backends(nursery, *([0.0] * 5))
    sc, port = await sidecar(
        nursery,
        tmp_path,
        [endpoint(a) for a in apps],
        lb_policy=policy,
        hash_policy={"header": "x-user"},
    )
    users = [f"user-{i}" for i in range(100)]

    async def owners() -> list[int]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            return [await answered_by(client, apps, {"x-user": user}) for user in users]

    before = await owners()
    path = tmp_path / "snapshot.yaml"
    snapshot = yaml.safe_load(path.read_text())
    full = list(snapshot["clusters"][0]["endpoints"])
    snapshot["version"] = 2
    snapshot["clusters"][0]["endpoints"] = [e for e in full if e["port"] != apps[2].port]
    path.write_text(yaml.safe_dump(snapshot))
    assert sc.reload()
    after = await owners()
    assert 2 not in after
    moved = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if b != a]
    orphaned = [i for i, b in enumerate(before) if b == 2]
    assert set(orphaned) <= set(moved)
    if policy == "ring_hash":
        assert moved == orphaned  # exactly the removed endpoint's keys
    else:
        assert len(moved) - len(orphaned) <= 5, (moved, orphaned)
    # Back to five endpoints: every key returns to where it was.
    snapshot["version"] = 3
    snapshot["clusters"][0]["endpoints"] = full
    path.write_text(yaml.safe_dump(snapshot))
    assert sc.reload()
    assert await owners() == before


async def test_panic_uses_every_endpoint_when_too_few_are_healthy(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    apps = await backends(nursery, 0.0, 0.0, 0.0)
    sc, port = await sidecar(nursery, tmp_path, [endpoint(a) for a in apps])
    mark_down(sc, apps[0])  # 67% healthy: the other two take everything
    assert set(await send(port, 6, apps)) == {1, 2}
    mark_down(sc, apps[0], apps[1])  # 33% < 50%: panic, all three again
    assert set(await send(port, 6, apps)) == {0, 1, 2}
    tiers = (await admin_get(sc, "/clusters")).json()[0]["tiers"]
    assert tiers == [
        {"priority": 0, "endpoints": 3, "healthy": 1, "load_percent": 100.0, "panic": True}
    ]
