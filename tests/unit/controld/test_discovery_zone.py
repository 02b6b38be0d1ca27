"""Endpoint zones: the instance's registry ``Service.Meta`` ``zone``, else its node's."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from controld.discovery import build_view
from meshcore.registry import CONNECT_PROXY, CheckState, HealthEntry, ProxySpec, ServiceInstance
from meshcore.registry.model import parse_health_entries

pytestmark = pytest.mark.timeout(30)

PASSING = (CheckState("serfHealth", "Serf", "passing"),)


def entry(
    sid: str,
    *,
    node: str = "n1",
    meta: dict[str, str] | None = None,
    node_meta: dict[str, str] | None = None,
    port: int = 8080,
) -> HealthEntry:
    return HealthEntry(
        node,
        "10.0.0.1",
        ServiceInstance(sid, "api", "", port, meta=MappingProxyType(meta or {})),
        PASSING,
        node_meta=MappingProxyType(node_meta or {}),
    )


def test_zone_from_service_meta_beats_node_meta() -> None:
    view = build_view(
        {"api": [entry("api-1", meta={"zone": "a"}, node_meta={"zone": "node-zone"})]}
    )
    (endpoint,) = view.endpoints("api")
    assert endpoint.zone == "a"


def test_zone_from_node_meta_when_the_service_has_none() -> None:
    view = build_view({"api": [entry("api-1", node_meta={"zone": "b", "rack": "r1"})]})
    (endpoint,) = view.endpoints("api")
    assert endpoint.zone == "b"


def test_no_zone_anywhere_and_empty_zone_is_none() -> None:
    view = build_view(
        {"api": [entry("api-1"), entry("api-2", port=8081, meta={"zone": ""}, node="n2")]}
    )
    assert [e.zone for e in view.endpoints("api")] == [None, None]


def test_a_sidecar_endpoint_takes_the_instance_zone_not_the_proxy_node() -> None:
    proxy = HealthEntry(
        "n1",
        "10.0.0.1",
        ServiceInstance(
            "api-1-sidecar-proxy",
            "api-sidecar-proxy",
            "",
            21000,
            meta=MappingProxyType({"zone": "proxy-zone"}),
            kind=CONNECT_PROXY,
            proxy=ProxySpec("api", "api-1", "127.0.0.1", 8080),
        ),
        PASSING,
    )
    view = build_view(
        {
            "api": [entry("api-1", node_meta={"zone": "c"})],
            "api-sidecar-proxy": [proxy],
        }
    )
    (endpoint,) = view.endpoints("api")
    assert (endpoint.port, endpoint.sidecar, endpoint.zone) == (21000, True, "c")


def test_zone_changes_change_the_view() -> None:
    before = build_view({"api": [entry("api-1", node_meta={"zone": "a"})]})
    after = build_view({"api": [entry("api-1", node_meta={"zone": "b"})]})
    assert not before.same_services(after)


def test_health_entries_carry_the_node_meta() -> None:
    body = [
        {
            "Node": {"Node": "n1", "Address": "10.0.0.1", "Meta": {"zone": "eu-1a"}},
            "Service": {"ID": "api-1", "Service": "api", "Port": 8080, "Meta": None},
            "Checks": [],
        },
        {
            "Node": {"Node": "n2", "Address": "10.0.0.2"},
            "Service": {"ID": "api-2", "Service": "api", "Port": 8080},
            "Checks": [],
        },
    ]
    first, second = parse_health_entries(body)
    assert dict(first.node_meta) == {"zone": "eu-1a"}
    assert dict(second.node_meta) == {}
    view = build_view({"api": [first, second]})
    assert [e.zone for e in view.endpoints("api")] == ["eu-1a", None]
