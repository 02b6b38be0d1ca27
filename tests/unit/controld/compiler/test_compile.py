"""compile_snapshot / Compiler, tested with values: one test per compile rule."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from compiler.builders import (
    access,
    defaults,
    ep,
    mesh,
    proxy,
    ratelimit,
    resolver,
    route,
    rset,
    view,
)
from controld.compiler import Compiler, compile_snapshot, snapshot_hash
from controld.compiler.hashing import FragmentHasher
from meshcore.model import Snapshot

API = [ep("10.0.0.1", tags=["v1"]), ep("10.0.0.2", tags=["v2"], meta={"zone": "b"})]
VIEW = view({"api": API, "db": [ep("10.0.1.1", 5432)], "web": [ep("10.0.2.1")]})
SUBSETS = {"v1": {"tags": ["v1"]}, "v2": {"tags": ["v2"]}}


def test_listeners_identity_and_mtls() -> None:
    resources = rset(defaults("db", protocol="tcp"), defaults("web", mtls="strict"))
    snap = compile_snapshot(VIEW, resources, proxy("web-1", "web", ["db", "api"]))
    names = [x.name for x in snap.listeners]
    assert names == ["inbound", "outbound-api", "outbound-db"]
    inbound, api, db = snap.listeners
    assert (inbound.direction, str(inbound.address), inbound.protocol) == (
        "inbound",
        "127.0.0.1:15006",
        "http",
    )
    assert inbound.target_cluster == "local_app"
    assert (api.direction, str(api.address), api.protocol, api.route_table) == (
        "outbound",
        "127.0.0.1:15002",
        "http",
        "api",
    )
    assert (str(db.address), db.protocol, db.cluster, db.route_table) == (
        "127.0.0.1:15001",
        "tcp",
        "db",
        None,
    )
    assert [t.name for t in snap.route_tables] == ["api"]
    assert [c.name for c in snap.clusters] == ["api", "db"]
    assert snap.identity is not None
    assert snap.identity.spiffe_id == "spiffe://mesh.local/ns/default/svc/web"
    assert snap.mtls == "strict"
    assert snap.version == 0
    assert snap.inbound_policy is None
    assert snap.rate_limits == ()


def test_protocol_and_mtls_defaults_come_from_the_mesh() -> None:
    resources = rset(mesh(default_protocol="tcp", mtls="disabled", trust_domain="corp.example"))
    snap = compile_snapshot(VIEW, resources, proxy("web-1", "web", ["api"]))
    assert [(x.name, x.protocol) for x in snap.listeners] == [
        ("inbound", "tcp"),
        ("outbound-api", "tcp"),
    ]
    assert snap.route_tables == ()
    assert snap.mtls == "disabled"
    assert snap.identity is not None
    assert snap.identity.spiffe_id == "spiffe://corp.example/ns/default/svc/web"


def test_no_inbound_listener_without_an_inbound_address() -> None:
    snap = compile_snapshot(VIEW, rset(), proxy("cli", "web", ["api"], inbound=None))
    assert [x.name for x in snap.listeners] == ["outbound-api"]


def test_without_a_route_the_table_is_one_catch_all() -> None:
    resources = rset(mesh(timeout_s=7, retries={"attempts": 3}))
    snap = compile_snapshot(VIEW, resources, proxy("web-1", "web", ["api"]))
    (table,) = snap.route_tables
    (only,) = table.routes
    assert only.name == "default"
    assert [b.cluster for b in only.backends] == ["api"]
    assert only.timeout_s == 7
    assert only.retries is not None and only.retries.attempts == 3
    assert only.match.path is None and not only.match.headers


def test_rules_become_routes_in_order() -> None:
    rules: list[dict[str, Any]] = [
        {
            "match": {"path": {"prefix": "/v2"}, "query": [{"name": "beta"}]},
            "backends": [{"subset": "v2", "weight": 90}, {"subset": "v1", "weight": 10}],
            "timeout_s": 2,
            "retries": {"attempts": 4},
            "fault": {"abort": {"percent": 5, "status": 503}},
            "request_headers": {"set": {"X-A": "1"}},
            "response_headers": {"remove": ["server"]},
            "rewrite": {"path_prefix": "/"},
        },
        {"name": "old", "match": {"path": {"prefix": "/old"}}, "redirect": {"path": "/new"}},
        {"name": "other", "backends": [{"service": "web"}], "mirror": {"service": "db"}},
        {"match": {"methods": ["POST"]}},
    ]
    resources = rset(route("api", *rules), resolver("api", subsets=SUBSETS), mesh(timeout_s=9))
    snap = compile_snapshot(VIEW, resources, proxy("web-1", "web", ["api"]))
    (table,) = snap.route_tables
    assert [r.name for r in table.routes] == ["rule-0", "old", "other", "rule-3", "default"]
    r0, old, other, r3, default = table.routes
    assert r0.match.path is not None and r0.match.path.prefix == "/v2"
    assert [q.name for q in r0.match.query] == ["beta"]
    assert [(b.cluster, b.weight) for b in r0.backends] == [("api~v2", 90), ("api~v1", 10)]
    assert (r0.timeout_s, r0.retries and r0.retries.attempts) == (2, 4)
    assert r0.fault is not None and r0.fault.abort is not None
    assert r0.request_headers is not None and r0.request_headers.set == {"x-a": "1"}
    assert r0.response_headers is not None and r0.response_headers.remove == ("server",)
    assert r0.rewrite is not None and r0.rewrite.path_prefix == "/"
    assert old.backends == () and old.redirect is not None and old.redirect.path == "/new"
    assert old.timeout_s == 9 and old.retries is None
    assert [b.cluster for b in other.backends] == ["web"]
    assert other.mirror is not None and (other.mirror.cluster, other.mirror.percent) == ("db", 100)
    assert [b.cluster for b in r3.backends] == ["api"]
    assert r3.match.methods == ("POST",)
    assert [b.cluster for b in default.backends] == ["api"]
    assert [c.name for c in snap.clusters] == ["api", "api~v1", "api~v2", "db", "web"]
    assert Snapshot.model_validate(snap.model_dump()) == snap


def test_default_subset_takes_plain_references() -> None:
    resources = rset(
        route("api", {"match": {"path": {"prefix": "/x"}}}, {"backends": [{"subset": "v2"}]}),
        resolver("api", subsets=SUBSETS, default_subset="v1"),
    )
    snap = compile_snapshot(VIEW, resources, proxy("web-1", "web", ["api"]))
    (table,) = snap.route_tables
    assert [[b.cluster for b in r.backends] for r in table.routes] == [
        ["api~v1"],
        ["api~v2"],
        ["api~v1"],
    ]
    assert [c.name for c in snap.clusters] == ["api~v1", "api~v2"]
    tcp = rset(
        resolver("api", subsets=SUBSETS, default_subset="v2"), defaults("api", protocol="tcp")
    )
    snap = compile_snapshot(VIEW, tcp, proxy("web-1", "web", ["api"]))
    assert snap.listeners[1].cluster == "api~v2"
    assert [c.name for c in snap.clusters] == ["api~v2"]


def test_subset_endpoints_need_every_tag_and_meta() -> None:
    eps = [
        ep("10.0.0.1", tags=["v1"]),
        ep("10.0.0.2", tags=["v2", "canary"], meta={"zone": "b"}),
        ep("10.0.0.3", tags=["v2"], meta={"zone": "a"}),
        ep("10.0.0.4", tags=["v2", "canary"], meta={"zone": "a", "x": "y"}),
    ]
    subsets = {
        "v2": {"tags": ["v2"]},
        "canary-a": {"tags": ["v2", "canary"], "meta": {"zone": "a"}},
        "all": {},
    }
    rules = [{"backends": [{"subset": name}]} for name in ("v2", "canary-a", "all", "nope")]
    resources = rset(route("api", *rules), resolver("api", subsets=subsets))
    snap = compile_snapshot(view({"api": eps}), resources, proxy("w", "web", ["api"]))
    hosts = {c.name: [e.host for e in c.endpoints] for c in snap.clusters}
    assert hosts == {
        "api": ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"],
        "api~all": ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"],
        "api~canary-a": ["10.0.0.4"],
        "api~nope": [],  # an undefined subset selects nothing (validate_resources reports it)
        "api~v2": ["10.0.0.2", "10.0.0.3", "10.0.0.4"],
    }
    cluster = snap.cluster("api~v2")
    assert cluster is not None and cluster.subset == "v2" and cluster.service == "api"
    assert cluster.endpoints[0].tags == ("v2", "canary")


def test_failover_tiers_are_appended_with_priorities() -> None:
    resources = rset(
        resolver(
            "api",
            subsets=SUBSETS,
            default_subset="v1",
            failover=[{"subset": "v2"}, {"service": "web"}, {"subset": "v1"}],
        )
    )
    snap = compile_snapshot(VIEW, resources, proxy("x", "db", ["api"]))
    (cluster,) = snap.clusters
    assert cluster.name == "api~v1"
    # The tier naming the cluster itself is skipped.
    assert [(e.host, e.priority) for e in cluster.endpoints] == [
        ("10.0.0.1", 0),
        ("10.0.0.2", 1),
        ("10.0.2.1", 2),
    ]


def test_cluster_settings() -> None:
    resources = rset(
        mesh(connect_timeout_s=3),
        defaults(
            "api",
            lb_policy="least_request",
            connect_timeout_s=2,
            limits={"max_connections": 7},
            outlier_detection={"consecutive_5xx": 3},
            health_check={"path": "/health"},
        ),
        defaults("web", connect_timeout_s=4),
        resolver("web", connect_timeout_s=1.5),
    )
    snap = compile_snapshot(VIEW, resources, proxy("x", "db", ["api", "web", "db"]))
    api, db, web = snap.clusters
    assert (api.lb_policy, api.connect_timeout_s) == ("least_request", 2)
    assert api.limits is not None and api.limits.max_connections == 7
    assert api.outlier_detection is not None and api.outlier_detection.consecutive_5xx == 3
    assert api.health_check is not None and api.health_check.path == "/health"
    assert (db.lb_policy, db.connect_timeout_s, db.limits) == ("round_robin", 3, None)
    assert web.connect_timeout_s == 1.5


def test_inbound_policy_resolves_sources_in_policy_name_order() -> None:
    resources = rset(
        mesh(trust_domain="corp.example"),
        access("b-second", "api", {"sources": ["*"], "action": "deny"}),
        access(
            "a-first",
            "api",
            {"sources": ["web", "spiffe://other.example/ns/x/svc/y"], "action": "allow"},
            {"sources": ["db"], "action": "audit", "permissions": [{"methods": ["GET"]}]},
        ),
        access("elsewhere", "web", {"sources": ["*"], "action": "allow"}),
    )
    snap = compile_snapshot(VIEW, resources, proxy("api-1", "api"))
    policy = snap.inbound_policy
    assert policy is not None
    assert [r.sources for r in policy.rules] == [
        ("spiffe://corp.example/ns/default/svc/web", "spiffe://other.example/ns/x/svc/y"),
        ("spiffe://corp.example/ns/default/svc/db",),
        ("*",),
    ]
    assert [r.action for r in policy.rules] == ["allow", "audit", "deny"]
    assert policy.rules[1].permissions[0].methods == ("GET",)
    assert policy.default_action == "deny"


def test_only_deny_rules_default_to_allow() -> None:
    resources = rset(access("block", "api", {"sources": ["web"], "action": "deny"}))
    policy = compile_snapshot(VIEW, resources, proxy("api-1", "api")).inbound_policy
    assert policy is not None and policy.default_action == "allow"


def test_rate_limits_of_the_proxy_service() -> None:
    resources = rset(
        ratelimit("b", "api", 5, 2, per_source=True),
        ratelimit("a", "api", 100, 10, match={"path": {"prefix": "/x"}}),
        ratelimit("c", "web"),
    )
    snap = compile_snapshot(VIEW, resources, proxy("api-1", "api"))
    assert [(r.name, r.requests_per_second, r.burst, r.per_source) for r in snap.rate_limits] == [
        ("a", 100, 10, False),
        ("b", 5, 2, True),
    ]
    assert snap.rate_limits[0].match is not None


def test_snapshot_hash_is_sha256_of_canonical_json_without_version() -> None:
    resources = rset(
        route("api", {"backends": [{"subset": "v2"}]}), resolver("api", subsets=SUBSETS)
    )
    snap = compile_snapshot(VIEW, resources, proxy("web-1", "web", ["api", "db"]))
    body = snap.model_dump(mode="json")
    del body["version"]
    expected = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert snapshot_hash(snap) == expected
    assert snapshot_hash(snap.model_copy(update={"version": 42})) == expected
    hasher = FragmentHasher()
    assert hasher.hash(snap) == expected
    assert hasher.hash(snap) == expected  # from cached fragments


def test_compile_all_matches_compile_snapshot_and_reuses_work() -> None:
    resources = rset(
        route("api", {"backends": [{"subset": "v2"}]}), resolver("api", subsets=SUBSETS)
    )
    proxies = {
        "web-1": proxy("web-1", "web", ["api", "db"]),
        "web-2": proxy("web-2", "web", ["api", "db"], inbound="127.0.0.1:16006"),
        "db-1": proxy("db-1", "db", ["web"]),
    }
    compiler = Compiler()
    first = compiler.compile_all(VIEW, resources, proxies)
    assert sorted(first) == ["db-1", "web-1", "web-2"]
    for pid, (snap, digest) in first.items():
        alone = compile_snapshot(VIEW, resources, proxies[pid])
        assert snap == alone
        assert digest == snapshot_hash(alone)
    # Shared parts are the same objects across proxies.
    assert first["web-1"][0].clusters[0] is first["web-2"][0].clusters[0]
    assert first["web-1"][0].route_tables[0] is first["web-2"][0].route_tables[0]
    # Nothing changed: the very same snapshots come back.
    again = compiler.compile_all(VIEW, resources, proxies)
    assert all(again[p][0] is first[p][0] for p in proxies)
    # db's endpoints change: snapshots reaching db change, the db proxy's own does not.
    moved = view({"api": API, "db": [ep("10.0.1.9", 5432)], "web": [ep("10.0.2.1")]})
    third = compiler.compile_all(moved, resources, proxies)
    assert third["db-1"][0] is first["db-1"][0]
    assert third["web-1"][1] != first["web-1"][1]
    assert third["web-1"][0].cluster("api") is first["web-1"][0].cluster("api")
    assert third == Compiler().compile_all(moved, resources, proxies)
