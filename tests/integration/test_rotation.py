"""Leaf and root rotation under continuous load, against a real in-process controld.

Two sidecars enroll with controld (join tokens minted through the admin API; short leaves set
on the daemon's CA service): ``web`` (an outbound listener, mTLS to cluster ``api``) and
``api`` (a STRICT inbound listener in front of the test app); their snapshots come from
files. A bounded load of keep-alive and new-connection clients runs through
client -> web -> (mTLS) -> api -> app while leaves renew, and while the root rotates
(stage, activate, retire), and must see no failed request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from cryptography.hazmat.primitives import serialization
from daemon_support import api_url, running_daemon, tls_url
from helpers import (
    RawClient,
    TestApp,
    app_headers,
    closed_port,
    cluster,
    port_of,
    request,
    start_sidecar,
    write_sidecar_config,
)

from controld.ca.authority import sign_leaf
from controld.daemon import ControlDaemon, DaemonConfig
from controld.registry import RegistryConfig
from meshd.identity import IdentityService
from meshd.identity.csr import build_csr, csr_pem
from meshd.identity.keys import generate_key, key_to_pem
from meshd.identity.material import issued_by
from meshd.net.tls import TlsHandshakeError, tls_connect
from meshd.net.tlsconfig import client_context
from meshd.sidecar import Sidecar
from tui.cli import main as meshctl

TIMEOUT = 30.0
#: Longest a load phase runs (bounded loops).
LOAD_MAX_S = 25.0
CLIENTS_KEEPALIVE = 2
CLIENTS_NEW_CONN = 2
#: Pause between requests of a load client (the whole test shares one Trio thread).
PACE_S = 0.01


@dataclass
class Mesh:
    """controld, its admin client, and the two sidecars."""

    daemon: ControlDaemon
    http: httpx.AsyncClient
    trust_domain: str
    web: Sidecar
    api: Sidecar

    def enrolled(self, sidecar: Sidecar) -> IdentityService:
        assert isinstance(sidecar.identity, IdentityService)
        return sidecar.identity

    def spiffe(self, service: str) -> str:
        return f"spiffe://{self.trust_domain}/ns/default/svc/{service}"


@dataclass
class Load:
    """Counts of the load clients; ``failures`` keeps the first reasons."""

    ok: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    new_connections: int = 0
    stop: trio.Event = field(default_factory=trio.Event)

    def fail(self, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < 10:
            self.failures.append(reason)


async def _one(client: RawClient, load: Load, web_id: str, *, close: bool) -> bool:
    headers = [("Connection", "close")] if close else []
    try:
        await client.send(request("GET", "/echo", headers=headers))
        resp = await client.read_response()
    except (EOFError, trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
        load.fail(f"{type(exc).__name__}: {exc}")
        return False
    if resp.status != 200:
        load.fail(f"HTTP {resp.status}: {resp.body[:200]!r}")
        return False
    seen = app_headers(resp.json()).get("x-meshd-peer-identity")
    if seen != [web_id]:
        load.fail(f"peer identity {seen}")
        return False
    load.ok += 1
    return True


async def keepalive_client(port: int, load: Load, web_id: str) -> None:
    async with RawClient.connect(port) as client:
        while not load.stop.is_set():
            if not await _one(client, load, web_id, close=False):
                return
            await trio.sleep(PACE_S)


async def new_connection_client(port: int, load: Load, web_id: str) -> None:
    while not load.stop.is_set():
        async with RawClient.connect(port) as client:
            load.new_connections += 1
            await _one(client, load, web_id, close=True)
        await trio.sleep(PACE_S)


@asynccontextmanager
async def running_load(mesh: Mesh) -> AsyncIterator[Load]:
    """Load clients through web -> api until the block ends (at most :data:`LOAD_MAX_S`)."""
    load = Load()
    port = port_of(mesh.web, "out")
    web_id = mesh.spiffe("web")
    async with trio.open_nursery() as nursery:
        nursery.cancel_scope.deadline = trio.current_time() + LOAD_MAX_S + TIMEOUT
        for _ in range(CLIENTS_KEEPALIVE):
            nursery.start_soon(keepalive_client, port, load, web_id)
        for _ in range(CLIENTS_NEW_CONN):
            nursery.start_soon(new_connection_client, port, load, web_id)
        try:
            yield load
        finally:
            load.stop.set()


async def join_token(http: httpx.AsyncClient, service: str) -> str:
    resp = await http.post("/v1/tokens/join", json={"service": service, "ttl_s": 600})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["token"])


def identity_section(directory: Path, token: str, url: str) -> dict[str, Any]:
    (directory / "join.token").write_text(token + "\n")
    return {
        "state_dir": "state",
        "join_token_file": "join.token",
        "controld_url": url,
        "rotation_renew_jitter_s": 0.5,
    }


def set_snapshot(directory: Path, **fields: Any) -> None:
    path = directory / "snapshot.yaml"
    doc = yaml.safe_load(path.read_text())
    doc.update(fields)
    path.write_text(yaml.safe_dump(doc))


async def until(predicate: Any, what: str, limit: float = TIMEOUT) -> None:
    """Poll ``predicate()`` until true (bounded)."""
    with trio.move_on_after(limit) as scope:
        while not predicate():
            await trio.sleep(0.05)
    assert not scope.cancelled_caught, f"timed out waiting for {what}"


async def write_api(directory: Path, http: httpx.AsyncClient, url: str, app: TestApp) -> Path:
    """Bootstrap and snapshot of ``api``: a STRICT inbound listener in front of ``app``,
    enrolling with a fresh join token."""
    directory.mkdir()
    path = write_sidecar_config(
        directory,
        service="api",
        app_port=app.port,
        listeners=[{"name": "inbound", "direction": "inbound", "address": "127.0.0.1:0"}],
        extra={"identity": identity_section(directory, await join_token(http, "api"), url)},
    )
    domain = (await http.get("/v1/bundle")).json()["trust_domain"]
    set_snapshot(directory, mtls="strict", identity={"service": "api", "trust_domain": domain})
    return path


async def write_web(
    directory: Path, http: httpx.AsyncClient, url: str, api: Sidecar, **extra: Any
) -> Path:
    """Bootstrap and snapshot of a ``web`` instance: an outbound listener ``out`` with mTLS
    to ``api``, enrolling with a fresh join token; ``extra`` goes into the bootstrap."""
    directory.mkdir()
    domain = (await http.get("/v1/bundle")).json()["trust_domain"]
    section = identity_section(directory, await join_token(http, "web"), url)
    path = write_sidecar_config(
        directory,
        service="web",
        app_port=closed_port(),
        listeners=[
            {"name": "out", "direction": "outbound", "address": "127.0.0.1:0", "cluster": "api"}
        ],
        clusters=[
            cluster(
                "api",
                port_of(api, "inbound"),
                tls={"spiffe_id": f"spiffe://{domain}/ns/default/svc/api"},
            )
        ],
        extra={"identity": section, **extra},
    )
    set_snapshot(directory, mtls="strict", identity={"service": "web", "trust_domain": domain})
    return path


@asynccontextmanager
async def mesh_up(tmp_path: Path, app: TestApp, *, leaf_ttl_s: float) -> AsyncIterator[Mesh]:
    async with running_daemon(tmp_path / "data", push=False, leaf_ttl_s=leaf_ttl_s) as (
        daemon,
        http,
    ):
        url = tls_url(daemon)
        trust_domain = (await http.get("/v1/bundle")).json()["trust_domain"]
        api_path = await write_api(tmp_path / "api", http, url, app)
        async with trio.open_nursery() as sidecars:
            api = await start_sidecar(sidecars, api_path)
            web_path = await write_web(tmp_path / "web", http, url, api)
            web = await start_sidecar(sidecars, web_path)
            mesh = Mesh(daemon, http, trust_domain, web, api)
            await until(
                lambda: web.tls.identity is not None and api.tls.identity is not None,
                "both sidecars enrolled",
            )
            yield mesh
            sidecars.cancel_scope.cancel()


class Leaves:
    """Every distinct leaf a sidecar put in force (followed through ``wait_version``)."""

    def __init__(self) -> None:
        self.seen: dict[str, list[bytes]] = {}

    async def follow(self, name: str, source: IdentityService) -> None:
        certs = self.seen.setdefault(name, [])
        version = 0
        while True:
            current = source.current
            if current is not None and (not certs or certs[-1] != current.cert_pem):
                certs.append(current.cert_pem)
            version = await source.wait_version(version)


async def test_leaf_rotation_under_load(tmp_path: Path, app: TestApp) -> None:
    async with mesh_up(tmp_path, app, leaf_ttl_s=4.0) as mesh, trio.open_nursery() as watch:
        leaves = Leaves()
        watch.start_soon(leaves.follow, "web", mesh.enrolled(mesh.web))
        watch.start_soon(leaves.follow, "api", mesh.enrolled(mesh.api))
        async with running_load(mesh) as load:
            # Each leaf renewed at least twice (three renewals: 50-70 % of 4 s each).
            await until(
                lambda: all(len(leaves.seen.get(n, [])) >= 4 for n in ("web", "api")),
                "three renewals of each sidecar",
                LOAD_MAX_S,
            )
        watch.cancel_scope.cancel()
        [info] = [c for c in mesh.web.clusters_info() if c["name"] == "api"]
        created = sum(int(e["created"]) for e in info["endpoints"])
        # Pooled upstream connections outlive the leaves they were made with: a handful of
        # connections carried the whole load (at most 4 requests in flight at once).
        assert created <= 2 * (CLIENTS_KEEPALIVE + CLIENTS_NEW_CONN)
    assert load.failed == 0, load.failures
    assert load.ok > 0 and load.new_connections > 0
    assert all(len(set(leaves.seen[n])) >= 3 for n in ("web", "api"))


def roots_of(mesh: Mesh, sidecar: Sidecar) -> tuple[bytes, ...]:
    current = mesh.enrolled(sidecar).current
    return () if current is None else current.bundle_pems


def leaf_issued_by(mesh: Mesh, sidecar: Sidecar, root_pem: bytes) -> bool:
    current = mesh.enrolled(sidecar).current
    return current is not None and issued_by(current.cert_pem, root_pem)


async def test_root_rotation_under_load(tmp_path: Path, app: TestApp) -> None:
    async with mesh_up(tmp_path, app, leaf_ttl_s=8.0) as mesh:
        ca = mesh.daemon.identity
        assert ca is not None
        old_id = ca.ca.state.active
        old_root = ca.ca.signer
        # A leaf of the old root that controld never handed out (so it is not outstanding):
        # what a sidecar that missed the rotation would hold.
        stale_key = generate_key()
        stale_leaf = sign_leaf(
            old_root, stale_key.public_key(), mesh.spiffe("web"), ttl=timedelta(hours=1)
        )

        async def rotate(step: str) -> httpx.Response:
            return await mesh.http.post("/v1/ca/rotate", json={"step": step})

        async with running_load(mesh) as load:
            staged = await rotate("stage")
            assert staged.status_code == 200, staged.text
            await until(
                lambda: len(roots_of(mesh, mesh.web)) == 2 and len(roots_of(mesh, mesh.api)) == 2,
                "both sidecars trusting old and new root",
            )
            activated = await rotate("activate")
            assert activated.status_code == 200, activated.text
            new_root = ca.ca.signer.cert_pem().encode()
            await until(
                lambda: (
                    leaf_issued_by(mesh, mesh.web, new_root)
                    and leaf_issued_by(mesh, mesh.api, new_root)
                ),
                "both leaves issued by the new root",
            )
            # Refused while old-root leaves may be out (leaves from before controld started
            # are not tracked until a leaf lifetime has passed); then accepted.
            with trio.fail_after(TIMEOUT):
                while (retired := await rotate("retire")).status_code == 409:
                    assert old_id in retired.json()["error"], retired.text
                    await trio.sleep(0.2)
            assert retired.status_code == 200, retired.text
            assert retired.json()["bundle"] == [ca.ca.state.active]
            await until(
                lambda: (
                    roots_of(mesh, mesh.web) == (new_root,)
                    and roots_of(mesh, mesh.api) == (new_root,)
                ),
                "both sidecars trusting only the new root",
            )
            # Some more load on the new root alone: new connections included.
            before = load.new_connections
            await until(lambda: load.new_connections >= before + 20, "new connections")
        assert load.failed == 0, load.failures
        assert load.ok > 0

        # A client holding a leaf of the retired root is refused by api's STRICT listener.
        stale_pem = stale_leaf.public_bytes(serialization.Encoding.PEM)
        ctx = client_context(stale_pem, key_to_pem(stale_key), ca.ca.signer.cert_pem())
        refused = False
        with trio.fail_after(TIMEOUT):
            try:
                stream = await tls_connect("127.0.0.1", port_of(mesh.api, "inbound"), ctx)
            except TlsHandshakeError:
                refused = True
            else:
                try:
                    await stream.send_all(request("GET", "/echo"))
                    refused = await stream.receive_some() == b""
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    refused = True
                finally:
                    await stream.aclose()
        assert refused
        assert mesh.api.tls.handshake_failed >= 1


async def test_retire_refused_while_leaves_outstanding_and_bundle_push(tmp_path: Path) -> None:
    async with running_daemon(tmp_path / "data", push=False, leaf_ttl_s=2) as (_, http):
        url = api_url(http)
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as anon:
            first = await anon.get("/v1/bundle")
            index = int(first.headers["X-Meshd-Index"])
            assert first.json()["index"] == index and len(first.json()["roots"]) == 1
            assert first.json()["active"] == first.json()["roots"][0]
            # A different index answers at once; the same one waits for a change.
            stale = await anon.get("/v1/bundle", params={"index": index - 1, "wait": "60s"})
            assert stale.json()["index"] == index

            answers: list[httpx.Response] = []

            async def poll() -> None:
                answers.append(await anon.get("/v1/bundle", params={"index": index, "wait": "60s"}))

            async with trio.open_nursery() as polls:
                polls.start_soon(poll)
                await trio.sleep(0.3)
                assert answers == []
                with trio.fail_after(TIMEOUT):  # well before the 60 s wait
                    staged = await http.post("/v1/ca/rotate", json={"step": "stage"})
                    assert staged.status_code == 200, staged.text
            [pushed] = answers
            assert int(pushed.headers["X-Meshd-Index"]) > index
            assert len(pushed.json()["roots"]) == 2

            # A leaf issued by the old root (enrolled after the stage: the old root signs).
            token = await join_token(http, "web")
            key = generate_key()
            enrolled = await anon.post(
                "/v1/enroll", json={"token": token, "csr": csr_pem(build_csr(key))}
            )
            assert enrolled.status_code == 200, enrolled.text
            assert (await http.post("/v1/ca/rotate", json={"step": "activate"})).status_code == 200
            refused = await http.post("/v1/ca/rotate", json={"step": "retire"})
            assert refused.status_code == 409
            message = refused.json()["error"]
            assert "1 leaf certificate(s)" in message and "expires at" in message
            status = (await http.get("/v1/ca")).json()
            assert status["phase"] == "active"
            assert status["roots"][0]["outstanding"]["count"] == 1
            # Once that leaf expired (and controld's blind window after its start passed),
            # retire goes through without force.
            with trio.fail_after(TIMEOUT):
                while (
                    retired := await http.post("/v1/ca/rotate", json={"step": "retire"})
                ).status_code == 409:
                    await trio.sleep(0.2)
            assert retired.status_code == 200, retired.text
            assert (await http.get("/v1/ca")).json()["phase"] == "stable"


async def test_forced_retire_skips_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = DaemonConfig(
        registry=RegistryConfig(data_dir=tmp_path / "data", port=0, node_name="test"),
        admin_port=0,
        push_port=None,
        watch_wait_s=5.0,
    )
    daemon = ControlDaemon(config)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(TIMEOUT):
            ports = await nursery.start(daemon.run)
        url = f"http://127.0.0.1:{ports.admin_port}"
        admin = config.token_path.read_text().strip()
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=TIMEOUT
        ) as http:
            for step in ("stage", "activate"):
                assert (await http.post("/v1/ca/rotate", json={"step": step})).status_code == 200
            # Just started with the default 24 h leaves: leaves from before may be out.
            refused = await http.post("/v1/ca/rotate", json={"step": "retire"})
            assert refused.status_code == 409
            assert "not tracked" in refused.json()["error"]
            # The same through meshctl (synchronous: off the loop that serves the daemon).
            argv = ["--server", url, "--token-file", str(config.token_path)]
            code = await trio.to_thread.run_sync(
                meshctl, [*argv, "ca", "rotate", "--step", "retire"]
            )
            assert code == 1
            assert "not tracked" in capsys.readouterr().err
            code = await trio.to_thread.run_sync(
                meshctl, [*argv, "ca", "rotate", "--step", "retire", "--force"]
            )
            assert code == 0
            code = await trio.to_thread.run_sync(meshctl, [*argv, "ca", "status", "-o", "json"])
            assert code == 0
            out = capsys.readouterr().out
            status = json.loads(out[out.index("{\n") :])
            assert status["phase"] == "stable" and len(status["roots"]) == 1
        daemon.shutdown_nowait()


async def test_expired_leaf_is_not_offered_and_strict_refuses(tmp_path: Path, app: TestApp) -> None:
    async with mesh_up(tmp_path, app, leaf_ttl_s=3.0) as mesh:
        # controld goes away: no renewal, both leaves run out.
        mesh.daemon.shutdown_nowait()
        await until(lambda: mesh.web.tls.lost and mesh.api.tls.lost, "both leaves expired")
        seen = app.requests
        async with RawClient.connect(port_of(mesh.web, "out")) as client:
            await client.send(request("GET", "/echo"))
            resp = await client.read_response()
        # Neither offers its expired certificate: api's STRICT listener refuses every
        # connection (no plaintext fallback), web reports a TLS failure.
        assert resp.status == 502 and b"upstream_tls_failed" in resp.body, resp.body
        assert app.requests == seen
        assert mesh.api.tls.no_identity_refused >= 1
