"""Agent services, sidecars, maintenance, self/services with py-consul (and raw HTTP for shapes).

Consul docs followed: api-docs/agent/service (register with ``replace-existing-checks``,
``Kind``/``Proxy``, ``Connect.SidecarService``, deregister, maintenance, get service
configuration, local service health), api-docs/agent (self, node maintenance),
docs/connect/proxies/deploy-sidecar-services (sidecar defaults), api-docs/agent/check.
"""

from __future__ import annotations

import re
from typing import Any

import consul
import httpx
import pytest

from .compat_support import RegistryProcess

Check = consul.Check


def _node_name(c: Any) -> str:
    return str(c.agent.self()["Config"]["NodeName"])


def test_fresh_agent_has_no_services_or_checks(consul_client: Any) -> None:
    assert consul_client.agent.services() == {}
    assert consul_client.agent.checks() == {}


def test_register_minimal_service_exact_shape(consul_client: Any) -> None:
    # py-consul's own aio test asserts this exact document (empty fields omitted, defaults set).
    assert consul_client.agent.service.register("foo") is True
    assert consul_client.agent.services() == {
        "foo": {
            "Address": "",
            "Datacenter": "dc1",
            "EnableTagOverride": False,
            "ID": "foo",
            "Meta": {},
            "Port": 0,
            "Service": "foo",
            "Tags": [],
            "Weights": {"Passing": 1, "Warning": 1},
        }
    }
    assert consul_client.agent.service.deregister("foo") is True
    assert consul_client.agent.services() == {}


def test_register_all_fields_round_trip(consul_client: Any) -> None:
    c = consul_client
    assert (
        c.agent.service.register(
            "api",
            service_id="api-1",
            address="10.10.10.1",
            port=8080,
            tags=["v1", "primary"],
            meta={"version": "1.2.3"},
            weights={"Passing": 10, "Warning": 2},
            enable_tag_override=True,
            tagged_addresses={
                "lan": {"address": "10.10.10.1", "port": 8080},
                "wan": {"address": "192.168.1.1", "port": 80},
            },
        )
        is True
    )
    svc = c.agent.services()["api-1"]
    assert svc["ID"] == "api-1"
    assert svc["Service"] == "api"
    assert svc["Address"] == "10.10.10.1"
    assert svc["Port"] == 8080
    assert svc["Tags"] == ["v1", "primary"]
    assert svc["Meta"] == {"version": "1.2.3"}
    assert svc["Weights"] == {"Passing": 10, "Warning": 2}
    assert svc["EnableTagOverride"] is True
    # Lower-case keys in, Consul's casing out (py-consul test_agent_service_tagged_addresses).
    assert svc["TaggedAddresses"] == {
        "lan": {"Address": "10.10.10.1", "Port": 8080},
        "wan": {"Address": "192.168.1.1", "Port": 80},
    }
    definition = c.agent.service_definition("api-1")
    assert definition["ID"] == "api-1"
    assert definition["Service"] == "api"
    assert definition["Port"] == 8080


def test_reregister_same_id_updates_in_place(consul_client: Any) -> None:
    c = consul_client
    c.agent.service.register("web", service_id="web-1", port=80, tags=["a"])
    c.agent.service.register("web", service_id="web-1", port=81, tags=["b"])
    services = c.agent.services()
    assert list(services) == ["web-1"]
    assert services["web-1"]["Port"] == 81
    assert services["web-1"]["Tags"] == ["b"]


def test_deregister_unknown_service_is_404(consul_client: Any, http: httpx.Client) -> None:
    # Consul >= 1.11 answers 404 "Unknown service ID ..." (hashicorp/consul#10632).
    assert consul_client.agent.service.deregister("nope") is False
    assert http.put("/v1/agent/service/deregister/nope").status_code == 404
    assert http.get("/v1/agent/service/nope").status_code == 404


def test_register_without_name_is_400(http: httpx.Client) -> None:
    resp = http.put("/v1/agent/service/register", json={"ID": "x", "Port": 1})
    assert resp.status_code == 400, resp.text


def test_register_invalid_json_is_400(http: httpx.Client) -> None:
    resp = http.put("/v1/agent/service/register", content=b"{not json")
    assert resp.status_code == 400, resp.text


def test_register_wrong_method_is_405(http: httpx.Client) -> None:
    assert http.get("/v1/agent/service/register").status_code == 405


