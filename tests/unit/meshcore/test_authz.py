"""The inbound access-policy evaluator, tested with values."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.authz import CompiledPolicy, Decision, evaluate
from meshcore.model import InboundPolicy

WEB = "spiffe://mesh.local/ns/default/svc/web"
ADMIN = "spiffe://mesh.local/ns/default/svc/admin"
JWKS = {"issuer": "https://idp.example", "jwks_file": "/etc/jwks.json"}


def policy(*rules: dict[str, Any], default: str = "deny") -> InboundPolicy:
    return InboundPolicy.model_validate({"rules": list(rules), "default_action": default})


def decide(
    p: InboundPolicy | None,
    source: str | None = WEB,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
) -> Decision:
    return evaluate(p, source_id=source, method=method, path=path, headers=headers or {})


def test_no_policy_allows_everything() -> None:
    d = decide(None, source=None)
    assert d.action == "allow"
    assert d.rule_index is None
    assert d.allowed


def test_no_rule_matched_uses_the_default() -> None:
    p = policy({"sources": [ADMIN], "action": "allow"})
    assert decide(p) == Decision("deny", None, "no rule matched (default deny)")
    p = policy({"sources": [ADMIN], "action": "deny"}, default="allow")
    assert decide(p) == Decision("allow", None, "no rule matched (default allow)")
    assert decide(policy()).action == "deny"


def test_first_matching_rule_decides() -> None:
    p = policy(
        {"sources": [ADMIN], "action": "deny"},
        {"sources": [WEB, ADMIN], "action": "allow"},
        {"sources": ["*"], "action": "deny"},
    )
    assert (decide(p).action, decide(p).rule_index) == ("allow", 1)
    assert (decide(p, ADMIN).action, decide(p, ADMIN).rule_index) == ("deny", 0)
    other = decide(p, "spiffe://mesh.local/ns/default/svc/other")
    assert (other.action, other.rule_index) == ("deny", 2)


def test_star_matches_unauthenticated_peers_and_names_do_not() -> None:
    p = policy({"sources": [WEB], "action": "allow"}, {"sources": ["*"], "action": "audit"})
    d = decide(p, None)
    assert (d.action, d.rule_index) == ("audit", 1)
    assert d.allowed
    assert "unauthenticated" in d.reason
    assert decide(policy({"sources": [WEB], "action": "allow"}), None).action == "deny"


@pytest.mark.parametrize(
    ("permission", "method", "path", "headers", "expected"),
    [
        ({}, "DELETE", "/x", {}, True),
        ({"path": {"prefix": "/api/"}}, "GET", "/api/users", {}, True),
        ({"path": {"prefix": "/api/"}}, "GET", "/admin", {}, False),
        ({"path": {"exact": "/health"}, "methods": ["GET", "HEAD"]}, "HEAD", "/health", {}, True),
        ({"path": {"exact": "/health"}, "methods": ["GET"]}, "POST", "/health", {}, False),
        ({"methods": ["get"]}, "get", "/", {}, True),
        ({"headers": [{"name": "x-tenant", "exact": "a"}]}, "GET", "/", {"X-Tenant": "a"}, True),
        ({"headers": [{"name": "x-tenant", "exact": "a"}]}, "GET", "/", {"x-tenant": "b"}, False),
        ({"headers": [{"name": "x-debug", "present": False}]}, "GET", "/", {}, True),
        ({"path": {"regex": r"/u/\d+"}}, "GET", "/u/12", {}, True),
    ],
)
def test_permissions(
    permission: dict[str, Any], method: str, path: str, headers: dict[str, str], expected: bool
) -> None:
    p = policy({"sources": [WEB], "action": "allow", "permissions": [permission]})
    assert (decide(p, WEB, method, path, headers).action == "allow") is expected


def test_any_permission_of_a_rule_suffices() -> None:
    p = policy(
        {
            "sources": ["*"],
            "action": "allow",
            "permissions": [{"path": {"prefix": "/a"}}, {"methods": ["POST"]}],
        }
    )
    assert decide(p, path="/a/1").action == "allow"
    assert decide(p, method="POST", path="/b").action == "allow"
    assert decide(p, path="/b").action == "deny"


def test_jwt_requirement_is_reported() -> None:
    p = policy({"sources": ["*"], "action": "allow", "jwt": JWKS})
    d = decide(p)
    assert d.action == "allow"
    assert d.reason.endswith("requires JWT from https://idp.example")
    assert "JWT" not in decide(policy({"sources": ["*"], "action": "allow"})).reason


def test_compiled_policy_matches_evaluate() -> None:
    p = policy(
        {"sources": [WEB], "action": "allow", "permissions": [{"headers": [{"name": "x-a"}]}]}
    )
    compiled = CompiledPolicy(p)
    assert compiled.policy is p
    assert compiled.evaluate(source_id=WEB, method="GET", path="/", headers=[(b"X-A", b"1")]) == (
        decide(p, headers={"x-a": "1"})
    )


SOURCES = [WEB, ADMIN, None, "spiffe://mesh.local/ns/default/svc/other"]


@given(
    rules=st.lists(
        st.fixed_dictionaries(
            {
                "sources": st.lists(st.sampled_from([WEB, ADMIN, "*"]), min_size=1, max_size=2),
                "action": st.sampled_from(["allow", "deny", "audit"]),
                "permissions": st.lists(
                    st.sampled_from([{}, {"methods": ["POST"]}, {"path": {"prefix": "/a"}}]),
                    max_size=2,
                ),
            }
        ),
        max_size=4,
    ),
    default=st.sampled_from(["allow", "deny"]),
    source=st.sampled_from(SOURCES),
    method=st.sampled_from(["GET", "POST"]),
    path=st.sampled_from(["/", "/a", "/b"]),
)
def test_decision_is_the_first_applicable_rule(
    rules: list[dict[str, Any]], default: str, source: str | None, method: str, path: str
) -> None:
    p = policy(*rules, default=default)
    d = decide(p, source, method, path)

    def applies(rule: dict[str, Any]) -> bool:
        if "*" not in rule["sources"] and source not in rule["sources"]:
            return False
        perms = rule["permissions"]
        return not perms or any(
            ("methods" not in x or method in x["methods"])
            and ("path" not in x or path.startswith(x["path"]["prefix"]))
            for x in perms
        )

    first = next((i for i, r in enumerate(rules) if applies(r)), None)
    assert d.rule_index == first
    assert d.action == (default if first is None else rules[first]["action"])


def test_l4_skips_rules_with_permissions_or_jwt() -> None:
    p = policy(
        {"sources": [WEB], "action": "deny", "permissions": [{"methods": ["GET"]}]},
        {"sources": [WEB], "action": "allow", "jwt": JWKS},
        {"sources": [ADMIN], "action": "deny"},
        {"sources": ["*"], "action": "audit"},
        default="deny",
    )
    compiled = CompiledPolicy(p)
    assert compiled.evaluate_l4(WEB) == Decision("audit", 3, f"rule 3 (audit) matches {WEB}")
    assert (compiled.evaluate_l4(ADMIN).action, compiled.evaluate_l4(ADMIN).rule_index) == (
        "deny",
        2,
    )
    unauthenticated = compiled.evaluate_l4(None)
    assert (unauthenticated.action, unauthenticated.rule_index) == ("audit", 3)
    assert evaluate(p, source_id=ADMIN, method="", path="", headers={}, l4=True).rule_index == 2
    only_l7 = CompiledPolicy(policy({"sources": [WEB], "action": "allow", "jwt": JWKS}))
    assert only_l7.evaluate_l4(WEB) == Decision("deny", None, "no rule matched (default deny)")
