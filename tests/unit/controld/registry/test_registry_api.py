"""The HTTP API of an in-process registry server, spoken to with plain HTTP (httpx)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from controld.registry import RegistryConfig, RegistryServer


@pytest.fixture
async def api(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    server = RegistryServer(RegistryConfig(data_dir=tmp_path, port=0, node_name="node1"))
    port = await nursery.start(server.run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client
    server.shutdown_nowait()


async def test_reads_carry_consul_headers_even_on_404(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/kv/missing")
    assert r.status_code == 404
    assert int(r.headers["X-Consul-Index"]) >= 1
    assert r.headers["X-Consul-KnownLeader"] == "true"
    assert r.headers["X-Consul-LastContact"] == "0"
    assert r.headers["X-Consul-Effective-Consistency"] == "leader"
    r = await api.get("/v1/catalog/services?stale")
    assert r.headers["X-Consul-Effective-Consistency"] == "stale"


async def test_empty_lists_are_lists(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/health/service/nothing")).json() == []
    assert (await api.get("/v1/catalog/service/nothing")).json() == []
    assert (await api.get("/v1/session/list")).json() == []
    assert (await api.get("/v1/agent/services")).json() == {}


async def test_unknown_datacenter(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/catalog/nodes?dc=dc2")
    assert r.status_code == 500
    assert r.text == "No path to datacenter"
    assert (await api.get("/v1/catalog/nodes?dc=dc1")).status_code == 200
    assert (await api.get("/v1/catalog/datacenters")).json() == ["dc1"]


async def test_errors_are_plain_text_with_consul_codes(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/agent/service/register")
    assert r.status_code == 405
    assert r.text == "method GET not allowed"
    r = await api.put("/v1/agent/service/register", content=b"{nope")
    assert r.status_code == 400
    assert r.text.startswith("Request decode failed")
    r = await api.put("/v1/agent/service/register", json={"Port": 1})
    assert (r.status_code, r.text) == (400, "Missing service name")
    r = await api.put("/v1/agent/check/pass/nope")
    assert r.status_code == 404
    r = await api.get("/v1/kv/x?index=abc")
    assert (r.status_code, r.text) == (400, "Invalid index")
    r = await api.get("/v1/kv/x?wait=forever&index=1")
    assert (r.status_code, r.text) == (400, "Invalid wait time")
    r = await api.put("/v1/kv/x?flags=-1", content=b"v")
    assert (r.status_code, r.text) == (400, "Invalid flags")
    r = await api.put("/v1/kv/", content=b"v")
    assert (r.status_code, r.text) == (400, "Missing key name")


async def test_snake_case_and_any_case_keys(api: httpx.AsyncClient) -> None:
    body = {
        "NAME": "web",
        "service_id": "ignored-unknown-key",
        "id": "web-1",
        "enable_tag_override": True,
        "meta": {"Build_ID": "7"},
        "tagged_addresses": {"lan_ipv4": {"address": "10.0.0.1", "port": 80}},
        "check": {"ttl": "30s", "status": "passing"},
    }
    assert (await api.put("/v1/agent/service/register", json=body)).status_code == 200
    svc = (await api.get("/v1/agent/services")).json()["web-1"]
    assert svc["EnableTagOverride"] is True
    assert svc["Meta"] == {"Build_ID": "7"}
    assert svc["TaggedAddresses"] == {"lan_ipv4": {"Address": "10.0.0.1", "Port": 80}}
    checks = (await api.get("/v1/agent/checks")).json()
    assert checks["service:web-1"]["Status"] == "passing"


async def test_new_checks_start_critical_and_aggregate(api: httpx.AsyncClient) -> None:
    await api.put(
        "/v1/agent/service/register",
        json={"Name": "web", "Checks": [{"TTL": "30s"}, {"TTL": "30s", "Status": "passing"}]},
    )
    entries = (await api.get("/v1/health/service/web")).json()
    statuses = {c["CheckID"]: c["Status"] for c in entries[0]["Checks"]}
    assert statuses == {
        "serfHealth": "passing",
        "service:web:1": "critical",
        "service:web:2": "passing",
    }
    assert (await api.get("/v1/health/service/web?passing")).json() == []
    r = await api.get("/v1/agent/health/service/id/web")
    assert (r.status_code, r.json()["AggregatedStatus"]) == (503, "critical")
    await api.put("/v1/agent/check/warn/service:web:1?note=slow")
    r = await api.get("/v1/agent/health/service/name/web?format=text")
    assert (r.status_code, r.text) == (429, "warning")
    await api.put("/v1/agent/service/maintenance/web?enable=true&reason=upgrade")
    r = await api.get("/v1/agent/health/service/id/web?format=text")
    assert (r.status_code, r.text) == (503, "maintenance")
    checks = (await api.get("/v1/agent/checks")).json()
    assert checks["_service_maintenance:web"]["Notes"] == "upgrade"
    assert checks["service:web:1"]["Output"] == "slow"


async def test_blocking_query_returns_at_once_when_behind(api: httpx.AsyncClient) -> None:
    await api.put("/v1/kv/a", content=b"1")
    index = int((await api.get("/v1/kv/a")).headers["X-Consul-Index"])
    with trio.fail_after(5):
        r = await api.get(f"/v1/kv/a?index={index - 1}&wait=60s")
    assert int(r.headers["X-Consul-Index"]) == index


async def test_blocking_query_wakes_on_its_key_only(api: httpx.AsyncClient) -> None:
    await api.put("/v1/kv/a", content=b"1")
    index = int((await api.get("/v1/kv/a")).headers["X-Consul-Index"])
    results: list[httpx.Response] = []

    async def watch() -> None:
        results.append(await api.get(f"/v1/kv/a?index={index}&wait=30s"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.sleep(0.2)
        await api.put("/v1/kv/b", content=b"other")
        await trio.sleep(0.3)
        assert results == []
        await api.put("/v1/kv/a", content=b"2")
    (r,) = results
    assert int(r.headers["X-Consul-Index"]) > index
    assert base64.b64decode(r.json()[0]["Value"]) == b"2"


async def test_blocking_query_times_out_with_the_same_index(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/catalog/services")
    index = int(r.headers["X-Consul-Index"])
    r = await api.get(f"/v1/catalog/services?index={index}&wait=100ms")
    assert r.status_code == 200
    assert int(r.headers["X-Consul-Index"]) == index


async def test_health_watch_is_not_woken_by_other_services(api: httpx.AsyncClient) -> None:
    await api.put("/v1/agent/service/register", json={"Name": "web"})
    index = int((await api.get("/v1/health/service/web")).headers["X-Consul-Index"])
    results: list[httpx.Response] = []

    async def watch() -> None:
        results.append(await api.get(f"/v1/health/service/web?index={index}&wait=30s"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.sleep(0.2)
        await api.put("/v1/agent/service/register", json={"Name": "api"})
        await trio.sleep(0.3)
        assert results == []
        await api.put("/v1/agent/service/register", json={"Name": "web", "Tags": ["v2"]})
    assert results[0].json()[0]["Service"]["Tags"] == ["v2"]


async def test_kv_endpoints(api: httpx.AsyncClient) -> None:
    for key in ("app/a", "app/b/c", "app/b/d", "other"):
        assert (await api.put(f"/v1/kv/{key}", content=key.encode())).json() is True
    assert (await api.get("/v1/kv/app/?keys&separator=/")).json() == ["app/a", "app/b/"]
    assert (await api.get("/v1/kv/app?keys")).json() == ["app/a", "app/b/c", "app/b/d"]
    r = await api.get("/v1/kv/app/a?raw")
    assert r.content == b"app/a"
    assert [e["Key"] for e in (await api.get("/v1/kv/app/?recurse")).json()] == [
        "app/a",
        "app/b/c",
        "app/b/d",
    ]
    assert (await api.delete("/v1/kv/app/b?recurse")).json() is True
    assert (await api.get("/v1/kv/app/b/c")).status_code == 404
    assert (await api.get("/v1/kv/zzz?recurse")).status_code == 404
    r = await api.put("/v1/kv/big", content=b"x" * (512 * 1024 + 1))
    assert r.status_code == 413


async def test_sessions_lock_and_release(api: httpx.AsyncClient) -> None:
    s1 = (await api.put("/v1/session/create", json={"Name": "a", "LockDelay": "0s"})).json()["ID"]
    s2 = (await api.put("/v1/session/create", json={"name": "b", "ttl": "15s"})).json()["ID"]
    assert (await api.put(f"/v1/kv/lock?acquire={s1}", content=b"1")).json() is True
    assert (await api.put(f"/v1/kv/lock?acquire={s2}", content=b"2")).json() is False
    entry = (await api.get("/v1/kv/lock")).json()[0]
    assert (entry["Session"], entry["LockIndex"]) == (s1, 1)
    info = (await api.get(f"/v1/session/info/{s2}")).json()[0]
    assert (info["TTL"], info["LockDelay"], info["NodeChecks"]) == (
        "15s",
        15_000_000_000,
        ["serfHealth"],
    )
    renewed = (await api.put(f"/v1/session/renew/{s2}")).json()
    assert renewed[0]["ID"] == s2
    assert (await api.put("/v1/session/renew/" + "1" * 36)).status_code == 404
    assert (await api.put(f"/v1/session/destroy/{s1}")).json() is True
    entry = (await api.get("/v1/kv/lock")).json()[0]
    assert "Session" not in entry
    assert (await api.put(f"/v1/kv/lock?acquire={s2}", content=b"2")).json() is True
    r = await api.put("/v1/session/create", json={"TTL": "5s"})
    assert r.status_code == 500
    assert "Invalid Session TTL" in r.text
    r = await api.put("/v1/session/create", json={"Node": "ghost"})
    assert (r.status_code, r.text) == (500, "Missing node registration")


async def test_catalog_register_and_filter(api: httpx.AsyncClient) -> None:
    body = {
        "Node": "n1",
        "Address": "10.0.0.1",
        "NodeMeta": {"rack": "r1"},
        "Service": {"Service": "web", "Tags": ["prod"], "Port": 80},
        "Check": {"CheckID": "web-alive", "Name": "alive", "ServiceID": "web", "Status": "passing"},
    }
    assert (await api.put("/v1/catalog/register", json=body)).json() is True
    nodes = (await api.get("/v1/catalog/service/web?node-meta=rack:r1")).json()
    assert [(n["Node"], n["ServicePort"]) for n in nodes] == [("n1", 80)]
    r = await api.get("/v1/catalog/services", params={"filter": '"prod" in ServiceTags'})
    assert r.json() == {"web": ["prod"]}
    assert (await api.get("/v1/catalog/nodes", params={"filter": "Node == ("})).status_code == 400
    entries = (await api.get("/v1/health/service/web?passing=1")).json()
    assert [c["CheckID"] for c in entries[0]["Checks"]] == ["web-alive"]
    assert (await api.get("/v1/catalog/node/ghost")).text == "null"
    body = {"Node": "n1", "ServiceID": "web"}
    assert (await api.put("/v1/catalog/deregister", json=body)).json() is True
    assert (await api.get("/v1/health/checks/web")).json() == []


async def test_sidecar_registration_and_deregistration(api: httpx.AsyncClient) -> None:
    body = {"Name": "web", "Port": 8080, "Connect": {"SidecarService": {}}}
    assert (await api.put("/v1/agent/service/register", json=body)).status_code == 200
    services = (await api.get("/v1/agent/services")).json()
    side = services["web-sidecar-proxy"]
    assert side["Kind"] == "connect-proxy"
    assert side["Port"] == 21000
    assert side["Proxy"]["DestinationServiceName"] == "web"
    assert side["Proxy"]["LocalServicePort"] == 8080
    proxies = (await api.get("/v1/health/connect/web")).json()
    assert [p["Service"]["ID"] for p in proxies] == ["web-sidecar-proxy"]
    assert (await api.put("/v1/agent/service/deregister/web")).status_code == 200
    assert (await api.get("/v1/agent/services")).json() == {}


async def test_connect_proxy_requires_a_destination(api: httpx.AsyncClient) -> None:
    body = {"Name": "p", "Kind": "connect-proxy", "Port": 1, "Proxy": {}}
    r = await api.put("/v1/agent/service/register", json=body)
    assert r.status_code == 400
    body["Proxy"] = {"destination_service_name": "web", "local_service_port": 80}
    assert (await api.put("/v1/agent/service/register", json=body)).status_code == 200
    svc = (await api.get("/v1/agent/service/p")).json()
    assert svc["Proxy"]["DestinationServiceName"] == "web"
    assert svc["Proxy"]["LocalServicePort"] == 80


async def test_replace_existing_checks(api: httpx.AsyncClient) -> None:
    body = {"Name": "web", "Checks": [{"CheckID": "a", "TTL": "9s"}, {"CheckID": "b", "TTL": "9s"}]}
    await api.put("/v1/agent/service/register", json=body)
    body = {"Name": "web", "Checks": [{"CheckID": "b", "TTL": "9s"}]}
    await api.put("/v1/agent/service/register", json=body)
    assert set((await api.get("/v1/agent/checks")).json()) == {"a", "b"}
    await api.put("/v1/agent/service/register?replace-existing-checks=true", json=body)
    assert set((await api.get("/v1/agent/checks")).json()) == {"b"}


async def test_ttl_check_expires_to_critical(api: httpx.AsyncClient) -> None:
    await api.put("/v1/agent/check/register", json={"Name": "beat", "TTL": "200ms"})
    await api.put("/v1/agent/check/pass/beat?note=alive")
    assert (await api.get("/v1/agent/checks")).json()["beat"]["Status"] == "passing"
    with trio.fail_after(10):
        while True:
            check = (await api.get("/v1/agent/checks")).json()["beat"]
            if check["Status"] == "critical":
                break
            await trio.sleep(0.05)
    assert check["Output"].startswith("TTL expired")


async def test_node_maintenance(api: httpx.AsyncClient) -> None:
    await api.put("/v1/agent/service/register", json={"Name": "web"})
    assert (await api.put("/v1/agent/maintenance?enable=true")).status_code == 200
    entries = (await api.get("/v1/health/service/web")).json()
    maint = [c for c in entries[0]["Checks"] if c["CheckID"] == "_node_maintenance"]
    assert maint[0]["Status"] == "critical"
    assert (await api.put("/v1/agent/maintenance?enable=false")).status_code == 200
    assert "_node_maintenance" not in (await api.get("/v1/agent/checks")).json()
    assert (await api.put("/v1/agent/maintenance")).status_code == 400


async def test_txn_kv(api: httpx.AsyncClient) -> None:
    value = base64.b64encode(b"1").decode()
    r = await api.put("/v1/txn", json=[{"KV": {"Verb": "set", "Key": "t", "Value": value}}])
    assert r.json()["Errors"] is None
    r = await api.put("/v1/txn", json=[{"KV": {"Verb": "get", "Key": "t"}}])
    assert r.json()["Results"][0]["KV"]["Value"] == value
    r = await api.put("/v1/txn", json=[{"KV": {"Verb": "cas", "Key": "t", "Index": 1}}])
    assert r.status_code == 409


async def test_operator_views(api: httpx.AsyncClient) -> None:
    raft = (await api.get("/v1/operator/raft/configuration")).json()
    assert [(s["Node"], s["Leader"], s["Voter"]) for s in raft["Servers"]] == [
        ("node1", True, True)
    ]
    conf = (await api.get("/v1/operator/autopilot/configuration")).json()
    stale = conf["ModifyIndex"] + 1000
    body = {"CleanupDeadServers": False}
    r = await api.put(f"/v1/operator/autopilot/configuration?cas={stale}", json=body)
    assert r.json() is False
    assert (await api.put("/v1/operator/autopilot/configuration", json=body)).json() is True
    assert (await api.get("/v1/operator/autopilot/configuration")).json()[
        "CleanupDeadServers"
    ] is False
    usage = (await api.get("/v1/operator/usage")).json()
    assert usage["Usage"]["dc1"]["Nodes"] == 1
    assert (await api.delete("/v1/operator/raft/peer?id=x")).status_code == 500
