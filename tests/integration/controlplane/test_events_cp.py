"""Control-plane events against a real controld process (``GET /v1/events``, ``meshctl events``).

One controld (embedded registry). An endpoint registered in the registry and deregistered, a
sidecar's exchanges played over the API (register, poll, ACK by polling again, NACK, drain) and
a resource applied show up as numbered events; a parked
long-poll answers when a new event comes; bad parameters get 422 in the API's error shape and
no token 401; ``meshctl events -o json`` prints the same events.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cp_mesh_support import TIMEOUT, Api, Controld, wait_for

from meshcore.api.events import EVENTS_PATH, ControlEvents
from tui.cli import main as meshctl_main

pytestmark = pytest.mark.timeout(90)

RESOURCE = {
    "apiVersion": "meshd.io/v1",
    "kind": "ServiceDefaults",
    "metadata": {"name": "web"},
    "spec": {"protocol": "http"},
}


@pytest.fixture
def controld(tmp_path: Path) -> Iterator[Controld]:
    proc = Controld(tmp_path / "controld")
    proc.workdir.mkdir()
    try:
        yield proc
    finally:
        proc.stop()


async def events(api: Api, after: int = 0, wait_s: float = 0) -> ControlEvents:
    doc = await api.ok("GET", f"{EVENTS_PATH}?after={after}&wait_s={wait_s}")
    return ControlEvents.model_validate(doc)


async def kinds_of(api: Api) -> list[tuple[str, str]]:
    return [(e.kind, e.subject) for e in (await events(api)).events]


async def test_events_of_a_sidecar_and_a_change(
    controld: Controld, capsys: pytest.CaptureFixture[str]
) -> None:
    await controld.start()
    api = Api(controld)
    try:

        async def seen(*wanted: tuple[str, str]) -> bool:
            return set(wanted) <= set(await kinds_of(api))

        # The guard and the parameters.
        resp = await api.client.get(f"{controld.url}{EVENTS_PATH}")
        assert resp.status_code == 401 and "error" in resp.json()
        for bad in ("after=-1", "wait_s=31", "limit=0", "after=x"):
            resp = await api.request("GET", f"{EVENTS_PATH}?{bad}")
            assert resp.status_code == 422, bad
            assert resp.json()["error"] == "invalid request"
            assert resp.json()["problems"][0]["path"].startswith("query.")

        # An endpoint joining and leaving the registry (after the watcher's first view).
        async def first_view() -> bool:
            status = await api.ok("GET", "/v1/status")
            return int(status["discovery"]["version"]) >= 1

        await wait_for(first_view, what="the discovery view")
        registry = httpx.AsyncClient(
            base_url=controld.registry_url,
            headers={"X-Consul-Token": controld.registry_token("db")},
            timeout=10.0,
        )
        async with registry:
            db = {"Name": "db", "ID": "db-1", "Address": "127.0.0.1", "Port": 5432}
            assert (await registry.put("/v1/agent/service/register", json=db)).status_code == 200
            await wait_for(
                lambda: seen(("endpoint.healthy", "db/127.0.0.1:5432")), what="a healthy endpoint"
            )
            resp = await registry.put("/v1/agent/service/deregister/db-1")
            assert resp.status_code == 200
            await wait_for(
                lambda: seen(("endpoint.unhealthy", "db/127.0.0.1:5432")), what="it leaving"
            )

        # A sidecar's life, played over the API with the admin token.
        await api.ok("POST", "/v1/proxies/web-1", {"proxy_id": "web-1", "service": "web"})
        snap = await api.ok("GET", "/v1/snapshots/web-1?wait=10")
        assert snap is not None, "no snapshot compiled"
        ack = f"/v1/snapshots/web-1?version={snap['version']}&hash={snap['hash']}&wait=0"
        resp = await api.request("GET", ack)
        assert resp.status_code == 304

        await wait_for(
            lambda: seen(
                ("sidecar.registered", "web-1"),
                ("snapshot.pushed", "web-1"),
                ("snapshot.acked", "web-1"),
                ("sidecar.connected", "web-1"),  # the presence watch, within a second
            ),
            what="the sidecar's events",
        )
        page = await events(api)
        assert [e.seq for e in page.events] == list(range(1, len(page.events) + 1))
        assert page.events[0].time.endswith("Z")

        # A parked long-poll answers when a change comes.
        after = page.next
        got: list[ControlEvents] = []

        async def park() -> None:
            got.append(await events(api, after, wait_s=20))

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(park)
                await trio.sleep(0.3)
                assert got == []
                resp = await api.apply(RESOURCE)
                assert resp.status_code == 200, resp.text
        [woken] = got
        assert ("resource.created", "ServiceDefaults/web", "by admin") in [
            (e.kind, e.subject, e.detail) for e in woken.events
        ]

        # A NACK (error) and a drain request.
        body = {"version": snap["version"], "hash": snap["hash"], "error": "routes[0]: bad"}
        resp = await api.request("POST", "/v1/snapshots/web-1/nack", body)
        assert resp.status_code == 204
        await api.ok("POST", "/v1/proxies/web-1/drain")
        tail = (await events(api, woken.next)).events
        nacks = [e for e in tail if e.kind == "snapshot.nacked"]
        assert nacks and nacks[0].severity == "error" and "routes[0]: bad" in nacks[0].detail
        assert "sidecar.drain_requested" in [e.kind for e in tail]

        # meshctl events prints them (in a thread: the CLI is synchronous).
        argv = ["events", "--since-seq", str(after), "-o", "json", "--server", controld.url]
        argv += ["--token-file", str(controld.token_file)]
        capsys.readouterr()
        with trio.fail_after(TIMEOUT):
            code = await trio.to_thread.run_sync(meshctl_main, argv)
        out = capsys.readouterr().out
        assert code == 0, out
        printed: list[dict[str, Any]] = json.loads(out)
        assert printed[0]["seq"] == after + 1
        assert {"resource.created", "snapshot.nacked"} <= {e["kind"] for e in printed}
    finally:
        await api.aclose()
