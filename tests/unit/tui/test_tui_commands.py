"""The pure parts of meshctl's commands: apply summary, tables, states, explain text."""

from __future__ import annotations

from typing import Any

from meshcore.api.explain import ExplainAnswer
from meshcore.api.proxies import ProxyState
from meshcore.api.resources import ApplyAnswer
from meshcore.api.status import StatusAnswer
from tui.cli.explain import explain_lines, route_rule_match
from tui.cli.ops import endpoint_mix_lines, feature_cells, proxy_rows, proxy_state, status_header
from tui.cli.resources import apply_lines, diff_resource, resource_rows, warning_lines


def test_apply_lines_mark_unsent_changes_unchanged() -> None:
    answer = ApplyAnswer.model_validate(
        {
            "revision": 7,
            "changes": [
                {"kind": "HTTPRoute", "name": "api-split", "action": "updated"},
                {"kind": "Mesh", "name": "default", "action": "created"},
            ],
        }
    )
    keys = [("Mesh", "default"), ("HTTPRoute", "api-split"), ("ServiceResolver", "api")]
    assert apply_lines(keys, answer, dry_run=False) == [
        "Mesh/default created",
        "HTTPRoute/api-split updated",
        "ServiceResolver/api unchanged",
        "revision 7",
    ]
    assert apply_lines(keys[:1], answer, dry_run=True)[0] == "Mesh/default created (dry run)"


def test_resource_rows_sorted_with_labels() -> None:
    resources: list[dict[str, Any]] = [
        {"kind": "Mesh", "metadata": {"name": "default"}, "spec": {}},
        {
            "kind": "HTTPRoute",
            "metadata": {"name": "b", "labels": {"team": "x", "app": "y"}},
            "meta": {"revision": 4},
        },
        {"kind": "HTTPRoute", "metadata": {"name": "a"}, "revision": 2},
    ]
    assert resource_rows(resources) == [
        ["HTTPRoute", "a", "2", "-"],
        ["HTTPRoute", "b", "4", "app=y,team=x"],
        ["Mesh", "default", "-", "-"],
    ]


def test_diff_states() -> None:
    key = ("HTTPRoute", "api")
    desired = {"kind": "HTTPRoute", "metadata": {"name": "api"}, "spec": {"service": "api"}}
    assert diff_resource(key, dict(desired), desired, "r.yaml") == ("unchanged", "")
    state, text = diff_resource(key, None, desired, "r.yaml")
    assert state == "new"
    assert "+++ r.yaml/HTTPRoute/api" in text
    live = {"kind": "HTTPRoute", "metadata": {"name": "api"}, "spec": {"service": "web"}}
    state, text = diff_resource(key, live, desired, "r.yaml")
    assert state == "changed"
    assert "--- controld/HTTPRoute/api" in text
    assert "-  service: web" in text
    assert "+  service: api" in text


def _proxy(**fields: Any) -> ProxyState:
    base: dict[str, Any] = {
        "proxy_id": "web-1",
        "service": "web",
        "namespace": "default",
        "connected": True,
        "last_contact": 1000.0,
        "acked_version": 5,
        "acked_hash": "h5",
        "latest_version": 5,
        "latest_hash": "h5",
        "nack": None,
    }
    base.update(fields)
    return ProxyState.model_validate(base)


def test_proxy_state() -> None:
    assert proxy_state(_proxy()) == "synced"
    assert proxy_state(_proxy(latest_version=6, latest_hash="h6")) == "pending"
    nack = {"version": 6, "hash": "h6", "error": "cluster api: no endpoints\ndetails", "time": 1.0}
    assert (
        proxy_state(_proxy(latest_version=6, latest_hash="h6", nack=nack))
        == "NACKED: cluster api: no endpoints"
    )
    # An old NACK doesn't hide that the proxy caught up since.
    old = {"version": 4, "hash": "h4", "error": "bad", "time": 1.0}
    assert proxy_state(_proxy(nack=old)) == "synced"
    assert proxy_state(_proxy(latest_version=None, latest_hash=None, acked_version=None)) == (
        "pending"
    )


def test_proxy_rows() -> None:
    proxies = [
        _proxy(proxy_id="web-2", last_contact=None, acked_version=None, connected=False),
        _proxy(),
        _proxy(proxy_id="api-1", service="api"),
    ]
    rows = proxy_rows(proxies, now=1065.0)
    assert [r[0] for r in rows] == ["api-1", "web-1", "web-2"]
    # No features header from the sidecar (an older meshd): unknown.
    assert rows[1] == ["web-1", "web", "yes", "5", "5", "synced", "?", "-", "1m5s"]
    assert rows[2][2:4] == ["no", "-"]
    assert rows[2][8] == "-"


