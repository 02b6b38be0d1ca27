"""Every policy field of the resources reaches the snapshot, one test per field path."""

from __future__ import annotations

from typing import Any

import pytest

from compiler.builders import defaults, ep, mesh, proxy, ratelimit, resolver, route, rset, view
from controld.compiler import Compiler, compile_snapshot, validate_resources
from meshcore.model.policy import (
    ConnectionLimits,
    FaultPolicy,
    HashPolicy,
    HealthCheck,
    LocalityPolicy,
    OutlierDetection,
    RetryBudget,
    RetryPolicy,
)
from meshcore.model.snapshot import Cluster

pytestmark = pytest.mark.timeout(60)

VIEW = view(
    {
        "api": [
            ep("10.0.0.1", tags=["v1"], zone="a"),
            ep("10.0.0.2", tags=["v1"], zone="b"),
            ep("10.0.0.3", tags=["v2"]),
        ],
        "web": [ep("10.0.2.1", zone="b")],
        "db": [ep("10.0.1.1", 5432)],
        "backup": [ep("10.0.9.1", zone="c")],
    }
)

RESILIENCE: dict[str, Any] = {
    "lb_policy": "ring_hash",
    "hash_policy": {"header": "X-User"},
    "locality": {"min_healthy_percent": 60},
    "panic_threshold_percent": 25,
    "retry_budget": {"percent": 5, "min_retries_per_second": 2, "ttl_s": 30},
    "limits": {
        "max_connections": 7,
        "max_pending_requests": 3,
        "max_requests": 50,
        "max_retries": 1,
    },
    "outlier_detection": {
        "consecutive_5xx": 4,
        "consecutive_gateway_errors": 2,
        "consecutive_local_origin_failures": 3,
        "interval_s": 1,
        "base_ejection_s": 5,
        "max_ejection_s": 60,
        "max_ejection_percent": 34,
        "success_rate": {"minimum_hosts": 3, "request_volume": 20, "stdev_factor": 1.5},
    },
    "health_check": {
        "kind": "http",
        "path": "/healthz",
        "interval_s": 1,
        "timeout_s": 0.5,
        "unhealthy_threshold": 2,
        "healthy_threshold": 1,
    },
}


def _cluster(resources: Any, name: str = "api", upstreams: tuple[str, ...] = ("api",)) -> Cluster:
    snap = compile_snapshot(VIEW, resources, proxy("x", "x", list(upstreams)))
    found = snap.cluster(name)
    assert found is not None
    return found


def test_service_defaults_settings_reach_the_cluster_unchanged() -> None:
    cluster = _cluster(rset(defaults("api", **RESILIENCE)))
    assert cluster.lb_policy == "ring_hash"
    assert cluster.hash_policy == HashPolicy(header="x-user")
    assert cluster.locality == LocalityPolicy(min_healthy_percent=60)
    assert cluster.panic_threshold_percent == 25
    assert cluster.retry_budget == RetryBudget(percent=5, min_retries_per_second=2, ttl_s=30)
    assert cluster.limits == ConnectionLimits.model_validate(RESILIENCE["limits"])
    assert cluster.outlier_detection == OutlierDetection.model_validate(
        RESILIENCE["outlier_detection"]
    )
    assert cluster.health_check == HealthCheck.model_validate(RESILIENCE["health_check"])


def test_limits_max_connections_is_not_the_per_endpoint_pool_cap() -> None:
    cluster = _cluster(rset(defaults("api", limits={"max_connections": 7})))
    assert cluster.limits is not None and cluster.limits.max_connections == 7
    assert cluster.limits.max_retries == ConnectionLimits().max_retries
    # The per-endpoint cap keeps its own default: the breaker is cluster-wide, in the sidecar.
    assert cluster.max_connections == Cluster.model_fields["max_connections"].default


def test_without_service_defaults_the_cluster_has_the_model_defaults() -> None:
    cluster = _cluster(rset())
    assert cluster.lb_policy == "round_robin"
    assert (cluster.hash_policy, cluster.locality, cluster.limits) == (None, None, None)
    assert (cluster.outlier_detection, cluster.health_check) == (None, None)
    assert cluster.retry_budget == RetryBudget()
    assert cluster.panic_threshold_percent == 50


def test_ewma_and_maglev_policies() -> None:
    assert _cluster(rset(defaults("api", lb_policy="ewma"))).lb_policy == "ewma"
    maglev = _cluster(rset(defaults("api", lb_policy="maglev", hash_policy={"source_ip": True})))
    assert maglev.lb_policy == "maglev"
    assert maglev.hash_policy == HashPolicy(source_ip=True)


def test_subset_clusters_take_the_service_settings() -> None:
    resources = rset(
        defaults("api", lb_policy="ewma", limits={"max_requests": 9}),
        resolver("api", subsets={"v1": {"tags": ["v1"]}}, default_subset="v1"),
    )
    cluster = _cluster(resources, "api~v1")
    assert (cluster.lb_policy, cluster.subset) == ("ewma", "v1")
    assert cluster.limits is not None and cluster.limits.max_requests == 9


def test_endpoints_carry_their_zone() -> None:
    cluster = _cluster(rset())
    assert [(e.host, e.zone) for e in cluster.endpoints] == [
        ("10.0.0.1", "a"),
        ("10.0.0.2", "b"),
        ("10.0.0.3", None),
    ]


