"""controld trusts nothing it reads back from its KV prefix (a real daemon, in-process).

An attacker with write access to the registry (here: the registry's management token, or
none when ACLs are off) writes straight under controld's prefix: a deeply nested value, a
value that isn't JSON, an oversized one, a schema-invalid one, and forged records (an
allow-everyone AccessPolicy claiming to be the admin's, a history record). controld keeps
serving the API and compiling snapshots, restarts fine with them present, and none of the
forged records reaches the API, the history or a snapshot.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from daemon_support import TIMEOUT, running_daemon

from controld.daemon import ControlDaemon
from meshcore.registry.client import RegistryClient, RegistrySettings

pytestmark = pytest.mark.timeout(120)

DESCRIPTOR = {
    "proxy_id": "web-1",
    "service": "web",
    "inbound": "127.0.0.1:15006",
    "upstreams": [{"service": "api", "port": 15001}],
}
FORGED_POLICY = {
    "apiVersion": "meshd.io/v1",
    "kind": "AccessPolicy",
    "metadata": {"name": "forged-allow-all"},
    "spec": {"destination": "web", "rules": [{"sources": ["*"], "action": "allow"}]},
}


def defaults(service: str, lb: str) -> dict[str, Any]:
    return {"kind": "ServiceDefaults", "metadata": {"name": service}, "spec": {"lb_policy": lb}}


@asynccontextmanager
async def attacker(daemon: ControlDaemon) -> AsyncIterator[RegistryClient]:
    """A registry client with the registry's management token (None when ACLs are off)."""
    assert daemon.ports is not None and daemon.config.registry is not None
    token = daemon.config.registry.acl_management_token
    with RegistryClient(RegistrySettings(url=daemon.ports.registry_url, token=token)) as kv:
        yield kv


async def plant_garbage(kv: RegistryClient) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    values = {
        "meshd/resources/HTTPRoute/deep": deep,
        "meshd/resources/HTTPRoute/not-json": b"\xff{not json",
        "meshd/resources/HTTPRoute/huge": b'{"resource": "' + b"x" * 400_000 + b'"}',
        "meshd/resources/HTTPRoute/off-schema": json.dumps(
            {"resource": {"kind": "HTTPRoute", "metadata": {"name": "off-schema"}, "spec": 7}}
        ).encode(),
        # The history: a deeply nested record and one that isn't JSON.
        "meshd/history/000000000900": deep,
        "meshd/history/000000000901": b"\x00garbage",
    }
    for key, value in values.items():
        assert await kv.kv_put(key, value), key


async def plant_forgeries(kv: RegistryClient) -> None:
    """An allow-everyone policy "written by admin", and a history record to go with it."""
    stored = {"resource": FORGED_POLICY, "revision": 1, "author": "admin", "time": "T"}
    assert await kv.kv_put(
        "meshd/resources/AccessPolicy/forged-allow-all", json.dumps(stored).encode()
    )
    # Even dressed as a sealed record (with a made-up MAC).
    sealed_looking = {"v": 1, "body": stored, "mac": "A" * 43}
    assert await kv.kv_put(
        "meshd/resources/AccessPolicy/forged-sealed", json.dumps(sealed_looking).encode()
    )
    history = {
        "revision": 950,
        "author": "admin",
        "time": "T",
        "action": "apply",
        "changes": [{"kind": "AccessPolicy", "name": "forged-allow-all", "action": "created"}],
    }
    assert await kv.kv_put("meshd/history/000000000950", json.dumps(history).encode())


async def apply(http: httpx.AsyncClient, *docs: dict[str, Any]) -> int:
    resp = await http.put("/v1/resources", json={"resources": list(docs)})
    assert resp.status_code == 200, resp.text
    revision: int = resp.json()["revision"]
    return revision