def test_proxy_rows_show_features_and_those_in_use_it_lacks() -> None:
    unsupported = [
        {"feature": "route.mirror", "path": "route_tables.0.routes.1.mirror"},
        {"feature": "rate_limits", "path": "rate_limits"},
    ]
    proxy = _proxy(features=["route.redirect", "route.retries"], unsupported=unsupported)
    assert feature_cells(proxy) == ("2", "route.mirror,rate_limits")
    assert feature_cells(_proxy(features=[], unsupported=[])) == ("0", "-")


def _header(status: dict[str, Any], proxies: int) -> str:
    return status_header(StatusAnswer.model_validate(status), proxies)


def test_status_header() -> None:
    status: dict[str, Any] = {
        "registry": {"mode": "embedded", "connected": True},
        "store": {"revision": 9},
    }
    assert _header(status, 3) == (
        "registry: embedded (connected)   resources: revision 9   sidecars: 3"
    )
    status["store"] = {"revision": 9, "resources": 1, "connected": False}
    assert "resources: revision 9 (1 resource) STORE DISCONNECTED" in _header(status, 3)
    assert "DISCONNECTED" in _header({"registry": {"mode": "external"}}, 0)
    assert "revision -" in _header({}, 0)


EXPLANATION: dict[str, Any] = {
    "source": "web",
    "source_id": None,
    "destination": "api",
    "method": "GET",
    "path": "/api/items",
    "protocol": "http",
    "listener": "outbound-api",
    "route": "canary",
    "timeout_s": 5.0,
    "backends": [
        {"cluster": "api~v1", "weight": 90, "percent": 90.0},
        {"cluster": "api~v2", "weight": 10, "percent": 10.0},
    ],
    "redirect": None,
    "mirror": None,
    "clusters": [
        {
            "name": "api~v1",
            "service": "api",
            "subset": "v1",
            "lb_policy": "least_request",
            "endpoints": [
                {"host": "127.0.0.1", "port": 9001, "priority": 0, "tags": ["v1"], "tls": "mtls"}
            ],
        },
        {
            "name": "api~v2",
            "service": "api",
            "subset": "v2",
            "lb_policy": "least_request",
            "endpoints": [
                {"host": "127.0.0.1", "port": 9002, "priority": 1, "tags": [], "tls": "mtls"}
            ],
        },
    ],
    "access": {"action": "allow", "rule_index": 0, "policy": "api-callers", "reason": "web"},
    "mtls": "permissive",
    "rate_limits": [],
    "notes": [],
}


def _answer(changes: dict[str, Any] | None = None) -> ExplainAnswer:
    """:data:`EXPLANATION` with ``changes``, as meshctl parses it."""
    return ExplainAnswer.model_validate({**EXPLANATION, **(changes or {})})


ROUTES = [
    {
        "kind": "HTTPRoute",
        "metadata": {"name": "api"},
        "spec": {
            "service": "api",
            "rules": [
                {"name": "slow", "match": {"path": {"prefix": "/api/slow"}}},
                {"name": "canary", "match": {"path": {"prefix": "/api/"}}},
                {"match": {"methods": ["POST"]}},
            ],
        },
    }
]


def test_explain_lines() -> None:
    lines = explain_lines(_answer(), ROUTES)
    assert lines[0] == "web -> api  GET /api/items"
    assert lines[1] == "protocol http, listener outbound-api, mtls permissive"
    assert "route: canary (timeout 5s)" in lines
    assert '  matched: {"path": {"prefix": "/api/"}}' in lines
    assert "  - api~v1  90% (weight 90)" in lines
    assert "      cluster api~v1: service api, subset v1, least_request" in lines
    assert "      endpoints: 127.0.0.1:9002 [mTLS] (failover 1)" in lines
    assert "access: ALLOW (rule 0 of AccessPolicy/api-callers): web" in lines


def test_route_rule_match_by_generated_name() -> None:
    assert route_rule_match(ROUTES, "api", "rule-2") == {"methods": ["POST"]}
    assert route_rule_match(ROUTES, "web", "canary") is None
    lines = explain_lines(_answer({"route": "default"}), ROUTES)
    assert any("catch-all" in line for line in lines)


def test_explain_lines_without_route() -> None:
    explanation = {
        "route": None,
        "backends": [],
        "clusters": [],
        "access": {"action": "deny", "rule_index": None, "policy": None, "reason": "default"},
        "notes": ["no route matches: the sidecar answers 404"],
    }
    lines = explain_lines(_answer(explanation))
    assert "route: none matched" in lines
    assert "access: DENY: default" in lines
    assert lines[-1] == "note: no route matches: the sidecar answers 404"


