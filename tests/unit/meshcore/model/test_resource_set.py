"""ResourceSet lookups and copy-on-change."""

from __future__ import annotations

from typing import Any

from meshcore.model.resources import (
    AccessPolicy,
    HTTPRoute,
    MeshSpec,
    RateLimit,
    Resource,
    ResourceSet,
    parse_resource,
)


def _r(kind: str, name: str, **spec: Any) -> Resource:
    data: dict[str, Any] = {"kind": kind, "metadata": {"name": name}}
    if spec:
        data["spec"] = spec
    return parse_resource(data)


def _set() -> ResourceSet:
    return ResourceSet.of(
        [
            _r("Mesh", "default", trust_domain="corp"),
            _r("ServiceDefaults", "api", protocol="tcp"),
            _r("ServiceResolver", "api", subsets={"v1": {"tags": ["v1"]}}),
            _r("HTTPRoute", "zz-api", service="api"),
            _r("HTTPRoute", "web-route", service="web"),
            _r("AccessPolicy", "b", destination="api"),
            _r("AccessPolicy", "a", destination="api"),
            _r("AccessPolicy", "c", destination="web"),
            _r("RateLimit", "rl", destination="api", requests_per_second=1, burst=1),
        ],
        revision=7,
    )


def test_lookups() -> None:
    rs = _set()
    assert rs.revision == 7
    assert len(rs) == 9
    assert rs.mesh().trust_domain == "corp"
    sd = rs.service_defaults("api")
    assert sd is not None
    assert sd.protocol == "tcp"
    assert rs.service_defaults("web") is None
    resolver = rs.resolver("api")
    assert resolver is not None
    assert set(resolver.subsets) == {"v1"}
    assert rs.resolver("web") is None
    route = rs.route_for("api")
    assert isinstance(route, HTTPRoute)
    assert route.metadata.name == "zz-api"
    assert rs.route_for("db") is None
    assert [p.metadata.name for p in rs.access_policies_for("api")] == ["a", "b"]
    assert all(isinstance(p, AccessPolicy) for p in rs.access_policies_for("web"))
    assert rs.access_policies_for("db") == ()
    assert [r.metadata.name for r in rs.rate_limits_for("api")] == ["rl"]
    assert all(isinstance(r, RateLimit) for r in rs.rate_limits_for("api"))
    assert rs.rate_limits_for("web") == ()
    assert [r.metadata.name for r in rs.of_kind("AccessPolicy")] == ["a", "b", "c"]
    assert rs.of_kind("Gateway") == ()
    got = rs.get("Mesh", "default")
    assert got is not None
    assert got.kind == "Mesh"


def test_mesh_defaults_when_absent() -> None:
    assert ResourceSet().mesh() == MeshSpec()
    assert ResourceSet().revision == 0


def test_with_changes_is_a_new_set() -> None:
    rs = _set()
    changed = rs.with_changes(
        upserts=[_r("AccessPolicy", "a", destination="web"), _r("Mesh", "default")],
        deletes=[("AccessPolicy", "b"), ("HTTPRoute", "missing")],
        revision=8,
    )
    assert changed.revision == 8
    assert [p.metadata.name for p in changed.access_policies_for("api")] == []
    assert [p.metadata.name for p in changed.access_policies_for("web")] == ["a", "c"]
    assert changed.mesh() == MeshSpec()
    # The original is untouched, indexes included.
    assert [p.metadata.name for p in rs.access_policies_for("api")] == ["a", "b"]
    assert rs.mesh().trust_domain == "corp"
    assert rs.with_changes().revision == 7
    assert rs.with_changes() == rs
    assert changed != rs


def test_sets_compare_by_content() -> None:
    assert _set() == _set()
    assert _set() != ResourceSet.of([], revision=7)
