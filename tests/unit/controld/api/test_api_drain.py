"""``POST /v1/proxies/{id}/drain``: relayed once on the sidecar's long-poll, shown in the list."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from api_support import serving_api
from test_api_proxies import DESCRIPTOR, publish, register

pytestmark = pytest.mark.timeout(30)


async def test_drain_of_unknown_proxy_is_404() -> None:
    async with serving_api() as api:
        resp = await api.client.post("/v1/proxies/nope/drain")
        assert resp.status_code == 404


async def test_drain_needs_an_admin_token() -> None:
    async with serving_api() as api:
        await register(api)
        async with api.as_token(await api.sidecar_token("web")) as client:
            resp = await client.post("/v1/proxies/web-1/drain")
        assert resp.status_code == 403
        assert api.plane.hub.drain_requested("web-1") is None


async def test_drain_wakes_the_parked_poll_and_is_said_once() -> None:
    async with serving_api() as api:
        await register(api)
        publish(api)
        first = await api.client.get("/v1/snapshots/web-1", params={"wait": 0})
        body = first.json()
        query = {"version": body["version"], "hash": "h1", "wait": 60}
        answers: list[tuple[int, str | None]] = []

        async def poll() -> None:
            resp = await api.client.get("/v1/snapshots/web-1", params=query)
            answers.append((resp.status_code, resp.headers.get("x-meshd-drain")))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await trio.testing.wait_all_tasks_blocked()
                assert answers == []
                resp = await api.client.post("/v1/proxies/web-1/drain")
                assert resp.status_code == 202
                assert resp.json()["proxy_id"] == "web-1"
        assert answers == [(304, "1")]
        # Said once: the next poll parks as usual (no busy loop of drain answers).
        with trio.move_on_after(0.1) as scope:
            await api.client.get("/v1/snapshots/web-1", params=query)
        assert scope.cancelled_caught
        [proxy] = (await api.client.get("/v1/proxies")).json()["proxies"]
        assert proxy["drain_requested"] == resp.json()["drain_requested"]


async def test_a_drain_asked_before_the_poll_answers_it_at_once() -> None:
    async with serving_api() as api:
        await register(api)
        assert (await api.client.post("/v1/proxies/web-1/drain")).status_code == 202
        with trio.fail_after(10):
            resp = await api.client.get("/v1/snapshots/web-1", params={"wait": 60})
        assert resp.headers.get("x-meshd-drain") == "1"


async def test_registering_again_after_the_drain_clears_it() -> None:
    async with serving_api() as api:
        await register(api)
        await api.client.post("/v1/proxies/web-1/drain")
        await api.client.get("/v1/snapshots/web-1", params={"wait": 0})  # delivered
        await register(api, DESCRIPTOR)  # a new process with the same id
        [proxy] = (await api.client.get("/v1/proxies")).json()["proxies"]
        assert proxy["drain_requested"] is None
