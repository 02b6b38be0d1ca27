"""The daemon end to end in-process: register, long-poll, apply, NACK, restart.

A real :class:`~controld.daemon.ControlDaemon` with the embedded registry (port 0) serves the
HTTP API; the test plays a sidecar long-polling with httpx (async, on the same Trio loop).
Registration, applies, NACKs, the proxy list and the status go through the API too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
from daemon_support import TIMEOUT, running_daemon

DESCRIPTOR = {
    "proxy_id": "web-1",
    "service": "web",
    "inbound": "127.0.0.1:15006",
    "upstreams": [{"service": "api", "port": 15001}],
}
API_DEFAULTS = {
    "kind": "ServiceDefaults",
    "metadata": {"name": "api"},
    "spec": {"lb_policy": "random"},
}


async def poll(
    http: httpx.AsyncClient, *, version: int | None = None, hash: str | None = None, wait: float
) -> httpx.Response:
    params: dict[str, Any] = {"wait": wait}
    if version is not None and hash is not None:
        params.update(version=version, hash=hash)
    with trio.fail_after(TIMEOUT + wait):
        return await http.get("/v1/snapshots/web-1", params=params)


async def register(http: httpx.AsyncClient) -> None:
    resp = await http.post("/v1/proxies/web-1", json=DESCRIPTOR)
    assert resp.status_code == 200, resp.text


async def proxy_row(http: httpx.AsyncClient) -> dict[str, Any]:
    resp = await http.get("/v1/proxies")
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()["proxies"]
    assert len(rows) == 1
    return rows[0]


def api_cluster(body: dict[str, Any]) -> dict[str, Any]:
    clusters: list[dict[str, Any]] = body["snapshot"]["clusters"]
    [cluster] = [c for c in clusters if c["name"] == "api"]
    return cluster


async def test_push_apply_nack_and_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with running_daemon(data_dir) as (daemon, http):
        assert (await poll(http, wait=0)).status_code == 404  # not registered yet
        await register(http)
        first = await poll(http, wait=TIMEOUT)
        assert first.status_code == 200, first.text
        v1 = first.json()
        assert v1["snapshot"]["version"] == v1["version"]
        assert api_cluster(v1)["lb_policy"] == "round_robin"
        # Running v1 now: nothing new.
        idle = await poll(http, version=v1["version"], hash=v1["hash"], wait=0.2)
        assert idle.status_code == 304

        # A policy change reaches the parked poll.
        async with trio.open_nursery() as nursery:
            answers: list[httpx.Response] = []

            async def parked() -> None:
                answers.append(await poll(http, version=v1["version"], hash=v1["hash"], wait=30))

            nursery.start_soon(parked)
            put = await http.put("/v1/resources", json={"resources": [API_DEFAULTS]})
            assert put.status_code == 200, put.text
            assert put.json()["revision"] == 1
        [second] = answers
        assert second.status_code == 200, second.text
        v2 = second.json()
        assert v2["version"] > v1["version"] and v2["hash"] != v1["hash"]
        assert api_cluster(v2)["lb_policy"] == "random"

        # NACK v2: it is not sent again while the sidecar keeps running v1.
        nack = await http.post(
            "/v1/snapshots/web-1/nack",
            json={"version": v2["version"], "hash": v2["hash"], "error": "cannot bind"},
        )
        assert nack.status_code == 204, nack.text
        again = await poll(http, version=v1["version"], hash=v1["hash"], wait=0.2)
        assert again.status_code == 304
        row = await proxy_row(http)
        assert row["nack"]["error"] == "cannot bind"
        assert row["acked_version"] == v1["version"]
        assert row["latest_version"] == v2["version"]

        # The sidecar ends up running v2 (say, after a fix on its side): that is the ACK.
        acked = await poll(http, version=v2["version"], hash=v2["hash"], wait=0.2)
        assert acked.status_code == 304
        metrics = (await http.get("/metrics")).text
        assert "controld_snapshot_pushes_total 2.0" in metrics
        assert "controld_snapshot_nacks_total 1.0" in metrics
        status = (await http.get("/v1/status")).json()
        assert status["push"]["proxies"] == 1
        assert status["store"]["revision"] >= 1
        assert daemon.hub.descriptor("web-1") is not None

    # Restart with the same data dir: the proxy is unknown until it re-registers, then its
    # current hash keeps its version and nothing is pushed.
    async with running_daemon(data_dir) as (daemon, http):
        assert (await poll(http, version=v2["version"], hash=v2["hash"], wait=0)).status_code == 404
        await register(http)
        after = await poll(http, version=v2["version"], hash=v2["hash"], wait=1.0)
        assert after.status_code == 304, after.text
        # Bound the wait for the first compile (the poll above may have beaten it).
        with trio.fail_after(TIMEOUT):
            while True:
                row = await proxy_row(http)
                if row["latest_version"] is not None:
                    break
                await trio.sleep(0.05)
        assert row["latest_version"] == v2["version"]
        assert row["latest_hash"] == v2["hash"]
        assert row["acked_version"] == v2["version"]
        assert row["connected"] is True
        metrics = (await http.get("/metrics")).text
        assert "controld_snapshot_pushes_total 0.0" in metrics
