"""Request bodies: keys match case-insensitively and in snake_case, as Consul decodes them.

Consul decodes request JSON with Go's case-insensitive field matching and translates the
snake_case spellings used in config files (``enable_tag_override``, ``tagged_addresses``,
``deregister_critical_service_after``, ``sidecar_service``, ``destination_service_name``,
``local_service_port``, ``local_bind_port``, ``service_id``, ...) on the agent and catalog
endpoints. Real clients depend on it: py-consul and python-consul send lower-case keys
(``name``, ``id``, ``serviceid``, ``ttl``, ``http``, ``interval``, ``lockdelay``).
Sent raw with httpx, so the bytes on the wire are exactly these.
"""

from __future__ import annotations

from typing import Any

import httpx


def _put(http: httpx.Client, path: str, body: Any) -> None:
    resp = http.put(path, json=body)
    assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text}"


def test_service_register_lower_case(http: httpx.Client) -> None:
    body = {
        "name": "web",
        "id": "web-1",
        "address": "127.0.0.1",
        "port": 80,
        "tags": ["a"],
        "meta": {"k": "v"},
        "check": {"ttl": "10s", "notes": "from lower case", "status": "warning"},
    }
    _put(http, "/v1/agent/service/register", body)
    svc = http.get("/v1/agent/services").json()["web-1"]
    assert (svc["Service"], svc["Address"], svc["Port"], svc["Tags"], svc["Meta"]) == (
        "web",
        "127.0.0.1",
        80,
        ["a"],
        {"k": "v"},
    )
    check = http.get("/v1/agent/checks").json()["service:web-1"]
    assert (check["Notes"], check["Status"]) == ("from lower case", "warning")


def test_service_register_mixed_case(http: httpx.Client) -> None:
    _put(
        http, "/v1/agent/service/register", {"NAME": "odd", "Id": "odd-1", "pOrT": 7, "TAGS": ["x"]}
    )
    svc = http.get("/v1/agent/services").json()["odd-1"]
    assert (svc["Service"], svc["Port"], svc["Tags"]) == ("odd", 7, ["x"])


def test_service_register_snake_case(http: httpx.Client) -> None:
    body = {
        "name": "api",
        "port": 9000,
        "enable_tag_override": True,
        "tagged_addresses": {"lan": {"address": "10.0.0.1", "port": 9000}},
        "checks": [{"name": "alive", "ttl": "30s", "deregister_critical_service_after": "10m"}],
        "connect": {"sidecar_service": {"port": 21500}},
    }
    _put(http, "/v1/agent/service/register", body)
    services = http.get("/v1/agent/services").json()
    svc = services["api"]
    assert svc["EnableTagOverride"] is True
    assert svc["TaggedAddresses"] == {"lan": {"Address": "10.0.0.1", "Port": 9000}}
    assert services["api-sidecar-proxy"]["Port"] == 21500
    checks = http.get("/v1/agent/checks").json()
    assert checks["service:api"]["Name"] == "alive"


def test_proxy_fields_snake_case(http: httpx.Client) -> None:
    body = {
        "name": "web-proxy",
        "kind": "connect-proxy",
        "port": 21000,
        "proxy": {
            "destination_service_name": "web",
            "destination_service_id": "web-1",
            "local_service_address": "127.0.0.1",
            "local_service_port": 8080,
            "upstreams": [{"destination_name": "db", "local_bind_port": 9191}],
        },
    }
    _put(http, "/v1/agent/service/register", body)
    proxy = http.get("/v1/agent/services").json()["web-proxy"]["Proxy"]
    assert proxy["DestinationServiceName"] == "web"
    assert proxy["DestinationServiceID"] == "web-1"
    assert proxy["LocalServiceAddress"] == "127.0.0.1"
    assert proxy["LocalServicePort"] == 8080
    assert proxy["Upstreams"][0]["DestinationName"] == "db"
    assert proxy["Upstreams"][0]["LocalBindPort"] == 9191


def test_check_register_snake_and_lower_case(http: httpx.Client) -> None:
    _put(http, "/v1/agent/service/register", {"name": "svc"})
    _put(
        http,
        "/v1/agent/check/register",
        {"name": "c1", "service_id": "svc", "ttl": "30s", "status": "passing"},
    )
    _put(http, "/v1/agent/check/register", {"name": "c2", "serviceid": "svc", "ttl": "30s"})
    _put(http, "/v1/agent/check/register", {"Name": "c3", "ServiceId": "svc", "TTL": "30s"})
    checks = http.get("/v1/agent/checks").json()
    assert {k: v["ServiceID"] for k, v in checks.items()} == {"c1": "svc", "c2": "svc", "c3": "svc"}
    assert checks["c1"]["Status"] == "passing"
    _put(http, "/v1/agent/check/update/c2", {"status": "warning", "output": "lower"})
    check = http.get("/v1/agent/checks").json()["c2"]
    assert (check["Status"], check["Output"]) == ("warning", "lower")


def test_catalog_register_case_and_snake(http: httpx.Client) -> None:
    body = {
        "node": "n1",
        "address": "10.0.0.1",
        "node_meta": {"env": "prod"},
        "tagged_addresses": {"wan": "192.0.2.1"},
        "service": {"service": "db", "id": "db-1", "port": 5432, "tags": ["primary"]},
        "check": {"name": "db-up", "service_id": "db-1", "status": "passing"},
    }
    _put(http, "/v1/catalog/register", body)
    node = http.get("/v1/catalog/node/n1").json()
    assert node["Node"]["Meta"] == {"env": "prod"}
    assert node["Node"]["TaggedAddresses"]["wan"] == "192.0.2.1"
    assert node["Services"]["db-1"]["Port"] == 5432
    passing = http.get("/v1/health/service/db", params={"passing": ""}).json()
    assert [e["Service"]["ID"] for e in passing] == ["db-1"]
    _put(http, "/v1/catalog/deregister", {"node": "n1", "service_id": "db-1"})
    assert http.get("/v1/catalog/service/db").json() == []


def test_session_create_lower_case(http: httpx.Client) -> None:
    resp = http.put(
        "/v1/session/create",
        json={"name": "s", "lockdelay": "3s", "behavior": "delete", "ttl": "30s"},
    )
    assert resp.status_code == 200, resp.text
    [session] = http.get(f"/v1/session/info/{resp.json()['ID']}").json()
    assert (session["Name"], session["LockDelay"], session["Behavior"], session["TTL"]) == (
        "s",
        3_000_000_000,
        "delete",
        "30s",
    )
