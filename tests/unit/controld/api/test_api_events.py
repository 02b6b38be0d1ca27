"""``GET /v1/events`` in-process: long-poll, parameters, token, events of resource changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
import trio.testing
from api_support import ADMIN_TOKEN, FakePlane, FakeStore
from prometheus_client import CollectorRegistry

from controld.api import build_api
from controld.auth import TokenAuth
from controld.events import EventJournal
from controld.push import PushHub
from meshcore.api.events import EVENTS_PATH, ControlEvents

pytestmark = pytest.mark.timeout(30)

ROUTE = {
    "apiVersion": "meshd.io/v1",
    "kind": "ServiceDefaults",
    "metadata": {"name": "web"},
    "spec": {"protocol": "http"},
}


@asynccontextmanager
async def events_api() -> AsyncIterator[tuple[httpx.AsyncClient, EventJournal]]:
    journal = EventJournal(64)
    metrics = CollectorRegistry(auto_describe=True)
    plane = FakePlane(PushHub(events=journal), FakeStore())
    app = build_api(
        plane, auth=TokenAuth(ADMIN_TOKEN), metrics=metrics, is_ready=lambda: True, events=journal
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://controld",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as client:
        yield client, journal


async def read(client: httpx.AsyncClient, **params: float) -> ControlEvents:
    resp = await client.get(EVENTS_PATH, params=params)
    assert resp.status_code == 200, resp.text
    return ControlEvents.model_validate(resp.json())


async def test_registration_and_resource_changes_are_events() -> None:
    async with events_api() as (client, _):
        resp = await client.post("/v1/proxies/web-1", json={"proxy_id": "web-1", "service": "web"})
        assert resp.status_code == 200
        assert (await client.put("/v1/resources", json={"resources": [ROUTE]})).status_code == 200
        resp = await client.delete("/v1/resources/ServiceDefaults/web")
        assert resp.status_code == 200, resp.text
        page = await read(client, after=0)
        got = [(e.seq, e.kind, e.subject, e.detail) for e in page.events]
        assert got == [
            (1, "sidecar.registered", "web-1", "web"),
            (2, "resource.created", "ServiceDefaults/web", "by admin"),
            (3, "resource.deleted", "ServiceDefaults/web", "by admin"),
        ]
        assert page.next == 3
        assert [e.seq for e in (await read(client, after=1, limit=1)).events] == [2]


async def test_long_poll_answers_when_an_event_comes() -> None:
    async with events_api() as (client, journal):
        got: list[ControlEvents] = []

        async def poller() -> None:
            got.append(await read(client, after=0, wait_s=20))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poller)
                await trio.testing.wait_all_tasks_blocked()
                assert got == []
                journal.record("ca.rotation", "stage", "phase staged, signer r1")
        assert [e.kind for e in got[0].events] == ["ca.rotation"]


async def test_bad_parameters_and_missing_token() -> None:
    async with events_api() as (client, _):
        for params in ({"after": -1}, {"wait_s": 31}, {"limit": 0}, {"after": "x"}):
            resp = await client.get(EVENTS_PATH, params=params)
            assert resp.status_code == 422, params
            body = resp.json()
            assert body["error"] == "invalid request"
            assert body["problems"][0]["path"].startswith("query.")
        resp = await client.get(EVENTS_PATH, headers={"Authorization": ""})
        assert resp.status_code == 401
        assert "error" in resp.json()


async def test_route_is_documented() -> None:
    async with events_api() as (client, _):
        doc = (await client.get("/openapi.json")).json()
        op = doc["paths"][EVENTS_PATH]["get"]
        assert {p["name"] for p in op["parameters"]} == {"after", "wait_s", "limit"}
        assert "ControlEvents" in doc["components"]["schemas"]