def test_service_check_ids_and_initial_status(consul_client: Any) -> None:
    c = consul_client
    c.agent.service.register("one", check=Check.ttl("30s"))
    c.agent.service.register(
        "multi", check=Check.ttl("30s"), extra_checks=[Check.ttl("30s"), Check.ttl("30s")]
    )
    checks = c.agent.checks()
    # One check: "service:<id>"; several: "service:<id>:<n>" counting from 1.
    assert set(checks) == {"service:one", "service:multi:1", "service:multi:2", "service:multi:3"}
    for check_id, check in checks.items():
        # New checks start critical (Consul docs: "the state is set immediately to critical").
        assert check["Status"] == "critical", check_id
        assert check["ServiceID"] == check_id.split(":")[1]
        assert check["Type"] == "ttl"
    assert checks["service:one"]["ServiceName"] == "one"
    assert checks["service:one"]["Node"] == _node_name(c)


def test_deregister_service_removes_its_checks(consul_client: Any) -> None:
    c = consul_client
    c.agent.service.register("foo", check=Check.ttl("30s"))
    c.agent.check.register("extra", Check.ttl("30s"), service_id="foo")
    assert set(c.agent.checks()) == {"service:foo", "extra"}
    assert c.agent.service.deregister("foo") is True
    assert c.agent.checks() == {}


def test_replace_existing_checks(consul_client: Any, http: httpx.Client) -> None:
    c = consul_client
    two = [
        {"CheckID": "a", "Name": "a", "TTL": "30s"},
        {"CheckID": "b", "Name": "b", "TTL": "30s"},
    ]
    assert http.put("/v1/agent/service/register", json={"Name": "svc", "Checks": two}).is_success
    assert set(c.agent.checks()) == {"a", "b"}
    only_a = {"Name": "svc", "Checks": two[:1]}
    # Without the flag, checks missing from the request stay.
    assert http.put("/v1/agent/service/register", json=only_a).is_success
    assert set(c.agent.checks()) == {"a", "b"}
    # With it, they are removed (py-consul sends replace-existing-checks=true).
    assert c.agent.service.register("svc", check=Check.ttl("30s"), replace_existing_checks=True)
    assert set(c.agent.checks()) == {"service:svc"}
    resp = http.put(
        "/v1/agent/service/register", params={"replace-existing-checks": "true"}, json=only_a
    )
    assert resp.is_success
    assert set(c.agent.checks()) == {"a"}


def test_connect_proxy_kind_and_proxy_fields(consul_client: Any) -> None:
    c = consul_client
    proxy = {
        "DestinationServiceName": "web",
        "DestinationServiceID": "web-1",
        "LocalServiceAddress": "127.0.0.1",
        "LocalServicePort": 8080,
        "Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191}],
    }
    assert c.agent.service.register(
        "web-proxy", service_id="web-proxy-1", port=21000, kind="connect-proxy", proxy=proxy
    )
    svc = c.agent.services()["web-proxy-1"]
    assert svc["Kind"] == "connect-proxy"
    assert svc["Port"] == 21000
    assert svc["Proxy"]["DestinationServiceName"] == "web"
    assert svc["Proxy"]["DestinationServiceID"] == "web-1"
    assert svc["Proxy"]["LocalServiceAddress"] == "127.0.0.1"
    assert svc["Proxy"]["LocalServicePort"] == 8080
    upstream = svc["Proxy"]["Upstreams"][0]
    assert upstream["DestinationName"] == "db"
    assert upstream["LocalBindPort"] == 9191

    _, nodes = c.catalog.service("web-proxy")
    assert [n["ServiceKind"] for n in nodes] == ["connect-proxy"]
    assert nodes[0]["ServiceProxy"]["DestinationServiceName"] == "web"
    _, entries = c.health.service("web-proxy")
    assert entries[0]["Service"]["Kind"] == "connect-proxy"
    assert entries[0]["Service"]["Proxy"]["DestinationServiceName"] == "web"


def test_connect_proxy_without_destination_is_400(http: httpx.Client) -> None:
    payload = {"Name": "p", "Kind": "connect-proxy", "Port": 21000, "Proxy": {}}
    resp = http.put("/v1/agent/service/register", json=payload)
    assert resp.status_code == 400, resp.text


