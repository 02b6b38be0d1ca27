"""py-consul's ACL API against the registry: policies, roles, tokens, and a restart.

Consul docs followed: api-docs/acl/tokens, /policies, /roles (JSON shapes, links by ID or
Name, ``ServiceIdentities``, ``ExpirationTTL`` between 1m and 24h, deleting the request's
own token refused), docs/security/acl/acl-rules (HCL and JSON rules; exact beats prefix,
longest prefix wins; default deny). The registry is a real ``controld registry`` process with
a management token (``acl_registry``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import consul
import httpx
import pytest

from .compat_support import MGMT_TOKEN, RegistryProcess

pytestmark = pytest.mark.timeout(120)

RULES_HCL = """
# the app's own keys
key_prefix "app/" {
  policy = "write"
}
key "app/locked" { policy = "deny" }
service_prefix "" { policy = "read" }
"""


@pytest.fixture
def admin(acl_registry: RegistryProcess, make_client: Callable[..., Any]) -> Any:
    return make_client(acl_registry, token=MGMT_TOKEN)


def test_policy_role_token_lifecycle(
    acl_registry: RegistryProcess, admin: Any, make_client: Callable[..., Any]
) -> None:
    policy = admin.acl.policy.create("app-kv", rules={"key_prefix": {"app/": {"policy": "write"}}})
    assert policy["Name"] == "app-kv"
    assert policy["ID"] and policy["CreateIndex"] == policy["ModifyIndex"] > 0
    assert (
        admin.acl.policy.read(policy["ID"])["Rules"]
        == '{"key_prefix": {"app/": {"policy": "write"}}}'
    )
    role = admin.acl.role.create(
        "web-role", service_identities=[{"ServiceName": "web"}], policies_name=["app-kv"]
    )
    assert role["Policies"] == [{"ID": policy["ID"], "Name": "app-kv"}]
    assert admin.acl.role.read_by_name("web-role")["ID"] == role["ID"]
    token = admin.acl.token.create(description="app", roles_id=[role["ID"]], expiration_ttl="1h")
    assert token["Roles"] == [{"ID": role["ID"], "Name": "web-role"}]
    assert token["ExpirationTime"] and token["Description"] == "app"
    assert {p["Name"] for p in admin.acl.policy.list()} == {"global-management", "app-kv"}
    assert token["AccessorID"] in {t["AccessorID"] for t in admin.acl.token.list()}

    app = make_client(acl_registry, token=token["SecretID"])
    me = app.acl.token.read_self()
    assert (me["AccessorID"], me["SecretID"]) == (token["AccessorID"], token["SecretID"])
    # What the role grants: its policy's keys, its service identity; nothing else.
    assert app.kv.put("app/x", "1") is True
    assert app.agent.service.register("web") is True
    with pytest.raises(consul.ACLPermissionDenied):
        app.kv.put("other/x", "1")
    with pytest.raises(consul.ACLPermissionDenied):
        app.agent.service.register("db")
    with pytest.raises(consul.ACLPermissionDenied):
        app.acl.policy.list()

    clone = admin.acl.token.clone(token["AccessorID"], description="copy")
    assert clone["SecretID"] != token["SecretID"] and clone["Description"] == "copy"
    updated = admin.acl.token.update(
        token["AccessorID"], description="renamed", policies_name=["app-kv"]
    )
    assert updated["Description"] == "renamed" and "Roles" not in updated
    assert admin.acl.token.delete(token["AccessorID"]) is True
    with pytest.raises(consul.ACLPermissionDenied):
        app.kv.put("app/x", "2")
    assert admin.acl.role.delete(role["ID"]) is True
    assert admin.acl.policy.delete(policy["ID"]) is True
    assert {p["Name"] for p in admin.acl.policy.list()} == {"global-management"}


def test_hcl_rules_and_precedence(
    acl_registry: RegistryProcess, admin: Any, make_client: Callable[..., Any]
) -> None:
    with httpx.Client(base_url=acl_registry.url, headers={"X-Consul-Token": MGMT_TOKEN}) as http:
        made = http.put("/v1/acl/policy", json={"Name": "app", "Rules": RULES_HCL})
        assert made.status_code == 200, made.text
        token = admin.acl.token.create(policies_name=["app"])
        bad = http.put(
            "/v1/acl/policy",
            json={
                "Name": "bad",
                "Rules": 'key_prefix "" {\n  policy = "read"\n  intentions = "write"\n}',
            },
        )
        assert bad.status_code == 400
        assert "line 3" in bad.text and "intentions" in bad.text
        unknown = http.put(
            "/v1/acl/policy", json={"Name": "bad2", "Rules": 'query "" { policy = "read" }'}
        )
        assert unknown.status_code == 400 and "line 1" in unknown.text
    assert "bad" not in {p["Name"] for p in admin.acl.policy.list()}
    app = make_client(acl_registry, token=token["SecretID"])
    assert app.kv.put("app/free", "1") is True
    with pytest.raises(consul.ACLPermissionDenied):
        app.kv.put("app/locked", "1")  # the exact deny beats the prefix write
    with pytest.raises(consul.ACLPermissionDenied):
        app.kv.delete("app/", recurse=True)  # a denied key below refuses the whole tree


def test_bootstrap_refused_once_a_management_token_exists(acl_registry: RegistryProcess) -> None:
    with httpx.Client(base_url=acl_registry.url) as http:
        resp = http.put("/v1/acl/bootstrap")
    assert resp.status_code == 403
    assert "ACL bootstrap no longer allowed" in resp.text


def test_acl_objects_survive_a_restart(
    acl_registry: RegistryProcess, admin: Any, make_client: Callable[..., Any]
) -> None:
    policy = admin.acl.policy.create("kv-a", rules={"key_prefix": {"a/": {"policy": "write"}}})
    role = admin.acl.role.create("r", policies_id=[policy["ID"]])
    token = admin.acl.token.create(roles_name=["r"], service_identities=[{"ServiceName": "web"}])
    acl_registry.restart(hard=True)
    after = make_client(acl_registry, token=MGMT_TOKEN)
    read = after.acl.token.read(token["AccessorID"])
    for field in ("SecretID", "Roles", "ServiceIdentities", "CreateIndex", "ModifyIndex"):
        assert read[field] == token[field], field
    assert after.acl.role.read(role["ID"])["Policies"] == [{"ID": policy["ID"], "Name": "kv-a"}]
    app = make_client(acl_registry, token=token["SecretID"])
    assert app.kv.put("a/1", "x") is True
    assert app.agent.service.register("web") is True
    with pytest.raises(consul.ACLPermissionDenied):
        app.kv.put("b/1", "x")
