"""The dashboard's control edits as pure functions on resource documents."""

from __future__ import annotations

import pytest

from meshcore.model.resources.access import AccessPolicy
from meshcore.model.resources.route import HTTPRoute
from tui.dashboard import edits
from tui.dashboard.fake import demo_resources

pytestmark = pytest.mark.timeout(30)


def _get(kind: str, name: str) -> dict:  # type: ignore[type-arg]
    return next(r for r in demo_resources() if r["kind"] == kind and r["metadata"]["name"] == name)


def test_split_rules_name_rules_like_the_compiler() -> None:
    rules = edits.split_rules(demo_resources())
    assert [(r.route, r.label, r.is_split) for r in rules] == [
        ("api", "slow", False),
        ("api", "canary", True),
    ]
    assert rules[1].backends == (("v1", 90), ("v2", 10))
    route = {
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {"service": "s", "rules": [{}]},
    }
    assert edits.split_rules([route])[0].label == "rule-0"


def test_shift_split_sets_the_weights_and_stays_valid() -> None:
    route = _get("HTTPRoute", "api")
    route["meta"] = {"revision": 3}
    doc = edits.shift_split(route, 1, [50, 50])
    assert "meta" not in doc
    assert [b["weight"] for b in doc["spec"]["rules"][1]["backends"]] == [50, 50]
    assert route["spec"]["rules"][1]["backends"][0]["weight"] == 90  # input untouched
    HTTPRoute.model_validate(doc)


@pytest.mark.parametrize(
    ("index", "weights", "message"),
    [(1, [100], "2 backends"), (1, [0, 0], "not all 0"), (1, [-1, 5], ">= 0"), (9, [1], "no rule")],
)
def test_shift_split_refuses_nonsense(index: int, weights: list[int], message: str) -> None:
    with pytest.raises(edits.EditError, match=message):
        edits.shift_split(_get("HTTPRoute", "api"), index, weights)


def test_toggle_fault_on_then_off() -> None:
    route = _get("HTTPRoute", "api")
    on, state = edits.toggle_fault(route, 1)
    assert state is True
    assert on["spec"]["rules"][1]["fault"] == {"abort": {"percent": 10, "status": 503}}
    HTTPRoute.model_validate(on)
    off, state = edits.toggle_fault(on, 1)
    assert state is False
    assert "fault" not in off["spec"]["rules"][1]
    with pytest.raises(edits.EditError):
        edits.toggle_fault(_get("AccessPolicy", "api-callers"), 0)


def test_deny_then_allow_restores_the_policy() -> None:
    policy = _get("AccessPolicy", "api-callers")
    denied = edits.deny_source(policy, "web")
    assert denied["spec"]["rules"][0] == {"sources": ["web"], "action": "deny"}
    assert edits.denied_sources(denied) == ["web"]
    AccessPolicy.model_validate(denied)
    with pytest.raises(edits.EditError, match="already denied"):
        edits.deny_source(denied, "web")
    allowed = edits.allow_source(denied, "web")
    assert allowed["spec"] == policy["spec"]
    with pytest.raises(edits.EditError, match="already allowed"):
        edits.allow_source(allowed, "web")


def test_allow_adds_a_rule_for_a_new_source() -> None:
    doc = edits.allow_source(_get("AccessPolicy", "api-callers"), "loadgen")
    assert doc["spec"]["rules"][-1] == {"sources": ["loadgen"], "action": "allow"}
    AccessPolicy.model_validate(doc)


def test_access_policies_for_a_destination_in_name_order() -> None:
    found = edits.access_policies_for(demo_resources(), "api")
    assert [p["metadata"]["name"] for p in found] == ["api-callers"]
    assert edits.access_policies_for(demo_resources(), "web") == []
