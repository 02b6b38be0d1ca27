"""validate_resources: the cross-resource checks, one case each."""

from __future__ import annotations

from compiler.builders import defaults, mesh, resolver, route, rset
from controld.compiler import ResourceProblem, validate_resources
from meshcore.model.resources import ResourceSet

SUBSETS = {"v1": {"tags": ["v1"]}, "v2": {"tags": ["v2"]}}


def paths(resources: ResourceSet) -> list[tuple[str, str, str]]:
    return [(p.kind, p.name, p.path) for p in validate_resources(resources)]


def test_a_consistent_set_has_no_problems() -> None:
    resources = rset(
        mesh(),
        route(
            "api",
            {"backends": [{"subset": "v1"}, {"service": "web"}], "mirror": {"service": "api"}},
            {"name": "canary", "backends": [{"subset": "v2"}]},
        ),
        resolver("api", subsets=SUBSETS, default_subset="v1", failover=[{"subset": "v2"}]),
    )
    assert validate_resources(resources) == []
    assert validate_resources(rset()) == []


def test_one_httproute_per_service() -> None:
    resources = rset(route("api", name="a-route"), route("api", name="b-route"))
    problems = validate_resources(resources)
    assert [(p.name, p.path) for p in problems] == [("b-route", "spec.service")]
    assert "already has HTTPRoute 'a-route'" in problems[0].message


def test_subsets_must_exist_in_the_resolver() -> None:
    resources = rset(
        route(
            "api",
            {"backends": [{"subset": "v1"}, {"subset": "v3"}]},
            {
                "backends": [{"service": "web", "subset": "v1"}],
                "mirror": {"service": "api", "subset": "x"},
            },
        ),
        resolver("api", subsets=SUBSETS),
    )
    problems = validate_resources(resources)
    assert [p.path for p in problems] == [
        "spec.rules.0.backends.1.subset",
        "spec.rules.1.backends.0.subset",
        "spec.rules.1.mirror.subset",
    ]
    assert "'v3' is not defined by ServiceResolver 'api' (known: v1, v2)" in problems[0].message
    assert "has no ServiceResolver" in problems[1].message


def test_rule_names_must_not_clash_with_each_other_or_the_catch_all() -> None:
    resources = rset(route("api", {"name": "default"}, {}, {"name": "rule-1"}))
    assert paths(resources) == [
        ("HTTPRoute", "api-route", "spec.rules.0.name"),
        ("HTTPRoute", "api-route", "spec.rules.1.name"),
        ("HTTPRoute", "api-route", "spec.rules.2.name"),
    ]


def test_http_route_for_a_tcp_service() -> None:
    assert paths(rset(route("db"), defaults("db", protocol="tcp"))) == [
        ("HTTPRoute", "db-route", "spec.service")
    ]
    assert paths(rset(route("db"), mesh(default_protocol="tcp"))) == [
        ("HTTPRoute", "db-route", "spec.service")
    ]


def test_failover_subsets_must_exist() -> None:
    resources = rset(
        resolver(
            "api", subsets=SUBSETS, failover=[{"subset": "v9"}, {"service": "web", "subset": "a"}]
        ),
        resolver("web", subsets={"b": {}}),
    )
    assert paths(resources) == [
        ("ServiceResolver", "api", "spec.failover.0.subset"),
        ("ServiceResolver", "api", "spec.failover.1.subset"),
    ]


def test_problem_text() -> None:
    problem = ResourceProblem("HTTPRoute", "r", "spec.service", "bad")
    assert str(problem) == "HTTPRoute/r: spec.service: bad"
    assert str(ResourceProblem("Mesh", "x", "", "bad")) == "Mesh/x: bad"
