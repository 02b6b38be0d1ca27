"""explain: a request traced through the compiled snapshots."""

from __future__ import annotations

import json

from compiler.builders import access, defaults, ep, proxy, ratelimit, resolver, route, rset, view
from controld.compiler import explain
from meshcore.api.explain import EndpointMix, ExplainMirror

SUBSETS = {"v1": {"tags": ["v1"]}, "v2": {"tags": ["v2"]}}
VIEW = view(
    {
        "api": [ep("10.0.0.1", tags=["v1"]), ep("10.0.0.2", tags=["v2"])],
        "web": [ep("10.0.2.1")],
        "db": [ep("10.0.1.1", 5432)],
    }
)
RESOURCES = rset(
    route(
        "api",
        {
            "name": "canary",
            "match": {"headers": [{"name": "x-canary", "exact": "1"}], "query": [{"name": "b"}]},
            "backends": [{"subset": "v2", "weight": 3}, {"subset": "v1", "weight": 1}],
            "mirror": {"service": "web", "percent": 10},
        },
        {"name": "old", "match": {"path": {"prefix": "/old"}}, "redirect": {"path": "/new"}},
    ),
    resolver("api", subsets=SUBSETS, default_subset="v1", failover=[{"service": "web"}]),
    access(
        "api-access",
        "api",
        {"sources": ["admin"], "action": "deny"},
        {"sources": ["web"], "action": "allow", "permissions": [{"methods": ["GET"]}]},
    ),
    ratelimit("all", "api"),
    ratelimit("posts", "api", match={"methods": ["POST"]}),
    defaults("db", protocol="tcp"),
)


def test_matched_route_backends_clusters_and_access() -> None:
    ex = explain(
        VIEW,
        RESOURCES,
        source="web",
        destination="api",
        path="/x?b=1",
        headers={"X-Canary": "1"},
    )
    assert ex.route == "canary"
    assert ex.listener == "outbound-api" and ex.protocol == "http"
    assert [(b.cluster, b.weight, b.percent) for b in ex.backends] == [
        ("api~v2", 3, 75.0),
        ("api~v1", 1, 25.0),
    ]
    assert ex.mirror == ExplainMirror(cluster="web", percent=10.0)
    assert [c.name for c in ex.clusters] == ["api~v2", "api~v1", "web"]
    v2 = ex.clusters[0]
    assert (v2.service, v2.subset) == ("api", "v2")
    assert [(e.host, e.priority) for e in v2.endpoints] == [("10.0.0.2", 0), ("10.0.2.1", 1)]
    assert ex.source_id == "spiffe://mesh.local/ns/default/svc/web"
    assert (ex.access.action, ex.access.rule_index, ex.access.policy) == (
        "allow",
        1,
        "api-access",
    )
    assert ex.rate_limits == ("all",)
    assert ex.mtls == "permissive"
    data = ex.model_dump(mode="json")
    assert json.loads(json.dumps(data)) == data
    assert data["access"]["policy"] == "api-access"
    assert data["clusters"][0]["endpoints"][1] == {
        "host": "10.0.2.1",
        "port": 21000,
        "priority": 1,
        "tags": [],
        "tls": "mtls",
        "zone": None,
    }


def test_unmatched_rules_fall_to_the_default_route_and_default_action() -> None:
    ex = explain(VIEW, RESOURCES, source="db", destination="api", method="POST", path="/x")
    assert ex.route == "default"
    assert [b.cluster for b in ex.backends] == ["api~v1"]
    assert (ex.access.action, ex.access.rule_index, ex.access.policy) == ("deny", None, None)
    assert ex.access.reason == "no rule matched (default deny)"
    assert ex.rate_limits == ("all", "posts")


def test_redirect_and_deny_rule() -> None:
    ex = explain(VIEW, RESOURCES, source="admin", destination="api", path="/old/x")
    assert ex.route == "old"
    assert ex.backends == ()
    assert ex.redirect is not None and ex.redirect["path"] == "/new"
    assert (ex.access.action, ex.access.rule_index) == ("deny", 0)
    assert any("redirect" in n for n in ex.notes)


def test_tcp_destination_and_spiffe_source() -> None:
    source = "spiffe://mesh.local/ns/default/svc/web"
    ex = explain(VIEW, RESOURCES, source=source, destination="db")
    assert (ex.protocol, ex.route, ex.source_id) == ("tcp", None, source)
    assert [c.name for c in ex.clusters] == ["db"]
    assert ex.access.action == "allow"
    assert ex.access.reason == "no inbound policy (allow)"


def test_with_a_real_proxy_descriptor() -> None:
    given = proxy("web-7", "web", ["db"])
    ex = explain(VIEW, RESOURCES, source="ignored", destination="api", source_proxy=given)
    assert ex.source_id == "spiffe://mesh.local/ns/default/svc/web"
    assert ex.route == "default"
    assert any("not an upstream" in n for n in ex.notes)
    ex = explain(VIEW, RESOURCES, source="web", destination="db", source_proxy=given)
    assert ex.notes == ("'db' is a tcp service: no HTTP routing applies",)


def test_empty_cluster_is_noted() -> None:
    ex = explain(view({}), rset(), source="web", destination="api")
    assert ex.route == "default"
    assert [c.name for c in ex.clusters] == ["api"]
    assert any("no healthy endpoint" in n for n in ex.notes)


def test_mixed_endpoints_show_the_mix_and_the_excluded_ones() -> None:
    mixed = [ep("10.0.0.1"), ep("10.0.0.9", sidecar=False)]
    permissive = explain(view({"api": mixed}), rset(), source="web", destination="api")
    [cluster] = permissive.clusters
    assert [(e.host, e.tls) for e in cluster.endpoints] == [
        ("10.0.0.1", "mtls"),
        ("10.0.0.9", "plaintext"),
    ]
    assert cluster.mix == EndpointMix(sidecar=1, plain=1, mtls=1, plaintext=1)
    strict = explain(
        view({"api": mixed}), rset(defaults("api", mtls="strict")), source="web", destination="api"
    )
    [cluster] = strict.clusters
    assert [(e.host, e.tls) for e in cluster.endpoints] == [("10.0.0.1", "mtls")]
    [left_out] = cluster.mix.excluded
    assert (left_out.host, left_out.port, left_out.service) == ("10.0.0.9", 21000, "api")
    assert "STRICT" in left_out.reason
    assert any("10.0.0.9:21000" in note and "excluded" in note for note in strict.notes)
    data = strict.model_dump(mode="json")
    assert data["clusters"][0]["mix"]["excluded"] == [left_out.model_dump()]


def test_the_path_is_normalized_as_the_sidecar_does() -> None:
    # /other/../old/x is /old/x to the sidecar: it takes the redirect rule, not the default.
    ex = explain(VIEW, RESOURCES, source="web", destination="api", path="/other/../old/x")
    assert ex.route == "old"
    assert "the sidecar normalizes the path to /old/x" in ex.notes
    assert explain(VIEW, RESOURCES, source="web", destination="api", path="/old").route == "old"
