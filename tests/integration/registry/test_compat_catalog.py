"""Catalog register/deregister/services/service/nodes/node/datacenters with py-consul.

Consul docs followed: api-docs/catalog (register: Node/Address required, Service ID defaults
to its name, check Status defaults to critical; deregister by node/service/check; list
datacenters, nodes, services, nodes for a service with ``tag``, services for a node;
``dc`` for an unknown datacenter is an error).
"""

from __future__ import annotations

from typing import Any

import consul
import httpx
import pytest


def _others(nodes: list[dict[str, Any]], me: str) -> list[str]:
    return [n["Node"] for n in nodes if n["Node"] != me]


def test_fresh_catalog(consul_client: Any) -> None:
    c = consul_client
    me = c.agent.self()["Config"]["NodeName"]
    _, nodes = c.catalog.nodes()
    # The registry's own node is there from the start, as a Consul server's is.
    assert [n["Node"] for n in nodes] == [me]
    assert nodes[0]["Datacenter"] == "dc1"
    assert c.catalog.datacenters() == ["dc1"]
    _, services = c.catalog.services()
    assert services == {"consul": []}


def test_catalog_lifecycle(consul_client: Any) -> None:
    """The sequence of py-consul's test_catalog."""
    c = consul_client
    me = c.agent.self()["Config"]["NodeName"]

    with pytest.raises(consul.ConsulException):
        c.catalog.register("foo", "10.1.10.11", dc="dc2")

    assert c.catalog.register("n1", "10.1.10.11", service={"service": "s1"}, check={"name": "c1"})
    assert c.catalog.register("n1", "10.1.10.11", service={"service": "s2"}) is True
    assert c.catalog.register("n2", "10.1.10.12", service={"service": "s1", "tags": ["master"]})

    with pytest.raises(consul.ConsulException):
        c.catalog.nodes(dc="dc2")
    _, nodes = c.catalog.nodes()
    assert _others(nodes, me) == ["n1", "n2"]
    assert {n["Node"]: n["Address"] for n in nodes if n["Node"] != me} == {
        "n1": "10.1.10.11",
        "n2": "10.1.10.12",
    }

    with pytest.raises(consul.ConsulException):
        c.catalog.services(dc="dc2")
    _, services = c.catalog.services()
    assert services == {"s1": ["master"], "s2": [], "consul": []}

    with pytest.raises(consul.ConsulException):
        c.catalog.node("n1", dc="dc2")
    _, node = c.catalog.node("n1")
    assert set(node["Services"]) == {"s1", "s2"}
    assert node["Node"]["Node"] == "n1"
    assert node["Node"]["Address"] == "10.1.10.11"
    assert node["Services"]["s1"]["Service"] == "s1"
    assert node["Services"]["s1"]["ID"] == "s1"
    _, node = c.catalog.node("n3")
    assert node is None

    with pytest.raises(consul.ConsulException):
        c.catalog.service("s1", dc="dc2")
    _, nodes = c.catalog.service("s1")
    assert {x["Node"] for x in nodes} == {"n1", "n2"}
    _, nodes = c.catalog.service("s1", tag="master")
    assert {x["Node"] for x in nodes} == {"n2"}

    with pytest.raises(consul.ConsulException):
        c.catalog.deregister("n2", dc="dc2")
    assert c.catalog.deregister("n1", check_id="c1") is True
    assert c.catalog.deregister("n2", service_id="s1") is True
    _, nodes = c.catalog.nodes()
    assert _others(nodes, me) == ["n1", "n2"]
    _, nodes = c.catalog.service("s1")
    assert {x["Node"] for x in nodes} == {"n1"}

    assert c.catalog.deregister("n1") is True
    assert c.catalog.deregister("n2") is True
    _, nodes = c.catalog.nodes()
    assert _others(nodes, me) == []
    _, services = c.catalog.services()
    assert services == {"consul": []}


