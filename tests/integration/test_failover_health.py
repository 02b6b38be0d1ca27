"""Runtime failover driven by real health: the sidecar's own active health checks move
traffic to the next priority tier, and back, with no control-plane round trip."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import trio
from helpers import RawClient, closed_port, port_of, request, start_sidecar, write_sidecar_config
from test_cluster_health import FlakyApp, _apps, _until

pytestmark = pytest.mark.timeout(120)

CHECK = {
    "kind": "http",
    "path": "/health",
    "interval_s": 0.05,
    "timeout_s": 1,
    "unhealthy_threshold": 2,
    "healthy_threshold": 2,
}


async def _spread(port: int, apps: list[FlakyApp], count: int) -> Counter[int]:
    """``count`` requests; which app (index) saw each. Every one must succeed."""
    before = [a.calls for a in apps]
    for _ in range(count):
        async with RawClient.connect(port) as client:
            await client.send(request("GET", "/x"))
            assert (await client.read_response()).status == 200
    return Counter({i: a.calls - b for i, (a, b) in enumerate(zip(apps, before, strict=True))})


async def test_health_checks_fail_over_to_the_next_tier_and_back(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        a, b, backup = apps = await _apps(nursery, 3)
        path = write_sidecar_config(
            tmp_path,
            service="web",
            app_port=closed_port(),
            listeners=[
                {
                    "name": "out",
                    "direction": "outbound",
                    "address": "127.0.0.1:0",
                    "cluster": "up",
                }
            ],
            clusters=[
                {
                    "name": "up",
                    "service": "up",
                    "lb_policy": "random",
                    "health_check": CHECK,
                    "endpoints": [
                        {"host": "127.0.0.1", "port": a.port},
                        {"host": "127.0.0.1", "port": b.port},
                        {"host": "127.0.0.1", "port": backup.port, "priority": 1},
                    ],
                }
            ],
        )
        sidecar = await start_sidecar(nursery, path)
        port = port_of(sidecar, "out")
        state = sidecar.cluster_states.get("up")
        # All healthy: the backup tier gets nothing.
        assert (await _spread(port, apps, 20))[2] == 0
        # Half of the primary tier fails its checks: 1.4 x 50% = 70% stay, 30% spill over.
        a.health = 500
        await _until(lambda: ("127.0.0.1", a.port) in state.unavailable, "a is down")
        seen = await _spread(port, apps, 200)
        assert seen[0] == 0
        assert 20 <= seen[2] <= 100, seen  # about 60 of 200 (30%)
        # The whole primary tier down: everything goes to the backup, nothing fails.
        b.health = 500
        await _until(lambda: ("127.0.0.1", b.port) in state.unavailable, "b is down")
        assert await _spread(port, apps, 20) == Counter({2: 20})
        # The primary recovers: traffic comes back to it.
        a.health = b.health = 200
        await _until(lambda: not state.unavailable, "the primary tier is back")
        assert (await _spread(port, apps, 20))[2] == 0
        nursery.cancel_scope.cancel()
