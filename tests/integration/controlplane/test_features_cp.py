"""Sidecar features end to end: a real controld, a real ``api`` sidecar and app, and a ``web``
sidecar that enforces less than the policy asks for.

``web-1`` is a real meshd (in-process, so that it can play an older meshd: it enforces every
feature but ``route.mirror`` and declares exactly that on its polls). Then:

1. ``meshctl apply --strict`` of an HTTPRoute with a mirror refuses (exit 1, nothing stored),
   naming the feature, the field path and the sidecar;
2. ``meshctl apply`` stores it with a warning naming the same;
3. ``web-1`` NACKs the snapshot with the field path and keeps routing by the old one;
4. ``meshctl status`` shows the NACK and the unsupported feature in use; ``meshctl explain``
   marks the mirror "NOT ENFORCED by web-1".
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from cp_mesh_support import REPO, TIMEOUT, Api, Apps, Controld, Sidecar, free_ports, wait_for
from helpers import clean_env

from meshcore.model.features import FEATURES
from meshd.sidecar import Sidecar as Meshd

pytestmark = pytest.mark.timeout(120)

#: An older meshd: everything but mirroring.
OLDER = frozenset(FEATURES) - {"route.mirror"}
REFUSAL = "unsupported feature route.mirror at route_tables.0.routes.1.mirror"

POLICY = {
    "apiVersion": "meshd.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "api"},
    "spec": {
        "service": "api",
        "rules": [
            {
                "name": "moved",
                "match": {"path": {"prefix": "/old"}},
                "redirect": {"path": "/new", "status": 308},
            },
            {"name": "copy", "match": {"path": {"prefix": "/"}}, "mirror": {"service": "api"}},
        ],
    },
}


class Processes:
    """What the test started as processes, stopped by PID in :meth:`stop`."""

    def __init__(self, workdir: Path) -> None:
        self.controld = Controld(workdir / "controld")
        self.controld.workdir.mkdir()
        self.apps = Apps(workdir, ("api-1",))
        self.api: Sidecar | None = None

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        self.controld.stop()
        self.apps.stop()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


async def _meshctl(controld: Controld, *args: str) -> tuple[int, str]:
    argv = [sys.executable, "-m", "tui.cli", *args, "--server", controld.url]
    argv += ["--token-file", str(controld.token_file)]
    with trio.fail_after(TIMEOUT):
        done: subprocess.CompletedProcess[bytes] = await trio.run_process(
            argv,
            cwd=str(REPO),
            env=clean_env(),
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )
    return done.returncode, done.stdout.decode() + done.stderr.decode()


def _web_bootstrap(workdir: Path, controld: Controld, token: str, upstream: int) -> Path:
    token_file = workdir / "web-1.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    doc = {
        "service": "web",
        "node": "web-1",
        "app": f"127.0.0.1:{free_ports(1)[0]}",
        "admin": "127.0.0.1:0",
        "upstreams": [{"service": "api", "port": upstream}],
        "drain_timeout_s": 1.0,
        "snapshot": {
            "controld": {
                "url": controld.push_url,
                "token_file": str(token_file),
                "wait_s": 30,
                "timeout_s": 5,
                "retry_max_s": 1.0,
            }
        },
    }
    path = workdir / "web-1.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def _answer(port: int, path: str) -> tuple[int, str]:
    async with httpx.AsyncClient(
        timeout=5.0, limits=httpx.Limits(max_keepalive_connections=0)
    ) as client:
        resp = await client.get(f"http://127.0.0.1:{port}{path}")
    return resp.status_code, resp.text.strip()


async def test_older_sidecar_nacks_and_meshctl_warns(processes: Processes, tmp_path: Path) -> None:
    controld = processes.controld
    await controld.start()
    processes.apps.start()
    api = Api(controld)
    try:
        async with trio.open_nursery() as nursery:
            await _run(processes, api, tmp_path, nursery)
            nursery.cancel_scope.cancel()
    except BaseException:
        if processes.api is not None:
            print(f"--- api-1\n{processes.api.log_tail()}")
        print(f"--- controld\n{controld.log_tail(80)}")
        raise
    finally:
        await api.aclose()


async def _run(procs: Processes, api: Api, workdir: Path, nursery: trio.Nursery) -> None:
    controld = procs.controld
    upstream, inbound = free_ports(2)
    token = str((await api.ok("POST", "/v1/tokens/sidecar", {"service": "api"}))["token"])
    procs.api = Sidecar(
        workdir, "api-1", "api", app_port=procs.apps.ports["api-1"], inbound_port=inbound
    )
    procs.api.write_bootstrap(controld, token)
    await procs.api.start()
    token = str((await api.ok("POST", "/v1/tokens/sidecar", {"service": "web"}))["token"])
    web: Meshd = await nursery.start(
        Meshd(_web_bootstrap(workdir, controld, token, upstream), enforced=OLDER).run
    )

    async def reaches_api() -> bool:
        try:
            return await _answer(upstream, "/old/x") == (200, "api-1")
        except httpx.HTTPError:
            return False

    await wait_for(reaches_api, what="web-1 -> api-1")
    proxies = await api.proxies()
    assert sorted(proxies["web-1"]["features"]) == sorted(OLDER)

    policy = workdir / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY, sort_keys=False))

    # 1. --strict refuses, naming the feature, the field and the sidecar; nothing is stored.
    code, out = await _meshctl(controld, "apply", "--strict", "-f", str(policy))
    assert code == 1, out
    assert REFUSAL in out and "web-1" in out, out
    assert (await api.ok("GET", "/v1/resources"))["resources"] == []

    # 2. Without --strict: stored, with the warning.
    code, out = await _meshctl(controld, "apply", "-f", str(policy))
    print(out)
    assert code == 0, out
    assert "HTTPRoute/api created" in out, out
    assert f"warning: {REFUSAL}: sidecar web-1 (service web)" in out, out

    # 3. web-1 NACKs with the field path and keeps routing by the old snapshot.
    async def nack() -> Any:
        return (await api.proxies())["web-1"]["nack"]

    refused = await wait_for(nack, what="web-1's NACK")
    assert refused["error"] == REFUSAL
    assert await _answer(upstream, "/old/x") == (200, "api-1")
    assert web.control is not None and web.control.last_nack is not None
    row = (await api.proxies())["web-1"]
    assert row["acked_hash"] != row["latest_hash"]
    assert row["unsupported"] == [
        {"feature": "route.mirror", "path": "route_tables.0.routes.1.mirror"}
    ]

    # 4. status and explain say it.
    code, out = await _meshctl(controld, "status")
    print(out)
    assert code == 0, out
    [line] = [x for x in out.splitlines() if x.startswith("web-1")]
    assert f"NACKED: {REFUSAL}" in line and str(len(OLDER)) in line, out
    code, out = await _meshctl(controld, "explain", "web", "api", "--path", "/")
    print(out)
    assert code == 0, out
    assert "sidecar web-1 (source): runs version" in out, out
    assert "route.mirror (route_tables.0.routes.1.mirror): NOT ENFORCED by web-1" in out, out
