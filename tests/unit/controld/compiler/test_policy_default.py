"""The default action of a compiled inbound policy, per effective mTLS mode (issue 5)."""

from __future__ import annotations

from typing import Any

import pytest

from compiler.builders import access, defaults, ep, mesh, proxy, rset, view
from controld.compiler import compile_snapshot, explain
from meshcore.model.resources import Resource

VIEW = view({"api": [ep("10.0.0.1")], "web": [ep("10.0.2.1")], "db": [ep("10.0.1.1", 5432)]})
DENY_ONLY = access("block", "api", {"sources": ["db"], "action": "deny"})
AUDIT_ONLY = access("watch", "api", {"sources": ["*"], "action": "audit"})
ALLOW = access("callers", "api", {"sources": ["web"], "action": "allow"})


def _default(*resources: Resource) -> str | None:
    policy = compile_snapshot(VIEW, rset(*resources), proxy("api-1", "api")).inbound_policy
    return None if policy is None else policy.default_action


@pytest.mark.parametrize(
    ("settings", "policies", "expected"),
    [
        # PERMISSIVE (the Mesh default): an allow rule makes an allow-list, else allow.
        ((), (DENY_ONLY,), "allow"),
        ((), (AUDIT_ONLY,), "allow"),
        ((), (ALLOW,), "deny"),
        ((mesh(mtls="disabled"),), (DENY_ONLY,), "allow"),
        # STRICT: any policy means default deny.
        ((mesh(mtls="strict"),), (DENY_ONLY,), "deny"),
        ((mesh(mtls="strict"),), (AUDIT_ONLY,), "deny"),
        ((mesh(mtls="strict"),), (ALLOW,), "deny"),
        # The service's own mode overrides the Mesh's, both ways.
        ((defaults("api", mtls="strict"),), (DENY_ONLY,), "deny"),
        ((mesh(mtls="strict"), defaults("api", mtls="permissive")), (DENY_ONLY,), "allow"),
        # Another service's ServiceDefaults don't count.
        ((defaults("web", mtls="strict"),), (DENY_ONLY,), "allow"),
        # No policy at all: no inbound policy, even in STRICT.
        ((mesh(mtls="strict"),), (), None),
    ],
)
def test_default_action(
    settings: tuple[Resource, ...], policies: tuple[Resource, ...], expected: str | None
) -> None:
    assert _default(*settings, *policies) == expected


def test_explain_follows_the_strict_default() -> None:
    common: dict[str, Any] = {"source": "web", "destination": "api", "path": "/x"}
    permissive = explain(VIEW, rset(DENY_ONLY), **common)
    assert (permissive.access.action, permissive.access.rule_index) == ("allow", None)
    strict = explain(VIEW, rset(mesh(mtls="strict"), DENY_ONLY), **common)
    assert (strict.access.action, strict.access.rule_index) == ("deny", None)
    assert strict.access.reason == "no rule matched (default deny)"


def test_explain_of_a_tcp_destination_skips_l7_rules() -> None:
    policy = access(
        "db-access",
        "db",
        {"sources": ["web"], "action": "deny", "permissions": [{"methods": ["GET"]}]},
        {"sources": ["web"], "action": "allow"},
    )
    ex = explain(VIEW, rset(defaults("db", protocol="tcp"), policy), source="web", destination="db")
    assert (ex.access.action, ex.access.rule_index, ex.access.policy) == ("allow", 1, "db-access")


def test_explain_normalises_the_path_as_the_sidecar_does() -> None:
    policy = access(
        "no-admin",
        "api",
        {"sources": ["*"], "action": "deny", "permissions": [{"path": {"prefix": "/admin"}}]},
        {"sources": ["*"], "action": "allow"},
    )
    ex = explain(VIEW, rset(policy), source="web", destination="api", path="/x/../%61dmin?q=1")
    assert (ex.access.action, ex.access.rule_index) == ("deny", 0)