async def snapshot(http: httpx.AsyncClient) -> dict[str, Any]:
    resp = await http.post("/v1/proxies/web-1", json=DESCRIPTOR)
    assert resp.status_code == 200, resp.text
    with trio.fail_after(TIMEOUT * 2):
        resp = await http.get("/v1/snapshots/web-1", params={"wait": TIMEOUT})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def wait_lb(http: httpx.AsyncClient, lb: str) -> dict[str, Any]:
    """The snapshot once the api cluster's lb policy is ``lb`` (the compiler ran)."""
    with trio.fail_after(TIMEOUT):
        while True:
            body = await snapshot(http)
            [cluster] = [c for c in body["snapshot"]["clusters"] if c["name"] == "api"]
            if cluster["lb_policy"] == lb:
                return body
            await trio.sleep(0.05)


async def assert_not_forged(http: httpx.AsyncClient, body: dict[str, Any]) -> None:
    # The forged policy would show as an allow-everyone rule on web's inbound listener.
    assert not (body["snapshot"].get("inbound_policy") or {}).get("rules"), body["snapshot"]
    listed = await http.get("/v1/resources")
    assert listed.status_code == 200
    assert "forged" not in listed.text
    assert [r["metadata"]["name"] for r in listed.json()["resources"]] == ["api"]
    for name in ("forged-allow-all", "forged-sealed"):
        got = await http.get(f"/v1/resources/AccessPolicy/{name}")
        assert got.status_code == 404, got.text
    history = await http.get("/v1/revisions")
    assert history.status_code == 200
    assert "forged" not in history.text
    assert all(r["revision"] < 900 for r in history.json()["revisions"])


def invalid_count(daemon: ControlDaemon, kind: str) -> float:
    value = daemon.metrics.get_sample_value("controld_kv_records_invalid_total", {"kind": kind})
    return value or 0.0


async def test_bad_and_forged_records_are_skipped_and_survive_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with running_daemon(data_dir) as (daemon, http):
        await apply(http, defaults("api", "random"))
        async with attacker(daemon) as kv:
            await plant_garbage(kv)
            await plant_forgeries(kv)
        # The daemon keeps serving and compiling: a new policy reaches the snapshot.
        await apply(http, defaults("api", "least_request"))
        body = await wait_lb(http, "least_request")
        await assert_not_forged(http, body)
        assert invalid_count(daemon, "resource") >= 6
        assert invalid_count(daemon, "history") >= 1
        status = (await http.get("/v1/status")).json()
        assert status["store"]["invalid_values"] >= 6
        metrics = (await http.get("/metrics")).text
        assert 'controld_kv_records_invalid_total{kind="resource"}' in metrics

    # A restart with every bad record still in place.
    async with running_daemon(data_dir) as (daemon, http):
        assert (await http.get("/ready")).status_code == 200
        body = await wait_lb(http, "least_request")
        await assert_not_forged(http, body)
        await apply(http, defaults("api", "round_robin"))
        await wait_lb(http, "round_robin")
        # An operator cleans up through the API like any resource.
        resp = await http.delete("/v1/resources/AccessPolicy/forged-allow-all")
        assert resp.status_code == 200, resp.text
        async with attacker(daemon) as kv:
            assert await kv.kv_get("meshd/resources/AccessPolicy/forged-allow-all") is None


async def test_a_record_sealed_by_another_controld_is_refused(tmp_path: Path) -> None:
    """Records of a controld with another key (another data dir) are forgeries here too."""
    async with running_daemon(tmp_path / "one") as (one, http_one):
        await apply(http_one, FORGED_POLICY | {"metadata": {"name": "other-allow-all"}})
        async with attacker(one) as kv:
            stolen = await kv.kv_get("meshd/resources/AccessPolicy/other-allow-all")
    assert stolen is not None
    async with running_daemon(tmp_path / "two") as (two, http):
        async with attacker(two) as kv:
            assert await kv.kv_put(stolen.key, stolen.value)
        await apply(http, defaults("api", "least_request"))
        body = await wait_lb(http, "least_request")
        assert not (body["snapshot"].get("inbound_policy") or {}).get("rules"), body["snapshot"]
        got = await http.get("/v1/resources/AccessPolicy/other-allow-all")
        assert got.status_code == 404
