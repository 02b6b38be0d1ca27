"""End to end: controld pushes policy to real meshd sidecars in front of real apps.

The mesh: ``web`` (upstreams ``api`` and ``db``), ``api`` with two instances tagged ``v1`` and
``v2``, and ``db``; each app has a meshd sidecar in controld mode that registers it in
controld's embedded registry. All on 127.0.0.1, every process stopped by PID at the end.

Steps (one test, since each builds on the mesh the previous ones set up):

1. traffic through web's outbound listeners reaches both api instances and db;
2. a ServiceResolver (subsets v1/v2) and an HTTPRoute (applied with ``meshctl apply -f``)
   move traffic to 100% v1, then 80/20 (tolerant count), then 100% v2;
3. invalid policy is refused with 422 and a field path, and nothing changes;
4. a snapshot the sidecar can't load (web re-registered with an upstream port a test socket
   holds) is NACKed: ``GET /v1/proxies`` shows the error while traffic flows on the old one;
5. controld restarts (SIGTERM, same data dir and ports) under continuous traffic with no
   failed request; the sidecars reconnect and ACK, and the policy is still there.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from cp_mesh_support import (
    REPO,
    TIMEOUT,
    Api,
    Apps,
    Controld,
    Sidecar,
    free_ports,
    wait_for,
)
from helpers import clean_env

APP_IDS = ("web-1", "api-1", "api-2", "db-1")


class Mesh:
    """Everything the test started, stopped by PID in :meth:`stop`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.controld = Controld(workdir / "controld")
        self.controld.workdir.mkdir()
        self.apps = Apps(workdir, APP_IDS)
        self.sidecars: dict[str, Sidecar] = {}
        self.held: list[socket.socket] = []

    def stop(self) -> None:
        """Sidecars first (they deregister), then controld and the apps."""
        for sidecar in self.sidecars.values():
            sidecar.stop()
        self.controld.stop()
        self.apps.stop()
        for sock in self.held:
            sock.close()

    def sidecar(self, name: str) -> Sidecar:
        """The sidecar ``name``."""
        return self.sidecars[name]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    """The processes of the test, stopped by PID however the test ends."""
    m = Mesh(tmp_path)
    try:
        yield m
    finally:
        m.stop()


# -- helpers --------------------------------------------------------------------------------


def _client() -> httpx.AsyncClient:
    """A client opening a connection per request.

    meshd serves a connection with the configuration in force when it was accepted, so a
    route change reaches new connections only; every request here is a new connection.
    """
    return httpx.AsyncClient(timeout=5.0, limits=httpx.Limits(max_keepalive_connections=0))


async def _ident(client: httpx.AsyncClient, port: int, path: str = "/") -> str:
    resp = await client.get(f"http://127.0.0.1:{port}{path}")
    assert resp.status_code == 200, f"port {port}: {resp.status_code} {resp.text}"
    return resp.text.strip()


async def _idents(client: httpx.AsyncClient, port: int, count: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        seen[await _ident(client, port)] += 1
    return seen


async def _wait_only(client: httpx.AsyncClient, port: int, ident: str, what: str) -> None:
    """Wait until 20 requests in a row reach ``ident`` (the new snapshot is in service)."""
    streak = 0

    async def streak_of_20() -> bool:
        nonlocal streak
        try:
            got = await _ident(client, port)
        except (httpx.HTTPError, AssertionError):
            got = ""
        streak = streak + 1 if got == ident else 0
        return streak >= 20

    await wait_for(streak_of_20, what=what, every=0.02)


def _resolver() -> dict[str, Any]:
    return {
        "apiVersion": "meshd.io/v1",
        "kind": "ServiceResolver",
        "metadata": {"name": "api"},
        "spec": {"subsets": {"v1": {"tags": ["v1"]}, "v2": {"tags": ["v2"]}}},
    }


def _split(v1: int, v2: int) -> dict[str, Any]:
    return {
        "apiVersion": "meshd.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "api-split"},
        "spec": {
            "service": "api",
            "rules": [
                {
                    "name": "split",
                    "match": {"path": {"prefix": "/"}},
                    "backends": [
                        {"subset": "v1", "weight": v1},
                        {"subset": "v2", "weight": v2},
                    ],
                }
            ],
        },
    }


async def _meshctl(controld: Controld, *args: str) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-m", "tui.cli", *args, "--server", controld.url]
    argv += ["--token-file", str(controld.token_file)]
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            argv,
            cwd=str(REPO),
            env=clean_env(),
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )


async def _all_acked(api: Api, names: list[str]) -> bool:
    proxies = await api.proxies()
    for name in names:
        p = proxies.get(name)
        if p is None or not p["connected"] or p["acked_hash"] is None:
            return False
        if p["acked_hash"] != p["latest_hash"]:
            return False
    return True


# -- the test -------------------------------------------------------------------------------


async def test_control_plane_end_to_end(mesh: Mesh) -> None:
    controld = mesh.controld
    await controld.start()
    mesh.apps.start()
    api = Api(controld)
    try:
        await _run(mesh, api)
    except BaseException:
        for sidecar in mesh.sidecars.values():
            print(f"--- {sidecar.name}\n{sidecar.log_tail()}")
        print(f"--- controld\n{controld.log_tail(80)}")
        raise
    finally:
        await api.aclose()


async def _run(mesh: Mesh, api: Api) -> None:
    controld = mesh.controld
    ports = iter(free_ports(6))
    apps = mesh.apps.ports
    web_up = {"api": next(ports), "db": next(ports)}
    layout = [
        ("web-1", "web", (), web_up),
        ("api-1", "api", ("v1",), {}),
        ("api-2", "api", ("v2",), {}),
        ("db-1", "db", (), {}),
    ]
    tokens: dict[str, str] = {}
    for name, service, tags, upstreams in layout:
        if service not in tokens:
            doc = await api.ok("POST", "/v1/tokens/sidecar", {"service": service})
            tokens[service] = str(doc["token"])
        sidecar = Sidecar(
            mesh.workdir,
            name,
            service,
            app_port=apps[name],
            inbound_port=next(ports),
            upstreams=dict(upstreams),
            tags=tuple(tags),
        )
        sidecar.write_bootstrap(controld, tokens[service])
        mesh.sidecars[name] = sidecar
    # Started together: a sidecar is ready once its first snapshot is applied.
    async with trio.open_nursery() as nursery:
        for sidecar in mesh.sidecars.values():
            nursery.start_soon(sidecar.start)

    async with _client() as client:
        await _step1_traffic(mesh, client)
        await _step2_split(mesh, api, client)
        await _step3_invalid(api, client, web_up["api"])
        await _step4_nack(mesh, api, client, tokens["web"])
        await _step5_restart(mesh, api, web_up["api"])


async def _step1_traffic(mesh: Mesh, client: httpx.AsyncClient) -> None:
    web = mesh.sidecar("web-1")
    seen: set[str] = set()

    async def both_api() -> bool:
        with contextlib.suppress(httpx.HTTPError, AssertionError):
            seen.add(await _ident(client, web.upstreams["api"]))
        return {"api-1", "api-2"} <= seen

    await wait_for(both_api, what="web -> api reaching both instances", every=0.05)
    assert seen == {"api-1", "api-2"}, seen

    async def db() -> bool:
        try:
            return await _ident(client, web.upstreams["db"]) == "db-1"
        except (httpx.HTTPError, AssertionError):
            return False

    await wait_for(db, what="web -> db")


async def _step2_split(mesh: Mesh, api: Api, client: httpx.AsyncClient) -> None:
    port = mesh.sidecar("web-1").upstreams["api"]
    policy = mesh.workdir / "policy.yaml"
    policy.write_text(yaml.safe_dump_all([_resolver(), _split(100, 0)], sort_keys=False))
    done = await _meshctl(mesh.controld, "apply", "-f", str(policy))
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    await _wait_only(client, port, "api-1", "100% v1")
    assert await _idents(client, port, 50) == Counter({"api-1": 50})

    resp = await api.apply(_split(80, 20))
    assert resp.status_code == 200, resp.text

    async def some_v2() -> bool:
        return await _ident(client, port) == "api-2"

    await wait_for(some_v2, what="80/20 split in service", every=0.02)
    seen = await _idents(client, port, 200)
    assert set(seen) <= {"api-1", "api-2"}, seen
    # 160 expected; the bounds are over 5 standard deviations away.
    assert 130 <= seen["api-1"] <= 190, seen

    resp = await api.apply(_split(0, 100))
    assert resp.status_code == 200, resp.text
    await _wait_only(client, port, "api-2", "100% v2")
    assert await _idents(client, port, 50) == Counter({"api-2": 50})