def test_catalog_service_entry_shape(consul_client: Any) -> None:
    c = consul_client
    service = {
        "service": "web",
        "id": "web-1",
        "tags": ["v1"],
        "address": "10.0.0.5",
        "port": 8080,
        "meta": {"team": "a"},
    }
    assert c.catalog.register("n1", "10.1.10.11", service=service)
    _, nodes = c.catalog.service("web")
    assert len(nodes) == 1
    entry = nodes[0]
    assert entry["Node"] == "n1"
    assert entry["Address"] == "10.1.10.11"
    assert entry["Datacenter"] == "dc1"
    assert entry["ServiceID"] == "web-1"
    assert entry["ServiceName"] == "web"
    assert entry["ServiceTags"] == ["v1"]
    assert entry["ServiceAddress"] == "10.0.0.5"
    assert entry["ServicePort"] == 8080
    assert entry["ServiceMeta"] == {"team": "a"}
    assert entry["CreateIndex"] > 0
    assert entry["ModifyIndex"] >= entry["CreateIndex"]


def test_catalog_check_defaults_and_health(consul_client: Any) -> None:
    c = consul_client
    check = {"name": "c1", "serviceid": "s1"}
    assert c.catalog.register("n1", "10.1.10.11", service={"service": "s1"}, check=check)
    _, checks = c.health.node("n1")
    c1 = next(ch for ch in checks if ch["Name"] == "c1")
    # CheckID defaults to the name, Status to critical.
    assert c1["CheckID"] == "c1"
    assert c1["Status"] == "critical"
    assert c1["ServiceID"] == "s1"
    assert c1["Node"] == "n1"
    passing = {"name": "c1", "serviceid": "s1", "status": "passing"}
    c.catalog.register("n1", "10.1.10.11", service={"service": "s1"}, check=passing)
    _, entries = c.health.service("s1", passing=True)
    assert [e["Node"]["Node"] for e in entries] == ["n1"]


def test_catalog_tagged_addresses_and_skip_node_update(consul_client: Any) -> None:
    """py-consul test_catalog_register_skip_node_update_and_tagged_addresses."""
    c = consul_client
    tagged = {"lan": "10.1.10.11", "wan": "10.1.10.21"}
    assert c.catalog.register(
        "n-tagged", "10.1.10.11", service={"service": "s-tagged"}, tagged_addresses=tagged
    )
    _, node = c.catalog.node("n-tagged")
    assert node["Node"]["TaggedAddresses"]["lan"] == "10.1.10.11"
    assert node["Node"]["TaggedAddresses"]["wan"] == "10.1.10.21"
    assert c.catalog.register(
        "n-tagged", "10.1.10.11", service={"service": "s-tagged"}, skip_node_update=True
    )
    _, node = c.catalog.node("n-tagged")
    assert node["Node"]["Address"] == "10.1.10.11"
    assert c.catalog.deregister("n-tagged") is True


def test_catalog_service_tags_union(consul_client: Any) -> None:
    c = consul_client
    c.catalog.register("n1", "10.0.0.1", service={"service": "api", "tags": ["a", "b"]})
    c.catalog.register("n2", "10.0.0.2", service={"service": "api", "tags": ["b", "c"]})
    _, services = c.catalog.services()
    assert sorted(services["api"]) == ["a", "b", "c"]


def test_catalog_node_meta(http: httpx.Client, consul_client: Any) -> None:
    for name, env in (("n1", "prod"), ("n2", "dev")):
        body = {"Node": name, "Address": "10.0.0.1", "NodeMeta": {"env": env}}
        assert http.put("/v1/catalog/register", json=body).status_code == 200
    _, nodes = consul_client.catalog.nodes(node_meta={"env": "prod"})
    assert [n["Node"] for n in nodes] == ["n1"]
    assert nodes[0]["Meta"]["env"] == "prod"


@pytest.mark.parametrize(
    "body",
    [{"Address": "10.0.0.1"}, {"Node": "n1"}],
    ids=["missing-node", "missing-address"],
)
def test_catalog_register_validation(http: httpx.Client, body: dict[str, Any]) -> None:
    # Consul's Catalog.Register RPC answers "Must provide node" / "Must provide address if
    # SkipNodeUpdate is not set" as plain errors, which its HTTP layer turns into 500.
    resp = http.put("/v1/catalog/register", json=body)
    assert resp.status_code in (400, 500), resp.text
    assert "Must provide" in resp.text
    assert "n1" not in [n["Node"] for n in http.get("/v1/catalog/nodes").json()]


def test_catalog_service_unknown_is_empty_list(http: httpx.Client) -> None:
    resp = http.get("/v1/catalog/service/nope")
    assert resp.status_code == 200
    assert resp.text.strip() == "[]"
