"""Snapshot extensions for compiled policy: route policies, endpoint tiers, identity, authz."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from meshcore.model import (
    AccessRule,
    Cluster,
    Endpoint,
    InboundPolicy,
    QueryMatch,
    RateLimitRule,
    Route,
    RouteMatch,
    Snapshot,
    WorkloadIdentity,
)
from meshcore.model.loading import load_model

ROOT = Path(__file__).resolve().parents[4]


def _snapshot(**extra: Any) -> dict[str, Any]:
    routes = extra.pop("routes", [{"name": "all", "backends": [{"cluster": "api"}]}])
    return {
        "version": 1,
        "listeners": [
            {
                "name": "outbound-api",
                "direction": "outbound",
                "address": "127.0.0.1:15001",
                "route_table": "api",
            }
        ],
        "route_tables": [{"name": "api", "routes": routes}],
        "clusters": [
            {"name": "api", "service": "api", "endpoints": [{"host": "127.0.0.1", "port": 9}]},
            {"name": "api~v2", "service": "api", "subset": "v2"},
        ],
        **extra,
    }


@pytest.mark.parametrize(
    "path",
    sorted([*ROOT.glob("examples/**/snapshot*.yaml"), *ROOT.glob("bench/templates/*snapshot*")]),
    ids=str,
)
def test_existing_snapshot_files_still_load(path: Path, tmp_path: Path) -> None:
    # Bench templates hold ``@name@`` placeholders for ports.
    ports = iter(range(20000, 21000))
    text = re.sub(r"@\w+@", lambda _: str(next(ports)), path.read_text(encoding="utf-8"))
    copy = tmp_path / path.name
    copy.write_text(text, encoding="utf-8")
    snapshot = load_model(Snapshot, copy)
    assert snapshot.identity is None
    assert snapshot.mtls == "disabled"
    assert snapshot.inbound_policy is None
    assert snapshot.rate_limits == ()


def test_full_policy_snapshot() -> None:
    data = _snapshot(
        routes=[
            {
                "name": "canary",
                "match": {"query": [{"name": "v", "exact": "2"}]},
                "backends": [{"cluster": "api", "weight": 9}, {"cluster": "api~v2"}],
                "retries": {"attempts": 3},
                "fault": {"abort": {"percent": 1, "status": 503}},
                "request_headers": {"set": {"x-a": "1"}},
                "response_headers": {"remove": ["server"]},
                "rewrite": {"host": "api.internal"},
                "mirror": {"cluster": "api~v2", "percent": 10},
            },
            {"name": "moved", "redirect": {"scheme": "https", "status": 308}},
        ],
        identity={"service": "web", "trust_domain": "corp"},
        mtls="strict",
        inbound_policy={
            "rules": [{"sources": ["spiffe://corp/ns/default/svc/web"], "action": "allow"}]
        },
        rate_limits=[{"name": "rl", "requests_per_second": 10, "burst": 5}],
    )
    snapshot = Snapshot.model_validate(data)
    route = snapshot.route_tables[0].routes[0]
    assert route.match.query == (QueryMatch(name="v", exact="2"),)
    assert route.retries is not None
    assert route.retries.retry_on == ("connect-failure", "reset", "gateway-error")
    assert route.mirror is not None
    assert route.mirror.cluster == "api~v2"
    moved = snapshot.route_tables[0].routes[1]
    assert moved.backends == ()
    assert snapshot.identity is not None
    assert snapshot.identity.spiffe_id == "spiffe://corp/ns/default/svc/web"
    assert snapshot.inbound_policy is not None
    assert snapshot.inbound_policy.default_action == "deny"
    assert snapshot.rate_limits[0] == RateLimitRule(name="rl", requests_per_second=10, burst=5)
    assert Snapshot.model_validate(snapshot.model_dump(mode="json")) == snapshot


def test_mirror_cluster_must_exist() -> None:
    data = _snapshot(
        routes=[{"name": "r", "backends": [{"cluster": "api"}], "mirror": {"cluster": "nope"}}]
    )
    with pytest.raises(ValidationError, match="route api/r names unknown cluster 'nope'"):
        Snapshot.model_validate(data)


def test_empty_backends_only_with_redirect() -> None:
    with pytest.raises(ValidationError, match="at least 1 item unless redirect is set"):
        Route.model_validate({"name": "r"})
    assert Route.model_validate({"name": "r", "redirect": {"host": "x"}}).backends == ()


def test_endpoint_and_cluster_extensions() -> None:
    endpoint = Endpoint(host="10.0.0.1", port=80)
    assert (endpoint.priority, endpoint.tags) == (0, ())
    assert Endpoint(host="h", port=1, priority=2, tags=("v1",)).priority == 2
    with pytest.raises(ValidationError):
        Endpoint(host="h", port=1, priority=-1)
    cluster = Cluster.model_validate(
        {
            "name": "api~v1",
            "service": "api",
            "subset": "v1",
            "limits": {"max_connections": 10},
            "outlier_detection": {},
            "health_check": {"kind": "tcp"},
        }
    )
    assert cluster.limits is not None
    assert cluster.limits.max_requests == 1024
    assert cluster.health_check is not None
    assert cluster.health_check.kind == "tcp"


def test_identity_defaults() -> None:
    identity = WorkloadIdentity(service="api")
    assert identity.spiffe_id == "spiffe://mesh.local/ns/default/svc/api"


def test_inbound_policy_rules_share_the_access_rule() -> None:
    policy = InboundPolicy(
        rules=(AccessRule(sources=("*",), action="audit"),), default_action="allow"
    )
    assert policy.rules[0].permissions == ()


def test_rate_limit_names_unique() -> None:
    rl = {"name": "x", "requests_per_second": 1, "burst": 1}
    with pytest.raises(ValidationError, match="duplicate rate limits: x"):
        Snapshot.model_validate(_snapshot(rate_limits=[rl, rl]))
    with pytest.raises(ValidationError):
        RateLimitRule(name="x", requests_per_second=0, burst=1)
    assert RateLimitRule(name="x", requests_per_second=1, burst=1, match=RouteMatch()).match


def test_mtls_values() -> None:
    with pytest.raises(ValidationError):
        Snapshot.model_validate(_snapshot(mtls="on"))
