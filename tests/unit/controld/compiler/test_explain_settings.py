"""explain: each cluster's balancing, budget, limits, outlier detection and health check, as
the snapshot carries them, and meshctl's reading of them."""

from __future__ import annotations

import json

import pytest

from compiler.builders import defaults, ep, route, rset, view
from controld.compiler import explain
from meshcore.api.explain import ExplainAnswer
from tui.cli.explain import explain_lines

pytestmark = pytest.mark.timeout(60)

VIEW = view({"api": [ep("10.0.0.1", zone="a"), ep("10.0.0.2")], "web": [ep("10.0.2.1")]})
RESOURCES = rset(
    defaults(
        "api",
        lb_policy="ring_hash",
        hash_policy={"cookie": "session"},
        locality={"min_healthy_percent": 60},
        panic_threshold_percent=20,
        retry_budget={"percent": 5, "min_retries_per_second": 2, "ttl_s": 30},
        limits={"max_connections": 100, "max_pending_requests": 10, "max_requests": 200},
        outlier_detection={
            "consecutive_5xx": 3,
            "success_rate": {"minimum_hosts": 2, "request_volume": 10, "stdev_factor": 1.5},
        },
        health_check={"path": "/healthz", "interval_s": 1},
        connect_timeout_s=0.5,
    )
)


def test_cluster_settings_in_the_json() -> None:
    ex = explain(VIEW, RESOURCES, source="web", destination="api")
    data = ex.model_dump(mode="json")
    assert json.loads(json.dumps(data)) == data
    (cluster,) = data["clusters"]
    settings = cluster["settings"]
    assert settings["lb_policy"] == "ring_hash"
    assert settings["hash_policy"] == {"cookie": "session"}
    assert settings["locality"] == {"min_healthy_percent": 60}
    assert settings["panic_threshold_percent"] == 20
    assert settings["connect_timeout_s"] == 0.5
    assert settings["retry_budget"] == {"percent": 5, "min_retries_per_second": 2, "ttl_s": 30}
    assert settings["limits"] == {
        "max_connections": 100,
        "max_pending_requests": 10,
        "max_requests": 200,
        "max_retries": 3,
    }
    assert settings["outlier_detection"]["consecutive_5xx"] == 3
    assert settings["outlier_detection"]["success_rate"]["stdev_factor"] == 1.5
    assert settings["health_check"]["path"] == "/healthz"
    assert [e["zone"] for e in cluster["endpoints"]] == ["a", None]


def test_unset_settings_are_left_out() -> None:
    ex = explain(VIEW, rset(), source="web", destination="api")
    settings = ex.clusters[0].settings
    assert set(settings) == {
        "lb_policy",
        "connect_timeout_s",
        "panic_threshold_percent",
        "retry_budget",
    }
    assert settings["lb_policy"] == "round_robin"


def test_meshctl_prints_the_settings() -> None:
    data = explain(VIEW, RESOURCES, source="web", destination="api").model_dump(mode="json")
    lines = explain_lines(ExplainAnswer.model_validate(data))
    assert "      endpoints: 10.0.0.1:21000 [mTLS] zone a, 10.0.0.2:21000 [mTLS]" in lines
    assert (
        "      balancing: ring_hash on cookie session, own zone first while >= 60% healthy,"
        " panic below 20% healthy, connect timeout 0.5s"
    ) in lines
    assert "      retry budget: 5% of requests + 2/s (over 30s)" in lines
    assert (
        "      limits (this sidecar, whole cluster): connections 100, pending 10,"
        " requests 200, retries 3"
    ) in lines
    outlier = next(line for line in lines if "outlier detection" in line)
    assert "eject after 3 x 5xx" in outlier
    assert "success rate below mean - 1.5 stdev (2+ endpoints with 10+ requests)" in outlier
    assert (
        "      health check: http GET /healthz every 1s, timeout 2s, down after 3 failures,"
        " up after 2 successes"
    ) in lines


def test_meshctl_without_settings_prints_no_settings() -> None:
    data = explain(VIEW, rset(), source="web", destination="api").model_dump(mode="json")
    lines = explain_lines(ExplainAnswer.model_validate(data))
    assert (
        "      balancing: round_robin, any zone, panic below 50% healthy, connect timeout 5s"
    ) in lines
    assert not any("limits" in line or "health check" in line for line in lines)
    data["clusters"][0].pop("settings")
    assert not any(
        "balancing" in line for line in explain_lines(ExplainAnswer.model_validate(data))
    )


def test_the_matched_route_policies_are_shown() -> None:
    resources = rset(
        route(
            "api",
            {
                "name": "r",
                "retries": {"attempts": 3, "retry_on": ["connect-failure"]},
                "fault": {"abort": {"percent": 5, "status": 503}},
                "rewrite": {"path_prefix": "/v2/"},
            },
        )
    )
    data = explain(VIEW, resources, source="web", destination="api").model_dump(mode="json")
    policy = data["route_policy"]
    assert policy["retries"]["attempts"] == 3
    assert policy["retries"]["retry_on"] == ["connect-failure"]
    assert policy["retries"]["backoff_max_s"] == 0.25
    assert policy["fault"] == {"abort": {"percent": 5.0, "status": 503}}
    assert policy["rewrite"] == {"path_prefix": "/v2/"}
    assert "request_headers" not in policy
    lines = explain_lines(ExplainAnswer.model_validate(data))
    assert '  rewrite: {"path_prefix": "/v2/"}' in lines
    assert any(line.startswith('  retries: {"attempts": 3') for line in lines)