async def _step3_invalid(api: Api, client: httpx.AsyncClient, port: int) -> None:
    before = await api.ok("GET", "/v1/resources")
    bad_weight = _split(0, 100)
    bad_weight["spec"]["rules"][0]["backends"][0]["weight"] = -1
    resp = await api.apply(bad_weight)
    assert resp.status_code == 422, resp.text
    problems = resp.json()["problems"]
    assert any(p["path"] == "spec.rules.0.backends.0.weight" for p in problems), problems

    unknown_subset = _split(0, 100)
    unknown_subset["spec"]["rules"][0]["backends"][1]["subset"] = "v3"
    resp = await api.apply(unknown_subset)
    assert resp.status_code == 422, resp.text
    problems = resp.json()["problems"]
    assert problems, resp.text
    assert all(p["path"] for p in problems), problems
    assert any("v3" in p["message"] for p in problems), problems

    after = await api.ok("GET", "/v1/resources")
    assert after == before
    assert await _idents(client, port, 20) == Counter({"api-2": 20})


async def _step4_nack(mesh: Mesh, api: Api, client: httpx.AsyncClient, web_token: str) -> None:
    web = mesh.sidecar("web-1")
    held = socket.socket()
    mesh.held.append(held)
    held.bind(("127.0.0.1", 0))
    held.listen()
    taken = held.getsockname()[1]
    before = (await api.proxies())["web-1"]
    assert before["nack"] is None, before

    # web-1 "re-registers" with db's outbound listener on a port that is in use: the compiled
    # snapshot is valid, but the sidecar can't bind it.
    broken = web.descriptor()
    for upstream in broken["upstreams"]:
        if upstream["service"] == "db":
            upstream["port"] = taken
    await api.ok("POST", "/v1/proxies/web-1", broken, token=web_token)

    async def nacked() -> dict[str, Any] | None:
        nack: dict[str, Any] | None = (await api.proxies())["web-1"]["nack"]
        return nack

    nack = await wait_for(nacked, what="web-1 NACK in /v1/proxies")
    assert nack["error"], nack
    print(f"step 4: web-1 NACK: {nack}")
    assert str(taken) in nack["error"] or "in use" in nack["error"].lower(), nack
    # Still serving the old snapshot: both outbound listeners answer as before.
    assert await _idents(client, web.upstreams["api"], 20) == Counter({"api-2": 20})
    assert await _ident(client, web.upstreams["db"]) == "db-1"
    state = (await api.proxies())["web-1"]
    assert state["acked_hash"] == before["acked_hash"], state
    assert state["latest_hash"] != state["acked_hash"], state

    # The sidecar's real descriptor again: the running snapshot is the compiled one once more.
    await api.ok("POST", "/v1/proxies/web-1", web.descriptor(), token=web_token)
    await wait_for(lambda: _all_acked(api, ["web-1"]), what="web-1 back in step")
    held.close()


async def _step5_restart(mesh: Mesh, api: Api, port: int) -> None:
    controld = mesh.controld
    names = list(mesh.sidecars)
    await wait_for(lambda: _all_acked(api, names), what="every sidecar acked before restart")
    resources_before = await api.ok("GET", "/v1/resources")
    acked_before = {n: p["acked_version"] for n, p in (await api.proxies()).items()}
    ok = 0
    failures: list[str] = []
    stop = trio.Event()

    async def traffic() -> None:
        nonlocal ok
        async with _client() as client:
            # Bounded: at most 20000 requests or 120 s, whichever comes first.
            with trio.move_on_after(120):
                for _ in range(20000):
                    if stop.is_set():
                        return
                    try:
                        got = await _ident(client, port)
                    except (httpx.HTTPError, AssertionError) as exc:
                        failures.append(repr(exc))
                        continue
                    if got == "api-2":
                        ok += 1
                    else:
                        failures.append(f"reached {got}")
                    await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(traffic)
        await trio.sleep(0.5)
        code = await _stop_async(controld)
        assert code == 0, f"controld exited {code}:\n{controld.log_tail()}"
        await trio.sleep(1.0)  # sidecars serve on without controld
        await controld.start()
        await wait_for(lambda: _all_acked(api, names), what="every sidecar reconnected and acked")
        await trio.sleep(1.0)
        stop.set()
    print(f"step 5: {ok} requests during the restart, {len(failures)} failed")
    assert ok > 0
    assert failures == [], failures[:10]
    assert await api.ok("GET", "/v1/resources") == resources_before
    proxies = await api.proxies()
    assert all(proxies[n]["connected"] for n in names), proxies
    # Same inputs, same snapshots: the restarted controld adopts what the sidecars run.
    assert {n: p["acked_version"] for n, p in proxies.items()} == acked_before


async def _stop_async(controld: Controld) -> int | None:
    """SIGTERM controld and wait without blocking the traffic task (SIGKILL after the bound)."""
    proc = controld.proc
    assert proc is not None
    proc.terminate()
    with trio.move_on_after(TIMEOUT):
        while proc.poll() is None:
            await trio.sleep(0.05)
    code = controld.stop()  # SIGKILLs it if it still runs
    return code
