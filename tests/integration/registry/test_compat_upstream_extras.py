"""Behaviours py-consul's own test suite (criteo/py-consul, tests/) checks beyond the issue's list.

Compatibility is judged with that suite, run against a single dev-mode Consul server, so
these mirror what it expects from endpoints next to the ones the issue names: filter
expressions (bexpr) on catalog/health/agent reads, ``merge-central-config``/``peer``
parameters, script check registration, agent reload/metrics/token, KV transactions, user
events, and the ACL token API's view of the management and anonymous tokens. Out of scope
here (not mirrored): config entries, prepared queries, intentions, coordinates, operator,
snapshots, ACL roles/policies/auth methods, agent monitor/leave.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import consul
import httpx
import pytest

from .compat_support import MGMT_TOKEN, RegistryProcess

Check = consul.Check


def test_script_check_registration(consul_client: Any) -> None:
    """test_agent_checks registers script checks (with an int interval) and expects True."""
    c = consul_client
    assert c.agent.check.register("script_check", Check.script(["/bin/true"], 10)) is True
    assert set(c.agent.checks()) == {"script_check"}
    assert c.agent.check.deregister("script_check") is True


def test_agent_reload_and_metrics(consul_client: Any) -> None:
    c = consul_client
    assert c.agent.reload() is True
    metrics = c.agent.metrics()
    assert "Timestamp" in metrics
    assert "Gauges" in metrics
    assert isinstance(c.agent.metrics(format_prometheus=True), str)


def test_agent_token_without_acls_is_401(consul_client: Any) -> None:
    with pytest.raises(consul.ACLDisabled):
        consul_client.agent.token.set_default("some-secret")


def test_agent_token_with_acls(
    acl_registry: RegistryProcess, make_client: Callable[..., Any]
) -> None:
    c = make_client(acl_registry)
    assert c.agent.token.set_default("default-secret", token=MGMT_TOKEN) is True
    assert c.agent.token.set_agent("agent-secret", token=MGMT_TOKEN) is True


def test_filter_expressions(consul_client: Any) -> None:
    """test_catalog_filter / test_health_*_filter."""
    c = consul_client
    node = c.agent.self()["Config"]["NodeName"]
    c.catalog.register("n-filter-1", "10.1.10.31", service={"service": "web", "tags": ["prod"]})
    c.catalog.register("n-filter-2", "10.1.10.32", service={"service": "web", "tags": ["staging"]})
    _, nodes = c.catalog.nodes(filter_expr='Node == "n-filter-1"')
    assert [x["Node"] for x in nodes] == ["n-filter-1"]
    _, services = c.catalog.services(filter_expr='"prod" in ServiceTags')
    assert services == {"web": ["prod"]}
    _, node_entry = c.catalog.node("n-filter-1", filter_expr='Service == "does-not-exist"')
    assert node_entry["Services"] == {}
    _, nodes = c.catalog.service("web", filter_expr='"prod" in ServiceTags')
    assert {x["Node"] for x in nodes} == {"n-filter-1"}
    _, nodes = c.catalog.connect("web", filter_expr='"prod" in ServiceTags')
    assert nodes == []
    with pytest.raises(consul.ConsulException):
        c.catalog.nodes(filter_expr="not a valid expression((")

    c.agent.service.register("foo", service_id="foo:1", check=Check.ttl("10s"), tags=["tag:foo:1"])
    c.agent.service.register("foo", service_id="foo:2", check=Check.ttl("10s"), tags=["tag:foo:2"])
    _, entries = c.health.service("foo", filter_expr='"tag:foo:1" in Service.Tags')
    assert [e["Service"]["ID"] for e in entries] == ["foo:1"]
    c.agent.check.ttl_pass("service:foo:1")
    _, checks = c.health.state("passing", filter_expr='ServiceID == "foo:1"')
    assert [ch["ServiceID"] for ch in checks] == ["foo:1"]
    _, checks = c.health.checks("foo", filter_expr='CheckID == "service:foo:2"')
    assert [ch["CheckID"] for ch in checks] == ["service:foo:2"]
    _, checks = c.health.node(node, filter_expr=f'Node == "{node}"')
    assert node in [ch["Node"] for ch in checks]
    assert set(c.agent.services(filter_expr='Service == "foo"')) == {"foo:1", "foo:2"}


def test_merge_central_config_and_peer_params(consul_client: Any) -> None:
    c = consul_client
    c.catalog.register("n-mcc", "10.1.10.41", service={"service": "web-mcc", "port": 8080})
    _, nodes = c.catalog.service("web-mcc", merge_central_config=True)
    assert nodes[0]["ServicePort"] == 8080
    _, nodes = c.catalog.service("web-mcc", peer="unknown-peer")
    assert nodes == []
    c.agent.service.register("foo", service_id="foo:1", check=Check.ttl("10s"))
    _, entries = c.health.service("foo", merge_central_config=True)
    assert [e["Service"]["ID"] for e in entries] == ["foo:1"]
    _, entries = c.health.service("foo", peer="non-existent-peer")
    assert entries == []


def test_txn_kv(consul_client: Any) -> None:
    c = consul_client
    value = base64.b64encode(b"1").decode("utf8")
    r = c.txn.put([{"KV": {"Verb": "set", "Key": "asdf", "Value": value}}])
    assert r["Errors"] is None
    r = c.txn.put([{"KV": {"Verb": "get", "Key": "asdf"}}])
    assert r["Results"][0]["KV"]["Value"] == value


def test_events(consul_client: Any) -> None:
    c = consul_client
    assert c.event.fire("fooname", "foobody")
    _, events = c.event.list(name="othername")
    assert events == []
    _, events = c.event.list(name="fooname")
    assert [e["Name"] for e in events] == ["fooname"]
    assert events[0]["Payload"] == b"foobody"  # py-consul base64-decodes Payload


def test_acl_token_api_basics(
    acl_registry: RegistryProcess, make_client: Callable[..., Any]
) -> None:
    c = make_client(acl_registry)
    with pytest.raises(consul.ACLPermissionDenied):
        c.acl.token.list()
    tokens = c.acl.token.list(token=MGMT_TOKEN)
    assert any(t.get("SecretID") == MGMT_TOKEN for t in tokens)
    assert any(t.get("AccessorID") == "00000000-0000-0000-0000-000000000002" for t in tokens)
    me = c.acl.token.read_self(token=MGMT_TOKEN)
    assert me["SecretID"] == MGMT_TOKEN
    with pytest.raises(consul.ConsulException):
        c.acl.bootstrap()


def test_readiness_probe_of_upstream_conftest(registry: RegistryProcess) -> None:
    """What py-consul's conftest does before any test: leader, register, health, version."""
    with httpx.Client(base_url=f"{registry.url}/v1/", timeout=5.0) as http:
        assert http.get("status/leader").json()
        http.put("agent/service/register", json={"name": "test-service"})
        assert http.get("health/service/test-service").json()
        http.put("agent/service/deregister/test-service")
        version = http.get("agent/self").json()["Config"]["Version"].strip()
    parts = version.split(".")
    assert len(parts) >= 3 and all(p.isdigit() for p in parts[:2]), version
