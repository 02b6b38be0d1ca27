"""Policy resource kinds: parsing, validation messages and field paths, schemas."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from meshcore.model.documents import load_documents, load_paths
from meshcore.model.loading import validation_errors
from meshcore.model.resources import (
    API_VERSION,
    KINDS,
    AccessPolicy,
    HTTPRoute,
    Mesh,
    Metadata,
    RateLimit,
    ServiceDefaults,
    ServiceResolver,
    json_schemas,
    parse_resource,
    resource_key,
)

EXAMPLES = Path(__file__).resolve().parents[4] / "examples"
POLICY_DIRS = [EXAMPLES / "policy", EXAMPLES / "demo" / "policy"]


def _errors(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_resource(data)
    return [(".".join(map(str, loc)), msg) for loc, msg in validation_errors(info.value)]


def _route(*rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {"service": "api", "rules": list(rules)},
    }


@pytest.mark.parametrize("directory", [d for d in POLICY_DIRS if d.is_dir()], ids=str)
def test_examples_load_and_round_trip(directory: Path) -> None:
    loaded = load_paths([directory])
    assert loaded
    for _, resource in loaded:
        assert parse_resource(resource.to_json()) == resource


def test_every_kind_is_in_the_examples() -> None:
    kinds = {r.kind for _, r in load_paths([EXAMPLES / "policy"])}
    assert kinds == set(KINDS)


@pytest.mark.parametrize(
    ("data", "cls"),
    [
        ({"kind": "Mesh", "metadata": {"name": "default"}}, Mesh),
        ({"kind": "ServiceDefaults", "metadata": {"name": "api"}}, ServiceDefaults),
        ({"kind": "ServiceResolver", "metadata": {"name": "api"}}, ServiceResolver),
        (_route(), HTTPRoute),
        (
            {"kind": "AccessPolicy", "metadata": {"name": "a"}, "spec": {"destination": "api"}},
            AccessPolicy,
        ),
        (
            {
                "kind": "RateLimit",
                "metadata": {"name": "rl"},
                "spec": {"destination": "api", "requests_per_second": 5, "burst": 1},
            },
            RateLimit,
        ),
    ],
)
def test_minimal_resources_and_defaults(data: dict[str, Any], cls: type) -> None:
    resource = parse_resource(data)
    assert isinstance(resource, cls)
    assert resource.api_version == API_VERSION
    assert resource.metadata.labels == {}
    dumped = resource.to_json()
    assert dumped["apiVersion"] == API_VERSION
    assert list(dumped)[:3] == ["apiVersion", "kind", "metadata"]
    assert parse_resource(dumped) == resource
    assert resource_key(resource) == (data["kind"], data["metadata"]["name"])


def test_python_construction_by_field_name() -> None:
    mesh = Mesh(metadata=Metadata(name="default"))
    assert mesh.kind == "Mesh"
    assert mesh.spec.mtls == "permissive"
    assert mesh.spec.timeout_s == 15
    assert Mesh.model_validate({"api_version": API_VERSION, "metadata": {"name": "default"}})


def test_mesh_defaults() -> None:
    spec = Mesh(metadata=Metadata(name="default")).spec
    assert (spec.trust_domain, spec.default_protocol, spec.connect_timeout_s) == (
        "mesh.local",
        "http",
        5,
    )
    assert spec.retries is None


def test_mesh_must_be_named_default() -> None:
    errors = _errors({"kind": "Mesh", "metadata": {"name": "prod"}})
    assert errors == [("Mesh.metadata", "a Mesh must be named 'default', got 'prod'")]


def test_unknown_kind_is_named() -> None:
    [(_, msg)] = _errors({"kind": "Gateway", "metadata": {"name": "g"}})
    assert "'Gateway'" in msg
    assert "HTTPRoute" in msg


def test_api_version_and_unknown_fields() -> None:
    errors = _errors({"apiVersion": "v2", "kind": "Mesh", "metadata": {"name": "default"}})
    assert errors[0][0] == "Mesh.apiVersion"
    errors = _errors({"kind": "Mesh", "metadata": {"name": "default"}, "spec": {"mtl": "x"}})
    assert errors == [("Mesh.spec.mtl", "Extra inputs are not permitted")]


def test_metadata_name_pattern() -> None:
    for bad in ("API", "-a", "a_b", "x" * 64, ""):
        errors = _errors({"kind": "ServiceDefaults", "metadata": {"name": bad}})
        assert errors[0][0] == "ServiceDefaults.metadata.name", bad
    parse_resource({"kind": "ServiceDefaults", "metadata": {"name": "a.b-c" + "x" * 58}})


def test_route_field_paths() -> None:
    errors = _errors(_route({"backends": [{"subset": "v1", "weight": -1}]}))
    assert errors == [
        ("HTTPRoute.spec.rules.0.backends.0.weight", "Input should be greater than or equal to 0")
    ]
    errors = _errors(_route({"retries": {"attempts": 11, "retry_on": ["teapot"]}}))
    assert [p for p, _ in errors] == [
        "HTTPRoute.spec.rules.0.retries.attempts",
        "HTTPRoute.spec.rules.0.retries.retry_on.0",
    ]


def test_redirect_and_backends_are_exclusive() -> None:
    [(path, msg)] = _errors(_route({"backends": [{"subset": "v1"}], "redirect": {"path": "/x"}}))
    assert path == "HTTPRoute.spec.rules.0"
    assert msg == "set redirect or backends, not both"
    route = parse_resource(_route({"redirect": {"host": "example.com"}}))
    assert isinstance(route, HTTPRoute)
    assert route.spec.rules[0].redirect is not None
    assert route.spec.rules[0].redirect.status == 302


def test_route_rule_checks() -> None:
    [(_, msg)] = _errors(_route({"backends": [{"weight": 0}]}))
    assert msg == "at least one backend needs a weight above 0"
    [(_, msg)] = _errors(_route({"name": "a"}, {"name": "a"}))
    assert msg == "duplicate rule names: a"
    [(path, _)] = _errors(_route({"fault": {}}))
    assert path == "HTTPRoute.spec.rules.0.fault"
    [(path, _)] = _errors(_route({"fault": {"abort": {"percent": 5, "status": 600}}}))
    assert path == "HTTPRoute.spec.rules.0.fault.abort.status"
    [(path, _)] = _errors(_route({"match": {"query": [{"name": "q", "exact": "a", "regex": "b"}]}}))
    assert path == "HTTPRoute.spec.rules.0.match.query.0"


def test_route_rule_full() -> None:
    route = parse_resource(
        _route(
            {
                "name": "all",
                "match": {"methods": ["get"], "query": [{"name": "debug", "present": True}]},
                "backends": [{"subset": "v1", "weight": 3}, {"service": "other"}],
                "timeout_s": 2,
                "fault": {"delay": {"percent": 10, "fixed_delay_s": 0.5}},
                "request_headers": {"set": {"X-A": "1"}, "add": {"x-b": "2"}, "remove": ["X-C"]},
                "response_headers": {"remove": ["server"]},
                "rewrite": {"path_prefix": "/v2/"},
                "mirror": {"service": "shadow", "percent": 5},
            }
        )
    )
    assert isinstance(route, HTTPRoute)
    rule = route.spec.rules[0]
    assert rule.match.methods == ("GET",)
    assert rule.request_headers is not None
    assert rule.request_headers.set == {"x-a": "1"}
    assert rule.request_headers.remove == ("x-c",)
    assert rule.backends[1].service == "other"
    assert rule.backends[1].weight == 1
    assert rule.mirror is not None
    assert rule.mirror.subset is None


def test_header_values_reject_crlf() -> None:
    [(_, msg)] = _errors(_route({"request_headers": {"set": {"x": "a\r\nb"}}}))
    assert "CR or LF" in msg


def test_resolver_checks() -> None:
    base: dict[str, Any] = {"kind": "ServiceResolver", "metadata": {"name": "api"}}
    [(path, msg)] = _errors({**base, "spec": {"subsets": {"v1": {}}, "default_subset": "v2"}})
    assert path == "ServiceResolver.spec"
    assert "default_subset 'v2'" in msg
    [(path, _)] = _errors({**base, "spec": {"subsets": {"v1": {"tagz": []}}}})
    assert path == "ServiceResolver.spec.subsets.v1.tagz"
    resolver = parse_resource(
        {
            **base,
            "spec": {
                "subsets": {"v1": {"tags": ["v1"], "meta": {"zone": "a"}}},
                "failover": [{"subset": "v1"}, {"service": "api-dr"}],
            },
        }
    )
    assert isinstance(resolver, ServiceResolver)
    subset = resolver.spec.subsets["v1"]
    assert subset.selects(("v1", "x"), {"zone": "a"})
    assert not subset.selects(("v1",), {"zone": "b"})
    assert not subset.selects(("v2",), {"zone": "a"})
    assert resolver.spec.failover[1].service == "api-dr"


def test_access_policy_checks() -> None:
    def policy(**rule: Any) -> dict[str, Any]:
        return {
            "kind": "AccessPolicy",
            "metadata": {"name": "p"},
            "spec": {"destination": "api", "rules": [rule]},
        }

    ok = parse_resource(
        policy(sources=["web", "spiffe://td/ns/default/svc/web", "*"], action="deny")
    )
    assert isinstance(ok, AccessPolicy)
    [(path, _)] = _errors(policy(sources=["Not A Service"], action="allow"))
    assert path == "AccessPolicy.spec.rules.0.sources"
    [(path, _)] = _errors(policy(sources=[], action="allow"))
    assert path == "AccessPolicy.spec.rules.0.sources"
    [(path, _)] = _errors(policy(sources=["web"], action="permit"))
    assert path == "AccessPolicy.spec.rules.0.action"
    [(path, msg)] = _errors(
        policy(
            sources=["*"], action="allow", jwt={"issuer": "i", "jwks_uri": "u", "jwks_file": "f"}
        )
    )
    assert path == "AccessPolicy.spec.rules.0.jwt"
    assert msg == "set exactly one of jwks_uri, jwks_file"
    jwt = parse_resource(
        policy(
            sources=["*"],
            action="allow",
            permissions=[{"methods": ["post"], "path": {"exact": "/x"}}],
            jwt={"issuer": "i", "jwks_file": "/k.json", "forward_claims": {"sub": "X-User"}},
        )
    )
    assert isinstance(jwt, AccessPolicy)
    rule = jwt.spec.rules[0]
    assert rule.permissions[0].methods == ("POST",)
    assert rule.jwt is not None
    assert rule.jwt.forward_claims == {"sub": "x-user"}
    assert rule.jwt.clock_skew_s == 30


def test_rate_limit_checks() -> None:
    base: dict[str, Any] = {"kind": "RateLimit", "metadata": {"name": "rl"}}
    errors = _errors({**base, "spec": {"destination": "api", "requests_per_second": 0, "burst": 0}})
    assert [p for p, _ in errors] == [
        "RateLimit.spec.requests_per_second",
        "RateLimit.spec.burst",
    ]


def test_service_defaults_nested_defaults() -> None:
    sd = parse_resource(
        {
            "kind": "ServiceDefaults",
            "metadata": {"name": "api"},
            "spec": {"limits": {}, "outlier_detection": {}, "health_check": {}},
        }
    )
    assert isinstance(sd, ServiceDefaults)
    assert sd.spec.protocol is None
    assert sd.spec.limits is not None
    assert sd.spec.limits.max_pending_requests == 1024
    assert sd.spec.outlier_detection is not None
    assert sd.spec.outlier_detection.max_ejection_percent == 50
    assert sd.spec.health_check is not None
    assert (sd.spec.health_check.kind, sd.spec.health_check.unhealthy_threshold) == ("http", 3)


def test_json_schemas_for_every_kind() -> None:
    schemas = json_schemas()
    assert list(schemas) == list(KINDS)
    for kind, schema in schemas.items():
        assert schema["type"] == "object"
        assert "apiVersion" in schema["properties"]
        assert schema["properties"]["kind"]["const"] == kind
        assert "metadata" in schema["required"]
        assert schema["additionalProperties"] is False


def test_docs_examples_are_valid() -> None:
    text = (EXAMPLES.parent / "docs" / "policy.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    # The first block shows the envelope with placeholders; the others are real resources.
    checked = [load_documents(b, "docs/policy.md") for b in blocks if "{...}" not in b]
    assert len(checked) >= 3