def test_sidecar_service_defaults(consul_client: Any) -> None:
    c = consul_client
    assert c.agent.service.register("web", port=8080, connect={"sidecar_service": {}}) is True
    services = c.agent.services()
    # py-consul test_agent_service_connect: a separate "<id>-sidecar-proxy" service appears.
    assert set(services) == {"web", "web-sidecar-proxy"}
    sidecar = services["web-sidecar-proxy"]
    assert sidecar["Kind"] == "connect-proxy"
    assert sidecar["Service"] == "web-sidecar-proxy"
    # Consul assigns sidecar ports from 21000-21255 by default.
    assert 21000 <= sidecar["Port"] <= 21255
    assert sidecar["Proxy"]["DestinationServiceName"] == "web"
    assert sidecar["Proxy"]["DestinationServiceID"] == "web"
    assert sidecar["Proxy"]["LocalServiceAddress"] == "127.0.0.1"
    assert sidecar["Proxy"]["LocalServicePort"] == 8080
    # Deregistering the parent removes the sidecar it created.
    assert c.agent.service.deregister("web") is True
    assert c.agent.services() == {}


def test_sidecar_service_overrides_snake_case(consul_client: Any) -> None:
    c = consul_client
    sidecar = {
        "port": 20000,
        "tags": ["proxy"],
        "proxy": {"upstreams": [{"destination_name": "db", "local_bind_port": 9191}]},
    }
    c.agent.service.register(
        "api", service_id="api-1", port=9000, connect={"sidecar_service": sidecar}
    )
    svc = c.agent.services()["api-1-sidecar-proxy"]
    assert svc["Port"] == 20000
    assert svc["Tags"] == ["proxy"]
    assert svc["Proxy"]["DestinationServiceID"] == "api-1"
    assert svc["Proxy"]["LocalServicePort"] == 9000
    assert svc["Proxy"]["Upstreams"][0]["DestinationName"] == "db"
    assert svc["Proxy"]["Upstreams"][0]["LocalBindPort"] == 9191


def test_two_sidecars_get_distinct_ports(consul_client: Any) -> None:
    c = consul_client
    c.agent.service.register("a", port=1, connect={"sidecar_service": {}})
    c.agent.service.register("b", port=2, connect={"sidecar_service": {}})
    services = c.agent.services()
    assert services["a-sidecar-proxy"]["Port"] != services["b-sidecar-proxy"]["Port"]


def test_service_maintenance(consul_client: Any, http: httpx.Client) -> None:
    c = consul_client
    c.agent.service.register("foo", check=Check.ttl("30s"))
    c.agent.check.ttl_pass("service:foo")
    _, passing = c.health.service("foo", passing=True)
    assert len(passing) == 1

    assert c.agent.service.maintenance("foo", "true", "test") is True
    checks = c.agent.checks()
    maint = checks["_service_maintenance:foo"]
    assert maint["Notes"] == "test"
    assert maint["Status"] == "critical"
    assert maint["ServiceID"] == "foo"
    _, passing = c.health.service("foo", passing=True)
    assert passing == []

    assert c.agent.service.maintenance("foo", "false") is True
    assert "_service_maintenance:foo" not in c.agent.checks()
    _, passing = c.health.service("foo", passing=True)
    assert len(passing) == 1

    # No reason given: Consul still fills Notes with a default message.
    c.agent.service.maintenance("foo", "true")
    assert c.agent.checks()["_service_maintenance:foo"]["Notes"]
    # Unknown service -> 404; missing/invalid "enable" -> 400.
    assert http.put(
        "/v1/agent/service/maintenance/nope", params={"enable": "true"}
    ).status_code == (404)
    assert http.put("/v1/agent/service/maintenance/foo").status_code == 400
    assert http.put("/v1/agent/service/maintenance/foo", params={"enable": "x"}).status_code == 400


def test_node_maintenance(consul_client: Any) -> None:
    c = consul_client
    node = _node_name(c)
    c.agent.service.register("foo", check=Check.ttl("30s"))
    c.agent.check.ttl_pass("service:foo")

    assert c.agent.maintenance("true", "test") is True
    checks = c.agent.checks()
    assert checks["_node_maintenance"]["Notes"] == "test"
    assert checks["_node_maintenance"]["Status"] == "critical"
    assert checks["_node_maintenance"]["ServiceID"] == ""
    # A node-level critical check takes every service on the node out of ?passing.
    _, passing = c.health.service("foo", passing=True)
    assert passing == []
    _, node_checks = c.health.node(node)
    assert "_node_maintenance" in {ch["CheckID"] for ch in node_checks}

    assert c.agent.maintenance("false") is True
    assert "_node_maintenance" not in c.agent.checks()
    _, passing = c.health.service("foo", passing=True)
    assert len(passing) == 1