def test_every_failover_tier_is_carried_with_its_priority() -> None:
    resources = rset(
        resolver(
            "api",
            subsets={"v1": {"tags": ["v1"]}},
            default_subset="v1",
            failover=[{"service": "web"}, {"service": "backup"}],
        )
    )
    cluster = _cluster(resources, "api~v1")
    assert [(e.host, e.priority, e.zone) for e in cluster.endpoints] == [
        ("10.0.0.1", 0, "a"),
        ("10.0.0.2", 0, "b"),
        ("10.0.2.1", 1, "b"),
        ("10.0.9.1", 2, "c"),
    ]


def test_an_empty_primary_subset_still_keeps_the_tiers() -> None:
    resources = rset(
        defaults("api", panic_threshold_percent=10),
        resolver(
            "api",
            subsets={"v9": {"tags": ["v9"]}},
            default_subset="v9",
            failover=[{"service": "web"}, {"service": "backup"}],
        ),
    )
    cluster = _cluster(resources, "api~v9")
    assert [(e.host, e.priority) for e in cluster.endpoints] == [("10.0.2.1", 1), ("10.0.9.1", 2)]
    assert cluster.panic_threshold_percent == 10


def test_mesh_escaped_slashes_reach_http_listeners_only() -> None:
    resources = rset(mesh(path_with_escaped_slashes="reject"), defaults("db", protocol="tcp"))
    snap = compile_snapshot(VIEW, resources, proxy("web-1", "web", ["api", "db"]))
    by_name = {x.name: x for x in snap.listeners}
    assert by_name["inbound"].path_with_escaped_slashes == "reject"
    assert by_name["outbound-api"].path_with_escaped_slashes == "reject"
    assert by_name["outbound-db"].path_with_escaped_slashes == "keep"
    tcp_service = compile_snapshot(VIEW, resources, proxy("db-1", "db", []))
    (inbound,) = tcp_service.listeners
    assert (inbound.protocol, inbound.path_with_escaped_slashes) == ("tcp", "keep")


def test_escaped_slashes_default_and_change_across_passes() -> None:
    compiler = Compiler()
    proxies = {"web-1": proxy("web-1", "web", ["api"])}
    first = compiler.compile_all(VIEW, rset(), proxies)["web-1"]
    assert {x.path_with_escaped_slashes for x in first[0].listeners} == {"keep"}
    second = compiler.compile_all(VIEW, rset(mesh(path_with_escaped_slashes="unescape")), proxies)[
        "web-1"
    ]
    assert {x.path_with_escaped_slashes for x in second[0].listeners} == {"unescape"}
    assert first[1] != second[1]


RETRIES = {
    "attempts": 3,
    "per_try_timeout_s": 0.5,
    "retry_on": ["connect-failure", "5xx", "retriable-4xx"],
    "retriable_status_codes": [409, 503],
    "backoff_base_s": 0.01,
    "backoff_max_s": 0.1,
}
FAULT = {
    "delay": {"percent": 10, "fixed_delay_s": 0.2},
    "abort": {"percent": 5, "status": 503},
    "headers": [{"name": "x-chaos", "exact": "1"}],
}


def test_retry_and_fault_policies_pass_through_routes_unchanged() -> None:
    resources = rset(
        mesh(retries={"attempts": 2, "retry_on": ["reset"]}),
        route(
            "api",
            {"name": "r", "match": {"path": {"prefix": "/r"}}, "retries": RETRIES},
            {"name": "f", "match": {"path": {"prefix": "/f"}}, "fault": FAULT},
        ),
    )
    snap = compile_snapshot(VIEW, resources, proxy("x", "x", ["api"]))
    (table,) = snap.route_tables
    r, f, catch_all = table.routes
    assert r.retries == RetryPolicy.model_validate(RETRIES)
    assert r.fault is None
    assert f.fault == FaultPolicy.model_validate(FAULT)
    assert f.fault is not None and f.fault.headers[0].name == "x-chaos"
    # A rule without retries, and the catch-all, take the mesh's.
    mesh_retries = RetryPolicy(attempts=2, retry_on=("reset",))
    assert f.retries == mesh_retries
    assert catch_all.retries == mesh_retries


def test_a_rate_limit_match_on_a_tcp_destination_is_refused() -> None:
    resources = rset(
        defaults("db", protocol="tcp"),
        ratelimit("db-posts", "db", match={"methods": ["POST"]}),
        ratelimit("db-all", "db"),
        ratelimit("api-posts", "api", match={"methods": ["POST"]}),
    )
    problems = validate_resources(resources)
    assert [(p.kind, p.name, p.path) for p in problems] == [("RateLimit", "db-posts", "spec.match")]
    assert problems[0].message == "tcp services are limited per connection; match is for http"
    assert str(problems[0]).startswith("RateLimit/db-posts: spec.match: tcp services")


def test_a_rate_limit_match_is_refused_when_tcp_is_the_mesh_default() -> None:
    resources = rset(
        mesh(default_protocol="tcp"),
        ratelimit("any", "db", match={"path": {"prefix": "/"}}),
        defaults("api", protocol="http"),
        ratelimit("api-ok", "api", match={"path": {"prefix": "/"}}),
    )
    assert [(p.name, p.path) for p in validate_resources(resources)] == [("any", "spec.match")]
