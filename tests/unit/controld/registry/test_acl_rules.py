"""The ACL rules parser, the authorizer's precedence, identities and token expiry (pure)."""

from __future__ import annotations

import pytest

from controld.registry.acl_authz import Authorizer, identity_rules
from controld.registry.acl_model import MANAGEMENT_POLICY_ID, Policy, Token
from controld.registry.acl_resolve import AclResolver
from controld.registry.acl_rules import RulesError, parse_rules
from controld.registry.errors import Forbidden
from controld.registry.state import State

pytestmark = pytest.mark.timeout(30)

HCL = """
# comment
key_prefix "" { policy = "read" }
key_prefix "foo/" {
  policy = "write"
}
key_prefix "foo/private/" { policy = "deny" } // trailing comment
key "foo/bar/secret" { policy = "deny" }
/* block
   comment */
operator = "read"
service "web" { policy = "write", }
"""

JSON = """{
  "key_prefix": {"": {"policy": "read"}, "foo/": {"policy": "write"},
                 "foo/private/": {"policy": "deny"}},
  "key": {"foo/bar/secret": {"policy": "deny"}},
  "operator": "read",
  "service": {"web": {"policy": "write"}}
}"""


def test_hcl_and_json_forms_parse_the_same() -> None:
    assert parse_rules(HCL) == parse_rules(JSON)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('key_prefix "" {\n  policy = "read"\n  intentions = "write"\n}', 3, "intentions"),
        ('\n\nquery "" { policy = "read" }', 3, "query"),
        ('service "web" { policy = "rwx" }', 1, "policy must be one of"),
        ('service "web" { policy = "list" }', 1, "'list' applies only"),
        ('operator "x" { policy = "read" }', 1, "takes no segment"),
        ('service = "read"', 1, "needs a segment"),
        ('key "a" {\n policy = "read"\n', 3, "unexpected end"),
        ('key "a" { policy = "read" }\nkey "b" { policy = "read" policy = "write" }', 2, "twice"),
        ("key 'a' {}", 1, "unexpected"),
        ('{"key": {"a": {"policy": "read", "extra": 1}}}', 1, "nothing else"),
        ('{"key": [1]}', 1, "object of segments"),
        ("{not json", 1, "not valid JSON"),
    ],
)
def test_refused_with_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(text)
    assert f"line {line}" in str(info.value)
    assert words in str(info.value)


def test_precedence_exact_then_longest_prefix_then_default_deny() -> None:
    authz = Authorizer([parse_rules(HCL)])
    assert authz.key_read("anything")
    assert not authz.key_write("anything")
    assert authz.key_write("foo/x")
    assert not authz.key_read("foo/private/x")  # the longer prefix wins
    assert not authz.key_read("foo/bar/secret")  # exact beats every prefix
    assert authz.key_write("foo/bar/secret2")
    assert not authz.key_write_prefix("foo/")  # a deny below refuses the tree
    assert authz.key_write_prefix("foo/x/")
    assert authz.operator_read() and not authz.operator_write()
    assert not authz.service_read("db")  # no rule: default deny
    assert not authz.acl_read()


def test_policies_merge_deny_over_write_over_read() -> None:
    a = parse_rules('service "web" { policy = "read" }')
    b = parse_rules('service "web" { policy = "write" }')
    c = parse_rules('service "web" { policy = "deny" }')
    assert Authorizer([a, b]).service_write("web")
    assert not Authorizer([a, b, c]).service_read("web")


def test_service_identity_grants_what_consul_grants() -> None:
    authz = Authorizer([identity_rules([{"ServiceName": "web"}], [], "dc1")])
    assert authz.service_write("web") and authz.service_write("web-sidecar-proxy")
    assert not authz.service_write("payments")
    assert authz.service_read("payments") and authz.node_read("any-node")
    assert not authz.node_write("any-node")
    assert not authz.key_read("meshd/x") and not authz.key_list("meshd/x")
    elsewhere = Authorizer(
        [identity_rules([{"ServiceName": "web", "Datacenters": ["dc2"]}], [], "dc1")]
    )
    assert not elsewhere.service_write("web")
    node = Authorizer([identity_rules([], [{"NodeName": "n1", "Datacenter": "dc1"}], "dc1")])
    assert node.node_write("n1") and not node.node_write("n2") and node.service_read("x")


def test_expired_and_unknown_tokens_are_refused() -> None:
    now = [1000.0]
    state = State()
    resolver = AclResolver(state, "dc1", enabled=True, clock=lambda: now[0])
    resolver.bootstrap("mgmt-secret")
    with state.write() as txn:
        txn.put_acl(
            Token(
                accessor_id="a",
                secret_id="short",
                service_identities=({"ServiceName": "web"},),
                create_time=now[0],
                expiration_time=now[0] + 60,
            )
        )
    assert resolver.resolve("short").service_write("web")
    assert resolver.resolve("mgmt-secret").management
    assert not resolver.resolve("").service_read("web")  # anonymous: default deny
    now[0] += 61
    with pytest.raises(Forbidden, match="ACL not found"):
        resolver.resolve("short")
    with pytest.raises(Forbidden, match="ACL not found"):
        resolver.resolve("made-up")


def test_management_policy_and_disabled_acls() -> None:
    state = State()
    resolver = AclResolver(state, "dc1", enabled=True)
    resolver.bootstrap(None)
    assert state.acl.policies[MANAGEMENT_POLICY_ID].name == "global-management"
    with state.write() as txn:
        txn.put_acl(Token(accessor_id="b", secret_id="boot", policies=(MANAGEMENT_POLICY_ID,)))
        txn.put_acl(Policy(id="p", name="broken", rules="not rules"))
        txn.put_acl(Token(accessor_id="c", secret_id="broken", policies=("p",)))
    assert resolver.resolve("boot").key_write_prefix("")
    assert not resolver.resolve("broken").key_read("x")  # a bad stored policy grants nothing
    assert AclResolver(state, "dc1", enabled=False).resolve("whatever").management