def _local_health(http: httpx.Client, service_id: str) -> tuple[int, Any]:
    resp = http.get(f"/v1/agent/health/service/id/{service_id}")
    return resp.status_code, resp.json()


def test_local_service_health_aggregation(consul_client: Any, http: httpx.Client) -> None:
    """maintenance > critical > warning > passing, with 200/429/503 (agent/service docs)."""
    c = consul_client
    c.agent.service.register("agg", check=Check.ttl("30s"), extra_checks=[Check.ttl("30s")])
    c.agent.check.ttl_pass("service:agg:1")
    c.agent.check.ttl_pass("service:agg:2")
    code, body = _local_health(http, "agg")
    assert (code, body["AggregatedStatus"]) == (200, "passing")
    assert body["Service"]["ID"] == "agg"
    assert len(body["Checks"]) == 2

    c.agent.check.ttl_warn("service:agg:1")
    code, body = _local_health(http, "agg")
    assert (code, body["AggregatedStatus"]) == (429, "warning")

    c.agent.check.ttl_fail("service:agg:2")
    code, body = _local_health(http, "agg")
    assert (code, body["AggregatedStatus"]) == (503, "critical")

    c.agent.service.maintenance("agg", "true")
    code, body = _local_health(http, "agg")
    assert (code, body["AggregatedStatus"]) == (503, "maintenance")

    c.agent.service.maintenance("agg", "false")
    code, body = _local_health(http, "agg")
    assert (code, body["AggregatedStatus"]) == (503, "critical")

    by_name = http.get("/v1/agent/health/service/name/agg")
    assert by_name.status_code == 503
    assert [e["AggregatedStatus"] for e in by_name.json()] == ["critical"]
    text = http.get("/v1/agent/health/service/id/agg", params={"format": "text"})
    assert (text.status_code, text.text) == (503, "critical")
    assert http.get("/v1/agent/health/service/id/nope").status_code == 404


def test_agent_self(consul_client: Any) -> None:
    c = consul_client
    me = c.agent.self()
    # Exactly the sections py-consul's test_agent_self expects.
    assert set(me) == {"Member", "xDS", "Stats", "Config", "Coord", "DebugConfig", "Meta"}
    config = me["Config"]
    assert config["Datacenter"] == "dc1"
    assert config["NodeName"]
    assert re.match(r"^\d+\.\d+\.\d+", config["Version"]), config["Version"]
    assert config["Server"] is True
    assert me["Member"]["Name"] == config["NodeName"]
    assert me["Stats"]["consul"]["leader_addr"] == c.status.leader()


def test_agent_members(consul_client: Any) -> None:
    c = consul_client
    members = c.agent.members()
    assert members
    for member in members:
        assert member["Status"] == 1
        assert member["Name"]
        assert member["Tags"] is not None
    assert c.agent.self()["Member"] in members
    for member in c.agent.members(wan=True):
        assert "dc1" in member["Name"]


def test_service_registered_via_agent_is_in_catalog(
    consul_client: Any, registry: RegistryProcess
) -> None:
    c = consul_client
    c.agent.service.register("web", service_id="web-1", address="127.0.0.2", port=80, tags=["x"])
    _, nodes = c.catalog.service("web")
    assert len(nodes) == 1
    entry = nodes[0]
    assert entry["Node"] == _node_name(c)
    assert entry["ServiceID"] == "web-1"
    assert entry["ServiceName"] == "web"
    assert entry["ServiceAddress"] == "127.0.0.2"
    assert entry["ServicePort"] == 80
    assert entry["ServiceTags"] == ["x"]
    assert entry["Datacenter"] == "dc1"


@pytest.mark.parametrize("name", ["app#127.0.0.1#3000", "with space", "ünï"])
def test_service_ids_with_odd_characters(consul_client: Any, name: str) -> None:
    # py-consul test_service_dereg_issue_156: IDs are path segments, URL-encoded by clients.
    c = consul_client
    c.agent.service.register(name)
    _, nodes = c.health.service(name)
    assert [n["Service"]["ID"] for n in nodes] == [name]
    assert c.agent.service.deregister(name) is True
    _, nodes = c.health.service(name)
    assert nodes == []
