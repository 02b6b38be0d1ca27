"""Snapshot features: every model field classified, uses found with their field paths."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from pydantic import BaseModel

from meshcore.model.features import (
    CORE,
    FEATURES,
    FIELDS,
    feature_uses,
    features_used,
    format_features,
    models_in,
    parse_features,
    unsupported,
    unsupported_message,
)
from meshcore.model.snapshot import Snapshot

pytestmark = pytest.mark.timeout(30)


def _reachable(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    todo = [root]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for info in cls.model_fields.values():
            todo.extend(models_in(info.annotation))
    return seen


def test_every_snapshot_field_is_a_feature_or_core() -> None:
    """A new snapshot field must be classified: a feature, or core (see the module doc)."""
    missing = []
    for cls in _reachable(Snapshot):
        specs = FIELDS.get(cls)
        if specs is None:
            missing.append(f"{cls.__name__} (whole model)")
            continue
        missing += [f"{cls.__name__}.{n}" for n in cls.model_fields if n not in specs]
        stale = set(specs) - set(cls.model_fields)
        assert not stale, f"{cls.__name__}: FIELDS lists fields it doesn't have: {stale}"
    assert not missing, (
        "snapshot fields neither a feature nor core in meshcore.model.features.FIELDS: "
        + ", ".join(missing)
    )
    assert set(FIELDS) <= set(_reachable(Snapshot)), "FIELDS lists models snapshots don't use"


def test_the_vocabulary_is_what_the_fields_name() -> None:
    named: set[str] = set()
    for cls, specs in FIELDS.items():
        for name, spec in specs.items():
            if spec == CORE:
                continue
            if spec.endswith(":"):
                info = cls.model_fields[name]
                values = typing.get_args(info.annotation)
                assert values, f"{cls.__name__}.{name}: a value feature needs a Literal"
                named |= {f"{spec}{v}" for v in values if v != info.default}
            else:
                named.add(spec)
    assert named == set(FEATURES)
    assert len(FEATURES) == len(set(FEATURES))
    assert "lb_policy:round_robin" not in FEATURES  # the default: every meshd does it
    assert "listener.path_with_escaped_slashes:keep" not in FEATURES


BASE: dict[str, Any] = {
    "version": 3,
    "listeners": [
        {"name": "out", "direction": "outbound", "address": "127.0.0.1:1", "route_table": "t"},
        {"name": "in", "direction": "inbound", "address": "127.0.0.1:2"},
    ],
    "route_tables": [
        {"name": "t", "routes": [{"name": "a", "backends": [{"cluster": "api"}]}]},
    ],
    "clusters": [
        {"name": "api", "service": "api", "endpoints": [{"host": "10.0.0.1", "port": 80}]},
    ],
    "mtls": "strict",
    "inbound_policy": {"rules": [{"sources": ["*"], "action": "allow"}]},
}


def test_a_plain_snapshot_uses_no_feature() -> None:
    assert features_used(Snapshot.model_validate(BASE)) == {}
    assert features_used(Snapshot(version=0)) == {}


def test_uses_are_named_with_the_first_field_path() -> None:
    routes = [
        {"name": "a", "backends": [{"cluster": "api"}], "retries": {}},
        {
            "name": "b",
            "match": {
                "headers": [{"name": "x-a", "exact": "1"}],
                "query": [{"name": "q"}],
            },
            "backends": [{"cluster": "api"}],
            "mirror": {"cluster": "shadow"},
            "fault": {"abort": {"percent": 1, "status": 503}, "headers": [{"name": "x-f"}]},
            "retries": {"attempts": 3},
        },
        {"name": "c", "redirect": {"path": "/x"}, "rewrite": {"host": "h"}},
        {
            "name": "d",
            "backends": [{"cluster": "api"}],
            "request_headers": {"set": {"a": "b"}},
            "response_headers": {"remove": ["server"]},
        },
    ]
    clusters = [
        {"name": "api", "service": "api", "endpoints": [{"host": "10.0.0.1", "port": 80}]},
        {
            "name": "shadow",
            "service": "shadow",
            "lb_policy": "ewma",
            "endpoints": [
                {"host": "10.0.0.2", "port": 80},
                {"host": "10.0.0.3", "port": 80, "priority": 1},
            ],
            "limits": {},
            "outlier_detection": {"success_rate": {}},
            "health_check": {"kind": "tcp"},
            "locality": {},
            "panic_threshold_percent": 30,
        },
        {
            "name": "sticky",
            "service": "sticky",
            "lb_policy": "ring_hash",
            "hash_policy": {"header": "x-user"},
        },
    ]
    listeners = [
        {**BASE["listeners"][0], "path_with_escaped_slashes": "reject"},
        BASE["listeners"][1],
    ]
    snap = Snapshot.model_validate(
        {
            **BASE,
            "listeners": listeners,
            "route_tables": [{"name": "t", "routes": routes}],
            "clusters": clusters,
            "inbound_policy": {
                "rules": [
                    {"sources": ["*"], "action": "allow"},
                    {
                        "sources": ["web"],
                        "action": "allow",
                        "jwt": {"issuer": "i", "jwks_file": "/k"},
                    },
                ]
            },
            "rate_limits": [{"name": "r", "requests_per_second": 1, "burst": 1}],
        }
    )
    assert features_used(snap) == {
        "listener.path_with_escaped_slashes:reject": "listeners.0.path_with_escaped_slashes",
        "route.retries": "route_tables.0.routes.0.retries",
        "route.match.headers": "route_tables.0.routes.1.match.headers",
        "route.match.query": "route_tables.0.routes.1.match.query",
        "route.fault": "route_tables.0.routes.1.fault",
        "route.fault.headers": "route_tables.0.routes.1.fault.headers",
        "route.mirror": "route_tables.0.routes.1.mirror",
        "route.rewrite": "route_tables.0.routes.2.rewrite",
        "route.redirect": "route_tables.0.routes.2.redirect",
        "route.request_headers": "route_tables.0.routes.3.request_headers",
        "route.response_headers": "route_tables.0.routes.3.response_headers",
        "lb_policy:ewma": "clusters.1.lb_policy",
        "cluster.failover": "clusters.1.endpoints.1.priority",
        "cluster.locality": "clusters.1.locality",
        "cluster.panic_threshold": "clusters.1.panic_threshold_percent",
        "cluster.limits": "clusters.1.limits",
        "cluster.outlier_detection": "clusters.1.outlier_detection",
        "cluster.outlier_detection.success_rate": "clusters.1.outlier_detection.success_rate",
        "cluster.health_check": "clusters.1.health_check",
        "lb_policy:ring_hash": "clusters.2.lb_policy",
        "inbound_policy.jwt": "inbound_policy.rules.1.jwt",
        "rate_limits": "rate_limits",
    }
    # Every use, not only the first.
    retries = [p for f, p in feature_uses(snap) if f == "route.retries"]
    assert retries == ["route_tables.0.routes.0.retries", "route_tables.0.routes.1.retries"]


def test_unsupported_and_its_message() -> None:
    routes = [
        {"name": "a", "backends": [{"cluster": "api"}]},
        {"name": "b", "backends": [{"cluster": "api"}], "mirror": {"cluster": "api"}},
    ]
    snap = Snapshot.model_validate({**BASE, "route_tables": [{"name": "t", "routes": routes}]})
    assert unsupported(snap, FEATURES) == {}
    missing = unsupported(snap, set(FEATURES) - {"route.mirror"})
    assert missing == {"route.mirror": "route_tables.0.routes.1.mirror"}
    assert (
        unsupported_message(missing)
        == "unsupported feature route.mirror at route_tables.0.routes.1.mirror"
    )


def test_header_round_trip() -> None:
    assert format_features(["b", "a", "a"]) == "a,b"
    assert parse_features("a, b,,") == frozenset({"a", "b"})
    assert parse_features("") == frozenset()
    assert parse_features(format_features(FEATURES)) == frozenset(FEATURES)
