"""Endpoint zones through the real registry: controld's watcher reads the zone from the
instance's service meta, else from its node's meta."""

from __future__ import annotations

import httpx
import pytest
import trio

from controld.discovery import RegistryWatcher
from meshcore.registry import Backoff
from meshcore.registry.client import RegistrySettings

from .compat_support import MGMT_TOKEN, RegistryProcess
from .discovery_support import blocking, eventually

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def registry(acl_registry: RegistryProcess) -> RegistryProcess:
    return acl_registry


async def start_watcher(nursery: trio.Nursery, url: str) -> RegistryWatcher:
    watcher = RegistryWatcher(
        RegistrySettings(url=url, token=MGMT_TOKEN, timeout_s=5.0),
        wait_s=5.0,
        backoff=Backoff(0.05, 0.5),
    )
    started: RegistryWatcher = await nursery.start(watcher.run)
    return started


def _register(url: str) -> None:
    # The body's NodeMeta, as Consul's API takes it (py-consul's ``node_meta`` sends query
    # parameters that Consul ignores on register).
    bodies = [
        # Node meta only: the zone comes from the node.
        {
            "Node": "n-zone-b",
            "Address": "10.7.0.2",
            "NodeMeta": {"zone": "eu-1b"},
            "Service": {"Service": "zoned", "ID": "zoned-1", "Port": 8080},
        },
        # Service meta wins over the node's.
        {
            "Node": "n-zone-c",
            "Address": "10.7.0.3",
            "NodeMeta": {"zone": "eu-1c"},
            "Service": {
                "Service": "zoned",
                "ID": "zoned-2",
                "Port": 8080,
                "Meta": {"zone": "eu-1a"},
            },
        },
        # Neither says.
        {
            "Node": "n-nozone",
            "Address": "10.7.0.4",
            "Service": {"Service": "zoned", "ID": "zoned-3", "Port": 8080},
        },
    ]
    with httpx.Client(base_url=url, headers={"X-Consul-Token": MGMT_TOKEN}, timeout=10) as http:
        for body in bodies:
            http.put("/v1/catalog/register", json=body).raise_for_status()


async def test_zones_from_service_and_node_meta(
    nursery: trio.Nursery, registry: RegistryProcess
) -> None:
    watcher = await start_watcher(nursery, registry.url)
    await blocking(_register, registry.url)

    def zones() -> dict[str, str | None] | None:
        endpoints = watcher.view.services.get("zoned") or ()
        found = {e.instance_id: e.zone for e in endpoints}
        return found if len(found) == 3 else None

    assert await eventually(zones, what="three zoned endpoints") == {
        "zoned-1": "eu-1b",
        "zoned-2": "eu-1a",
        "zoned-3": None,
    }
