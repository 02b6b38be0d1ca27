"""Tests for controld.discovery.view: health entries -> service -> healthy endpoints (values)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controld.discovery import (
    DiscoveryView,
    RegistryWatcher,
    ServiceEndpoint,
    build_view,
    is_proxy_service,
)
from meshcore.registry import (
    CONNECT_PROXY,
    SIDECAR_META_KEY,
    CheckState,
    HealthEntry,
    ProxySpec,
    ServiceInstance,
)
from meshcore.registry.client import RegistrySettings

NODES = {"a": "10.0.0.1", "b": "10.0.0.2"}


def app(
    name: str,
    sid: str,
    *,
    node: str = "a",
    status: str = "passing",
    address: str = "",
    port: int = 8080,
    tags: tuple[str, ...] = (),
    meta: dict[str, str] | None = None,
) -> HealthEntry:
    checks = (
        CheckState("serfHealth", "Serf", "passing"),
        CheckState(f"service:{sid}", "app", status, service_id=sid),
    )
    return HealthEntry(
        node,
        NODES[node],
        ServiceInstance(sid, name, address, port, tags=tags, meta=meta or {}),
        checks,
    )


def proxy(
    dest: str,
    dest_id: str,
    *,
    node: str = "a",
    status: str = "passing",
    port: int = 21000,
    address: str = "",
) -> HealthEntry:
    pid = f"{dest_id or dest}-sidecar-proxy"
    service = ServiceInstance(
        pid,
        f"{dest}-sidecar-proxy",
        address,
        port,
        kind=CONNECT_PROXY,
        proxy=ProxySpec(dest, dest_id, "127.0.0.1", 8080),
    )
    return HealthEntry(node, NODES[node], service, (CheckState(f"service:{pid}", "p", status),))


def ep(
    host: str, port: int, instance: str, node: str = "a", *, sidecar: bool = True
) -> ServiceEndpoint:
    return ServiceEndpoint(host, port, instance, node, sidecar)


def test_plain_service_keeps_passing_instances() -> None:
    view = build_view(
        {
            "db": [
                app("db", "db-1", port=5432),
                app("db", "db-2", node="b", address="10.9.9.9", port=5432),
                app("db", "db-3", status="critical", port=5432),
                app("db", "db-4", status="warning", port=5432),
            ]
        }
    )
    assert view.endpoints("db") == (
        ep("10.0.0.1", 5432, "db-1", sidecar=False),
        ep("10.9.9.9", 5432, "db-2", "b", sidecar=False),  # service address beats node's
    )


def test_mesh_service_goes_through_passing_sidecars() -> None:
    view = build_view(
        {
            "web": [app("web", "web-1"), app("web", "web-2", node="b")],
            "web-sidecar-proxy": [
                proxy("web", "web-1", address="10.0.0.100"),
                proxy("web", "web-2", node="b", port=21001),
            ],
        }
    )
    assert view.endpoints("web") == (
        ep("10.0.0.100", 21000, "web-1"),
        ep("10.0.0.2", 21001, "web-2", "b"),
    )
    assert "web-sidecar-proxy" not in view.services


def test_unhealthy_instance_or_sidecar_removes_the_endpoint() -> None:
    view = build_view(
        {
            "web": [
                app("web", "web-1", status="critical"),  # sidecar fine, app down
                app("web", "web-2", node="b"),  # app fine, sidecar down
            ],
            "web-sidecar-proxy": [
                proxy("web", "web-1"),
                proxy("web", "web-2", node="b", status="critical"),
            ],
        }
    )
    assert view.endpoints("web") == ()
    assert "web" in view.services  # known, nothing healthy


def test_sidecar_for_another_node_or_instance_does_not_count() -> None:
    view = build_view(
        {
            "web": [app("web", "web-1")],
            "web-sidecar-proxy": [
                proxy("web", "web-1", node="b"),  # names web-1 but runs elsewhere
                proxy("web", "web-9"),  # same node, other instance
            ],
        }
    )
    # No sidecar fronts web-1 where it runs: it is a plain instance.
    assert view.endpoints("web") == (ep("10.0.0.1", 8080, "web-1", sidecar=False),)


def test_instance_marked_as_meshed_waits_for_its_sidecar() -> None:
    marked = app("web", "web-1", meta={SIDECAR_META_KEY: "web-1-sidecar-proxy"})
    # The proxy's health has not arrived yet: never route around the mesh meanwhile.
    assert build_view({"web": [marked]}).endpoints("web") == ()
    view = build_view({"web": [marked], "web-sidecar-proxy": [proxy("web", "web-1")]})
    assert view.endpoints("web") == (ep("10.0.0.1", 21000, "web-1"),)


def test_sidecar_without_destination_id_fronts_the_service_on_its_node() -> None:
    view = build_view({"web": [app("web", "web-1")], "web-sidecar-proxy": [proxy("web", "")]})
    assert view.endpoints("web") == (ep("10.0.0.1", 21000, "web-1"),)


def test_maintenance_removes_an_endpoint() -> None:
    maint = CheckState("_service_maintenance:db-1", "Maintenance", "critical")
    entry = app("db", "db-1")
    entry = HealthEntry(entry.node, entry.node_address, entry.service, (*entry.checks, maint))
    assert build_view({"db": [entry]}).endpoints("db") == ()


def test_tags_come_from_the_instance() -> None:
    view = build_view(
        {
            "web": [app("web", "web-1", tags=("v2",))],
            "web-sidecar-proxy": [proxy("web", "web-1")],
        }
    )
    assert view.endpoints("web")[0].tags == ("v2",)


def test_meta_comes_from_the_instance_sorted_without_the_sidecar_marker() -> None:
    meta = {"zone": "b", SIDECAR_META_KEY: "web-1-sidecar-proxy", "version": "2"}
    view = build_view(
        {"web": [app("web", "web-1", meta=meta)], "web-sidecar-proxy": [proxy("web", "web-1")]}
    )
    assert view.endpoints("web")[0].meta == (("version", "2"), ("zone", "b"))


def test_proxy_services_and_portless_instances() -> None:
    assert is_proxy_service("web-sidecar-proxy", [])
    assert not is_proxy_service("web", [])
    assert is_proxy_service("edge", [proxy("web", "web-1")])
    view = build_view({"web-sidecar-proxy": [], "job": [app("job", "job-1", port=0)]})
    assert dict(view.services) == {"job": ()}


def test_view_is_deterministic_and_compares_by_value() -> None:
    health = {
        "web": [app("web", "web-2", node="b"), app("web", "web-1")],
        "db": [app("db", "db-1")],
    }
    one = build_view(health, version=1)
    two = build_view({k: list(reversed(v)) for k, v in reversed(list(health.items()))}, 2)
    assert one.same_services(two)
    assert list(one.services) == ["db", "web"]
    assert one.endpoints("web") == two.endpoints("web")
    assert one.endpoint_count == 3
    assert not one.same_services(DiscoveryView())
    assert DiscoveryView().endpoints("web") == ()


def _metrics(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {
        s.name: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("controld_")
    }


def test_watcher_starts_down_with_an_empty_view() -> None:
    registry = CollectorRegistry()
    watcher = RegistryWatcher(RegistrySettings(url="http://127.0.0.1:1"), metrics=registry)
    status = watcher.status
    assert (status.connected, status.last_error, status.last_contact) == (False, None, None)
    assert watcher.view == DiscoveryView()
    assert _metrics(registry) == {
        "controld_registry_up": 0.0,
        "controld_registry_watch_errors_total": 0.0,
        "controld_discovery_services": 0.0,
    }
