"""A controld-mode sidecar with ``workers: 2``: one control session, two serving processes.

controld (embedded registry) and one meshd (``api-1``, registered) in front of a small app
with a slow path. The primary long-polls controld and registers; its worker follows it over
its channel. Shown with real processes:

1. both processes serve: new connections to the inbound listener land on both (each one's
   admin ``/stats`` counts requests);
2. a policy update (``PUT /v1/resources``) reaches both: the same snapshot version in the
   worker's ``/stats`` and in the primary's (which lists its worker's version too), and
   controld has the ACK; one registration only;
3. SIGTERM to the primary drains both: requests in flight on either process finish with 200,
   both processes exit, the listener refuses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from cp_mesh_support import TIMEOUT, Api, Controld, Sidecar, free_ports, wait_for
from helpers import clean_env, stop_process
from process_support import admin_port_pair, child_pids, process_gone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SLOW_APP = """
import http.server, sys, threading, time

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(2.0)
        body = b"api-1\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
print(server.server_address[1], flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def _slow_app(workdir: Path) -> Iterator[int]:
    script = workdir / "slow_app.py"
    script.write_text(SLOW_APP)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        stop_process(proc)


async def _stats(client: httpx.AsyncClient, port: int) -> dict[str, Any]:
    resp = await client.get(f"http://127.0.0.1:{port}/stats")
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def _requests(stats: dict[str, Any]) -> int:
    return sum(
        int(v)
        for k, v in stats.items()
        if k.startswith("http.inbound.") and k.endswith(".requests")
    )


def _active(stats: dict[str, Any]) -> int:
    return sum(int(v) for k, v in stats.items() if k.endswith(".downstream_connections_active"))


async def test_controld_mode_workers(tmp_path: Path) -> None:
    controld = Controld(tmp_path / "controld")
    controld.workdir.mkdir()
    procs: list[int] = []
    sidecar: Sidecar | None = None
    api = Api(controld)
    try:
        await controld.start()
        with _slow_app(tmp_path) as app_port:
            (inbound,) = free_ports(1)
            admin = admin_port_pair()
            token = (await api.ok("POST", "/v1/tokens/sidecar", {"service": "api"}))["token"]
            sidecar = Sidecar(tmp_path, "api-1", "api", app_port, inbound)
            sidecar.write_bootstrap(controld, str(token))
            doc = yaml.safe_load(sidecar.bootstrap_path.read_text())
            doc.update(workers=2, admin=f"127.0.0.1:{admin}", drain_timeout_s=10.0)
            sidecar.bootstrap_path.write_text(yaml.safe_dump(doc, sort_keys=False))
            await sidecar.start()
            assert sidecar.proc is not None
            primary = sidecar.proc.pid
            await wait_for(lambda: len(child_pids(primary)) == 1, what="the worker process")
            (worker,) = child_pids(primary)
            procs += [primary, worker]
            async with httpx.AsyncClient(
                timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0)
            ) as client:
                await _both_serve(client, inbound, admin)
                await _update_reaches_both(client, api, admin, worker)
                await _drain_together(client, sidecar, inbound, admin, primary, worker)
    finally:
        await api.aclose()
        if sidecar is not None:
            sidecar.stop()
        for pid in procs:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
        controld.stop()


async def _both_serve(client: httpx.AsyncClient, inbound: int, admin: int) -> None:
    async def worker_ready() -> bool:
        try:
            return (await client.get(f"http://127.0.0.1:{admin + 1}/ready")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(worker_ready, what="the worker's /ready")

    async def landed_on_both() -> bool:
        for _ in range(10):
            resp = await client.get(f"http://127.0.0.1:{inbound}/")
            assert resp.status_code == 200, resp.text
            assert resp.text == "api-1\n"
        counts = [_requests(await _stats(client, port)) for port in (admin, admin + 1)]
        return all(counts)

    # SO_REUSEPORT spreads new connections by hash: both get some within a few rounds.
    await wait_for(landed_on_both, what="requests on both processes")


async def _update_reaches_both(
    client: httpx.AsyncClient, api: Api, admin: int, worker: int
) -> None:
    before = (await _stats(client, admin))["snapshot.version"]
    mesh = {
        "kind": "Mesh",
        "metadata": {"name": "default"},
        "spec": {"path_with_escaped_slashes": "reject"},
    }
    resp = await api.apply(mesh)
    assert resp.status_code == 200, resp.text

    async def both_on_new() -> tuple[int, dict[str, Any]] | None:
        primary, other = await _stats(client, admin), await _stats(client, admin + 1)
        version = primary["snapshot.version"]
        if version == before or other["snapshot.version"] != version:
            return None
        return version, primary

    version, primary_stats = await wait_for(both_on_new, what="both on the new snapshot")
    # The primary reports its worker's version too (from the worker's answer on the channel).
    workers = await wait_for(
        lambda: _worker_versions(client, admin, version), what="the worker's version at the primary"
    )
    assert [w["pid"] for w in workers] == [worker]
    assert primary_stats["control"]["version"] == version
    # The new policy is in force in the worker.
    dump = (await client.get(f"http://127.0.0.1:{admin + 1}/config_dump")).json()
    assert dump["snapshot"]["version"] == version
    assert dump["snapshot"]["listeners"][0]["path_with_escaped_slashes"] == "reject"

    async def acked() -> bool:
        proxy = (await api.proxies()).get("api-1", {})
        return bool(proxy.get("acked_version") == version)

    await wait_for(acked, what="controld to have the ACK")
    # One control session: the worker never registered itself.
    assert list((await api.proxies()).keys()) == ["api-1"]


async def _worker_versions(
    client: httpx.AsyncClient, admin: int, version: int
) -> list[dict[str, Any]] | None:
    workers: list[dict[str, Any]] = (await _stats(client, admin)).get("workers", [])
    return workers if workers and all(w["version"] == version for w in workers) else None


async def _drain_together(
    client: httpx.AsyncClient,
    sidecar: Sidecar,
    inbound: int,
    admin: int,
    primary: int,
    worker: int,
) -> None:
    results: list[int] = []

    async def slow() -> None:
        resp = await client.get(f"http://127.0.0.1:{inbound}/slow", timeout=20.0)
        results.append(resp.status_code)

    async def both_busy() -> bool:
        counts = [_active(await _stats(client, port)) for port in (admin, admin + 1)]
        return all(counts)

    started = 0
    async with trio.open_nursery() as nursery:
        # New connections spread by SO_REUSEPORT's hash: a wave of four puts some on both
        # processes with probability 7/8; a few waves (bounded) make it certain enough.
        for _ in range(6):
            for _ in range(4):
                nursery.start_soon(slow)
                started += 1
            with trio.move_on_after(1.0):
                while not await both_busy():
                    await trio.sleep(0.05)
                break
        assert await both_busy(), "no wave of requests reached both processes"
        assert sidecar.proc is not None
        sidecar.proc.send_signal(signal.SIGTERM)
    assert results == [200] * started
    await wait_for(
        lambda: process_gone(primary) and process_gone(worker), what="both processes to exit"
    )
    assert sidecar.proc.wait(TIMEOUT) == 0
    with pytest.raises(httpx.ConnectError):
        await client.get(f"http://127.0.0.1:{inbound}/")
