"""controld's registry adapter (RegistryWatcher) against the real registry process.

Instances are registered and updated with py-consul (as any client would); the watcher's view
must follow through its blocking queries; when the registry dies the view is kept and the
status and metrics say the registry is down; when it comes back the watcher reconnects.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controld.discovery import RegistryWatcher, ServiceEndpoint
from meshcore.registry import SIDECAR_META_KEY, Backoff
from meshcore.registry.client import RegistrySettings

from .compat_support import MGMT_TOKEN, RegistryProcess
from .discovery_support import blocking, eventually, py_consul, registry_down, registry_up

Check = consul.Check


@pytest.fixture
def registry(acl_registry: RegistryProcess) -> RegistryProcess:
    """The registry enforces ACLs; the watcher reads with the management token, as controld
    reads with its own."""
    return acl_registry


@pytest.fixture
def client(registry: RegistryProcess) -> Iterator[Any]:
    c = py_consul(registry)
    try:
        yield c
    finally:
        c.http.session.close()


async def start_watcher(
    nursery: trio.Nursery, url: str, metrics: CollectorRegistry | None = None
) -> RegistryWatcher:
    watcher = RegistryWatcher(
        RegistrySettings(url=url, token=MGMT_TOKEN, timeout_s=5.0),
        metrics=metrics,
        # Short parks and retries keep the test quick; the logic is the same.
        wait_s=5.0,
        backoff=Backoff(0.05, 0.5, rng=random.Random(1)),
    )
    started: RegistryWatcher = await nursery.start(watcher.run)
    return started


def register_mesh_instance(c: Any, sid: str, app_port: int, proxy_port: int) -> None:
    """An app instance plus its sidecar, as meshd registers them (long TTLs, start critical).

    With meshd's marker on the instance, the watcher never shows it without its sidecar, even
    for a moment while the two health queries return at different times.
    """
    c.agent.service.register(
        "web",
        service_id=sid,
        address="127.0.0.1",
        port=app_port,
        tags=["v1"],
        meta={SIDECAR_META_KEY: f"{sid}-sidecar-proxy"},
        check={"CheckID": f"service:{sid}", "Name": "app", "TTL": "300s"},
    )
    c.agent.service.register(
        "web-sidecar-proxy",
        service_id=f"{sid}-sidecar-proxy",
        address="127.0.0.1",
        port=proxy_port,
        kind="connect-proxy",
        proxy={
            "DestinationServiceName": "web",
            "DestinationServiceID": sid,
            "LocalServiceAddress": "127.0.0.1",
            "LocalServicePort": app_port,
        },
        check={"CheckID": f"service:{sid}-sidecar-proxy", "Name": "alive", "TTL": "300s"},
    )


def register_db(c: Any) -> None:
    c.agent.service.register("db", service_id="db-1", address="127.0.0.2", port=5432)


def web(watcher: RegistryWatcher) -> tuple[ServiceEndpoint, ...] | None:
    return watcher.view.services.get("web")


def metrics_of(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return metrics_of(registry).get((name, tuple(sorted(labels.items()))))


async def test_view_follows_registrations_and_health(
    nursery: trio.Nursery, registry: RegistryProcess, client: Any
) -> None:
    metrics = CollectorRegistry()
    watcher = await start_watcher(nursery, registry.url, metrics)
    assert watcher.status.connected
    assert watcher.status.last_index > 0
    assert "web" not in watcher.view.services

    await blocking(register_mesh_instance, client, "web-1", 8081, 21001)
    # New checks start critical: the service is known, nothing is healthy yet.
    await eventually(lambda: web(watcher) == (), what="web known, no endpoint")
    assert "web-sidecar-proxy" not in watcher.view.services

    await blocking(client.agent.check.ttl_pass, "service:web-1")
    await blocking(client.agent.check.ttl_pass, "service:web-1-sidecar-proxy")
    sidecar_ep = ServiceEndpoint("127.0.0.1", 21001, "web-1", "", True, ("v1",))
    endpoints = await eventually(lambda: web(watcher), what="web endpoint")
    assert [(e.host, e.port, e.instance_id, e.sidecar) for e in endpoints] == [
        ("127.0.0.1", 21001, "web-1", True)
    ]
    assert endpoints[0].tags == sidecar_ep.tags
    assert metric(metrics, "controld_discovery_endpoints", service="web") == 1
    assert metric(metrics, "controld_registry_up") == 1

    # A second instance; then the first one's app fails: only the second stays.
    await blocking(register_mesh_instance, client, "web-2", 8082, 21002)
    await blocking(client.agent.check.ttl_pass, "service:web-2")
    await blocking(client.agent.check.ttl_pass, "service:web-2-sidecar-proxy")
    await eventually(lambda: len(web(watcher) or ()) == 2, what="two endpoints")
    await blocking(client.agent.check.ttl_fail, "service:web-1", "503")
    await eventually(
        lambda: [e.instance_id for e in web(watcher) or ()] == ["web-2"], what="web-1 out"
    )

    # A plain service with no checks is passing, reached directly.
    await blocking(
        client.agent.service.register, "db", service_id="db-1", address="127.0.0.2", port=5432
    )
    db = await eventually(lambda: watcher.view.services.get("db"), what="db endpoint")
    assert [(e.host, e.port, e.sidecar) for e in db] == [("127.0.0.2", 5432, False)]

    # Deregistration removes instances, and services with no instances left.
    version = watcher.view.version
    for sid in ("web-1", "web-1-sidecar-proxy", "web-2", "web-2-sidecar-proxy"):
        await blocking(client.agent.service.deregister, sid)
    await eventually(lambda: "web" not in watcher.view.services, what="web gone")
    assert watcher.view.version > version
    assert "db" in watcher.view.services
    assert metric(metrics, "controld_discovery_endpoints", service="web") is None


async def test_wait_view_wakes_on_change(
    nursery: trio.Nursery, registry: RegistryProcess, client: Any
) -> None:
    watcher = await start_watcher(nursery, registry.url)
    version = watcher.view.version
    await blocking(client.agent.service.register, "cache", service_id="cache-1", port=6379)
    with trio.fail_after(20):
        view = await watcher.wait_view(version)
    assert view.version > version
    assert "cache" in view.services


async def test_view_kept_while_registry_is_down_then_reconnects(
    nursery: trio.Nursery, registry: RegistryProcess, client: Any
) -> None:
    metrics = CollectorRegistry()
    watcher = await start_watcher(nursery, registry.url, metrics)
    await blocking(register_mesh_instance, client, "web-1", 8081, 21001)
    await blocking(client.agent.check.ttl_pass, "service:web-1")
    await blocking(client.agent.check.ttl_pass, "service:web-1-sidecar-proxy")
    await eventually(
        lambda: [e.port for e in web(watcher) or ()] == [21001], what="web via its sidecar"
    )
    kept = watcher.view
    contact = watcher.status.last_contact

    await registry_down(registry, hard=True)
    await eventually(lambda: not watcher.status.connected, what="watcher noticing")
    status = watcher.status
    assert status.last_error
    assert status.errors >= 1
    assert status.last_contact == contact or status.last_contact is not None
    assert watcher.view is kept  # the last view stays in force
    assert metric(metrics, "controld_registry_up") == 0
    assert (metric(metrics, "controld_registry_watch_errors_total") or 0) >= 1
    assert metric(metrics, "controld_discovery_endpoints", service="web") == 1
    # Retrying does not drop the view either.
    await trio.sleep(0.5)
    assert watcher.view is kept

    await registry_up(registry)
    await eventually(lambda: watcher.status.connected, what="reconnection")
    assert watcher.status.last_error is None
    assert metric(metrics, "controld_registry_up") == 1
    # The watches are live again: a change made now shows up.
    await blocking(
        client.agent.service.register, "db", service_id="db-1", address="127.0.0.2", port=5432
    )
    await eventually(lambda: watcher.view.services.get("db"), what="db after reconnect")


async def test_state_lost_by_the_registry_is_dropped_from_the_view(
    nursery: trio.Nursery, registry: RegistryProcess, client: Any
) -> None:
    watcher = await start_watcher(nursery, registry.url)
    await blocking(client.agent.service.register, "db", service_id="db-1", port=5432)
    await eventually(lambda: watcher.view.services.get("db"), what="db")

    await registry_down(registry)
    await eventually(lambda: not watcher.status.connected, what="watcher noticing")
    await registry_up(registry, wipe=True)
    await eventually(lambda: watcher.status.connected, what="reconnection")
    await eventually(lambda: "db" not in watcher.view.services, what="db gone with the data")


async def test_starts_while_registry_is_down(
    nursery: trio.Nursery, tmp_path: Path, registry: RegistryProcess, client: Any
) -> None:
    await registry_down(registry)
    watcher = await start_watcher(nursery, registry.url)
    assert not watcher.status.connected
    assert watcher.status.last_error
    assert watcher.view.services == {}

    await registry_up(registry)
    await blocking(client.agent.service.register, "db", service_id="db-1", port=5432)
    await eventually(lambda: watcher.view.services.get("db"), what="db once the registry is up")
    assert watcher.status.connected


async def test_watcher_sends_its_token(
    nursery: trio.Nursery, acl_registry: RegistryProcess
) -> None:
    admin = consul.Consul(host="127.0.0.1", port=acl_registry.port, token=MGMT_TOKEN)
    try:
        await blocking(admin.agent.service.register, "db", service_id="db-1", port=5432)
        watcher = RegistryWatcher(
            RegistrySettings(url=acl_registry.url, token=MGMT_TOKEN),
            wait_s=5.0,
            backoff=Backoff(0.05, 0.5, rng=random.Random(1)),
        )
        await nursery.start(watcher.run)
        assert watcher.status.connected
        assert [e.port for e in watcher.view.endpoints("db")] == [5432]
    finally:
        admin.http.session.close()