def test_explain_lines_tcp() -> None:
    explanation = {
        "protocol": "tcp",
        "route": None,
        "backends": [],
        "clusters": [EXPLANATION["clusters"][0]],
    }
    lines = explain_lines(_answer(explanation))
    assert "route: none matched" not in lines
    assert "  - api~v1" in lines


MIX = {
    "sidecar": 2,
    "plain": 1,
    "mtls": 2,
    "plaintext": 0,
    "excluded": [
        {"host": "10.0.0.9", "port": 8080, "service": "api", "reason": "under STRICT mTLS"}
    ],
}


def test_explain_lines_show_tls_per_endpoint_and_the_mix() -> None:
    cluster = {
        "name": "api~v1",
        "service": "api",
        "endpoints": [
            {"host": "10.0.0.1", "port": 21000, "tls": "mtls"},
            {"host": "10.0.0.2", "port": 21000, "tls": "mtls"},
        ],
        "mix": MIX,
    }
    lines = explain_lines(_answer({"clusters": [cluster]}))
    assert "      endpoints: 10.0.0.1:21000 [mTLS], 10.0.0.2:21000 [mTLS]" in lines
    assert "      mix: 2 sidecar, 1 plain (2 mTLS, 0 plaintext, 1 excluded)" in lines
    assert "      excluded: 10.0.0.9:8080 (api): under STRICT mTLS" in lines


def test_status_lists_services_with_plain_endpoints() -> None:
    lines = endpoint_mix_lines({"api": {"mtls_mode": "strict", **MIX}})
    assert lines[1] == "  api (mTLS STRICT)"
    assert lines[2] == "    mix: 2 sidecar, 1 plain (2 mTLS, 0 plaintext, 1 excluded)"
    assert lines[3] == "    excluded: 10.0.0.9:8080 (api): under STRICT mTLS"


def test_compact_manifest_leaves_out_defaults() -> None:
    from tui.cli.resources import _compact_manifest

    server = {
        "apiVersion": "meshd.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "api", "labels": {}},
        "spec": {
            "service": "api",
            "rules": [
                {
                    "name": None,
                    "match": {"path": {"exact": None, "prefix": "/v2", "regex": None}},
                    "backends": [{"service": None, "subset": None, "weight": 1}],
                    "timeout_s": None,
                }
            ],
        },
        "meta": {"revision": 3},
    }
    assert _compact_manifest(server) == {
        "kind": "HTTPRoute",
        "metadata": {"name": "api"},
        "spec": {
            "service": "api",
            "rules": [{"match": {"path": {"prefix": "/v2"}}, "backends": [{}]}],
        },
    }
    unknown = {"kind": "Gateway", "metadata": {"name": "g"}, "spec": {"x": 1}, "meta": {}}
    assert _compact_manifest(unknown) == {
        "kind": "Gateway",
        "metadata": {"name": "g"},
        "spec": {"x": 1},
    }


def test_explain_shows_what_the_source_sidecar_enforces() -> None:
    explanation = {
        "route": "copy",
        "mirror": {"cluster": "shadow", "percent": 50},
        "sidecars": [
            {
                "proxy_id": "web-1",
                "service": "web",
                "role": "source",
                "connected": True,
                "acked_version": 5,
                "latest_version": 6,
                "features": 26,
                "enforces": [
                    {"feature": "route.retries", "path": "route_tables.0.routes.0.retries"}
                ],
                "not_enforced": [
                    {"feature": "route.mirror", "path": "route_tables.0.routes.0.mirror"}
                ],
            }
        ],
    }
    lines = explain_lines(_answer(explanation))
    assert "sidecar web-1 (source): runs version 5 (latest 6 not ACKed), declares 26 features" in (
        lines
    )
    assert "  enforces: route.retries (route_tables.0.routes.0.retries)" in lines
    assert "  route.mirror (route_tables.0.routes.0.mirror): NOT ENFORCED by web-1" in lines
    assert "mirror: shadow 50%  (NOT ENFORCED by web-1)" in lines


def test_apply_warning_lines() -> None:
    warning = {
        "proxy_id": "web-1",
        "service": "web",
        "feature": "route.mirror",
        "path": "route_tables.0.routes.0.mirror",
        "message": "unsupported ...",
    }
    answer = {"revision": 3, "changes": [], "warnings": [warning]}
    assert warning_lines(ApplyAnswer.model_validate(answer)) == ["warning: unsupported ..."]
    assert warning_lines(ApplyAnswer(revision=3, changes=())) == []
