"""Sidecar endpoints: registration, the long-poll (200/304/404), NACK, scopes, disconnects."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing
from api_support import Api, serving_api

from meshcore.api.sidecar import SnapshotAnswer
from meshcore.model.snapshot import Snapshot

DESCRIPTOR: dict[str, Any] = {
    "proxy_id": "web-1",
    "service": "web",
    "inbound": "127.0.0.1:15006",
    "upstreams": [{"service": "api", "port": 15001}],
}


async def register(api: Api, descriptor: dict[str, Any] = DESCRIPTOR) -> None:
    resp = await api.client.post(f"/v1/proxies/{descriptor['proxy_id']}", json=descriptor)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"proxy_id": descriptor["proxy_id"]}


def publish(api: Api, proxy_id: str = "web-1", hash_: str = "h1") -> None:
    api.plane.hub.publish({proxy_id: (Snapshot(version=0), hash_)}, revision=1, changed_at=0.0)


async def test_register_as_own_sidecar() -> None:
    async with serving_api() as api:
        async with api.as_token(await api.sidecar_token("web")) as client:
            resp = await client.post("/v1/proxies/web-1", json=DESCRIPTOR)
        assert resp.status_code == 200
        descriptor = api.plane.hub.descriptor("web-1")
        assert descriptor is not None
        assert descriptor.upstreams[0].service == "api"


async def test_register_for_another_service_is_403() -> None:
    async with serving_api() as api:
        async with api.as_token(await api.sidecar_token("api")) as client:
            resp = await client.post("/v1/proxies/web-1", json=DESCRIPTOR)
        assert resp.status_code == 403
        assert api.plane.hub.descriptor("web-1") is None


async def test_sidecar_cannot_take_over_another_services_proxy_id() -> None:
    async with serving_api() as api:
        await register(api)
        async with api.as_token(await api.sidecar_token("api")) as client:
            resp = await client.post("/v1/proxies/web-1", json=dict(DESCRIPTOR, service="api"))
        assert resp.status_code == 403
        descriptor = api.plane.hub.descriptor("web-1")
        assert descriptor is not None
        assert descriptor.service == "web"


async def test_register_checks_the_descriptor() -> None:
    async with serving_api() as api:
        resp = await api.client.post("/v1/proxies/other", json=DESCRIPTOR)
        assert resp.status_code == 422
        assert resp.json()["problems"][0]["path"] == "body.proxy_id"
        resp = await api.client.post("/v1/proxies/web-1", json=dict(DESCRIPTOR, upstreams="x"))
        assert resp.status_code == 422
        assert resp.json()["problems"][0]["path"].startswith("body.upstreams")


async def test_poll_unknown_proxy_is_404() -> None:
    async with serving_api() as api:
        resp = await api.client.get("/v1/snapshots/web-1", params={"wait": 0})
        assert resp.status_code == 404
        assert resp.json()["error"] == "unknown proxy"
        async with api.as_token(await api.sidecar_token("web")) as client:
            resp = await client.get("/v1/snapshots/web-1", params={"wait": 0})
        assert resp.status_code == 404


async def test_poll_returns_the_hubs_body_then_304() -> None:
    async with serving_api() as api:
        await register(api)
        publish(api)
        async with api.as_token(await api.sidecar_token("web")) as client:
            resp = await client.get("/v1/snapshots/web-1", params={"wait": 0})
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "application/json"
            body = json.loads(resp.content)
            assert body["hash"] == "h1"
            assert body["snapshot"]["version"] == body["version"]
            # The hub's hand-built body is the answer model.
            answer = SnapshotAnswer.model_validate_json(resp.content)
            assert answer.snapshot == Snapshot(version=body["version"])
            resp = await client.get(
                "/v1/snapshots/web-1",
                params={"version": body["version"], "hash": "h1", "wait": 0},
            )
            assert resp.status_code == 304
            assert resp.content == b""
        [proxy] = (await api.client.get("/v1/proxies")).json()["proxies"]
        assert proxy["proxy_id"] == "web-1"
        assert proxy["acked_hash"] == "h1"


async def test_parked_poll_wakes_on_publish() -> None:
    async with serving_api() as api:
        await register(api)
        answers: list[int] = []

        async def poll() -> None:
            resp = await api.client.get("/v1/snapshots/web-1", params={"wait": 60})
            answers.append(resp.status_code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.testing.wait_all_tasks_blocked()
            assert answers == []
            publish(api)
        assert answers == [200]


async def test_poll_times_out_with_304(autojump_clock: trio.testing.MockClock) -> None:
    async with serving_api() as api:
        await register(api)
        resp = await api.client.get("/v1/snapshots/web-1", params={"wait": 1000})  # clamped to 300
        assert resp.status_code == 304
        assert trio.current_time() <= 301


async def test_poll_query_errors() -> None:
    async with serving_api() as api:
        await register(api)
        for params in ({"version": "x"}, {"wait": "soon"}, {"wait": "nan"}):
            resp = await api.client.get("/v1/snapshots/web-1", params=params)
            assert resp.status_code == 422
            assert resp.json()["problems"][0]["path"].startswith("query.")


async def test_sidecar_may_not_poll_another_service() -> None:
    async with serving_api() as api:
        await register(api)
        async with api.as_token(await api.sidecar_token("api")) as client:
            resp = await client.get("/v1/snapshots/web-1", params={"wait": 0})
            assert resp.status_code == 403
            resp = await client.post(
                "/v1/snapshots/web-1/nack", json={"version": 1, "hash": "h", "error": "no"}
            )
            assert resp.status_code == 403


async def test_nack() -> None:
    async with serving_api() as api:
        await register(api)
        publish(api)
        body = (await api.client.get("/v1/snapshots/web-1", params={"wait": 0})).json()
        async with api.as_token(await api.sidecar_token("web")) as client:
            resp = await client.post(
                "/v1/snapshots/web-1/nack",
                json={"version": body["version"], "hash": "h1", "error": "bind failed" * 1000},
            )
        assert resp.status_code == 204
        assert resp.content == b""
        [proxy] = (await api.client.get("/v1/proxies")).json()["proxies"]
        assert proxy["nack"]["version"] == body["version"]
        assert proxy["nack"]["error"].startswith("bind failed")
        assert len(proxy["nack"]["error"]) <= 4096
        # A NACKed hash isn't sent again.
        resp = await api.client.get("/v1/snapshots/web-1", params={"wait": 0})
        assert resp.status_code == 304


async def test_nack_of_unknown_proxy_is_404() -> None:
    async with serving_api() as api:
        resp = await api.client.post(
            "/v1/snapshots/ghost/nack", json={"version": 1, "hash": "h", "error": "x"}
        )
        assert resp.status_code == 404
        assert resp.json()["error"] == "unknown proxy"
