"""meshd in controld mode against an emulated controld (``fake_controld``): apply, ACK, NACK,
reconnect, cache."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from fake_controld import FakeControld
from helpers import TIMEOUT, TestApp, admin_get, closed_port, port_of

from meshcore.model import Snapshot
from meshcore.model.bootstrap import ControlSource as ControlSourceConfig
from meshcore.model.hashing import document_hash
from meshcore.model.proxy import ProxyDescriptor
from meshd.control.cache import load_cache, write_cache
from meshd.control.source import ControlSource
from meshd.errors import SnapshotRejected
from meshd.sidecar import Sidecar

TOKEN = "sidecar.web.0123abcd"


def snapshot_doc(app_port: int, **extra: Any) -> dict[str, Any]:
    """One outbound HTTP listener ``api`` (port 0) to a cluster at ``app_port``."""
    return {
        "version": 0,
        "listeners": [
            {"name": "api", "direction": "outbound", "address": "127.0.0.1:0", "cluster": "api"}
        ],
        "clusters": [
            {
                "name": "api",
                "service": "api",
                "endpoints": [{"host": "127.0.0.1", "port": app_port}],
            }
        ],
        **extra,
    }


def write_bootstrap(directory: Path, controld_port: int, **controld: Any) -> Path:
    (directory / "web.token").write_text(TOKEN + "\n")
    doc = {
        "service": "web",
        "app": f"127.0.0.1:{closed_port()}",
        "admin": "127.0.0.1:0",
        "inbound": "127.0.0.1:15996",
        "upstreams": [{"service": "api", "port": 15991}],
        "drain_timeout_s": 1,
        "drain_delay_s": 0,
        "snapshot": {
            "controld": {
                "url": f"http://127.0.0.1:{controld_port}",
                "token_file": "web.token",
                "wait_s": 2,
                "timeout_s": 2,
                "retry_max_s": 0.5,
                "cache_file": "web.snapshot.json",
                **controld,
            }
        },
    }
    path = directory / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def get(port: int, path: str = "/hello") -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        with trio.fail_after(TIMEOUT):
            return await client.get(path, follow_redirects=False)


async def wait_until(predicate: Any, what: str) -> None:
    with trio.fail_after(TIMEOUT):
        while not predicate():
            await trio.sleep(0.02)


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeControld:
    controld = FakeControld(token=TOKEN)
    await controld.start(nursery)
    return controld


async def test_first_snapshot_then_update_acked(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp, fake: FakeControld
) -> None:
    v1 = fake.publish(snapshot_doc(app.port))
    sidecar: Sidecar = await nursery.start(Sidecar(write_bootstrap(tmp_path, fake.port)).run)
    # Registered with the descriptor the bootstrap describes.
    descriptor = ProxyDescriptor.model_validate(fake.registrations[0])
    assert descriptor.proxy_id == "web-sidecar"
    assert descriptor.service == "web"
    assert [u.service for u in descriptor.upstreams] == ["api"]
    assert str(descriptor.inbound) == "127.0.0.1:15996"
    assert "hash" not in fake.polls[0]  # first contact reports nothing

    port = port_of(sidecar, "api")
    assert (await get(port)).json()["path"] == "/hello"

    # A second version with a redirect route: applied, then ACKed by the next poll.
    h1 = fake.hash
    await fake.wait_poll(lambda q: q.get("version") == str(v1) and q.get("hash") == h1)
    v2 = fake.publish(
        snapshot_doc(
            app.port,
            listeners=[
                {
                    "name": "api",
                    "direction": "outbound",
                    "address": "127.0.0.1:0",
                    "route_table": "main",
                }
            ],
            route_tables=[
                {
                    "name": "main",
                    "routes": [
                        {
                            "name": "moved",
                            "match": {"path": {"prefix": "/old"}},
                            "redirect": {"path": "/new", "status": 308},
                        },
                        {"name": "default", "backends": [{"cluster": "api"}]},
                    ],
                }
            ],
        )
    )
    h2 = fake.hash
    await fake.wait_poll(lambda q: q.get("version") == str(v2) and q.get("hash") == h2)
    assert sidecar.runtime is not None and sidecar.runtime.snapshot.version == v2
    moved = await get(port, "/old/thing?x=1")
    assert moved.status_code == 308
    assert moved.headers["location"] == f"http://127.0.0.1:{port}/new?x=1"
    assert (await get(port, "/other")).json()["path"] == "/other"

    # The cache holds the applied snapshot, private to its owner.
    cache = tmp_path / "web.snapshot.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    cached = load_cache(cache)
    assert (cached.version, cached.hash) == (v2, h2)

    # The admin API shows the controld state.
    dump = (await admin_get(sidecar, "/config_dump")).json()
    assert dump["control"]["version"] == v2
    assert dump["control"]["connected"] is True
    stats = (await admin_get(sidecar, "/stats")).json()
    assert stats["control"]["hash"] == h2
    assert stats["snapshot.version"] == v2


async def test_bad_snapshots_are_nacked_and_the_old_one_serves(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp, fake: FakeControld
) -> None:
    v1 = fake.publish(snapshot_doc(app.port))
    h1 = fake.hash
    sidecar: Sidecar = await nursery.start(Sidecar(write_bootstrap(tmp_path, fake.port)).run)
    port = port_of(sidecar, "api")

    # Invalid document: a listener naming a cluster that doesn't exist.
    bad = snapshot_doc(app.port)
    bad["listeners"][0]["cluster"] = "nowhere"
    v2 = fake.publish(bad)
    await wait_until(lambda: len(fake.nacks) == 1, "a NACK")
    assert fake.nacks[0]["version"] == v2
    assert fake.nacks[0]["hash"] == fake.hash
    assert "nowhere" in fake.nacks[0]["error"]
    assert (await get(port)).status_code == 200
    await fake.wait_poll(lambda q: q.get("version") == str(v1) and q.get("hash") == h1)

    # Valid but unbindable: a second listener on an address already in use.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        unbindable = snapshot_doc(app.port)
        unbindable["listeners"].append(
            {
                "name": "busy",
                "direction": "outbound",
                "address": f"127.0.0.1:{taken}",
                "cluster": "api",
            }
        )
        v3 = fake.publish(unbindable)
        await wait_until(lambda: len(fake.nacks) == 2, "a second NACK")
    assert fake.nacks[1]["version"] == v3
    assert "cannot bind" in fake.nacks[1]["error"]
    assert sidecar.runtime is not None and sidecar.runtime.snapshot.version == v1
    assert (await get(port)).status_code == 200
    assert sidecar.control is not None
    assert sidecar.control.last_nack is not None
    assert sidecar.control.last_nack["version"] == v3
    stats = (await admin_get(sidecar, "/stats")).json()
    assert stats["snapshot.updates.rejected"] == 2


async def test_keeps_serving_while_controld_is_down_and_reconnects(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp, fake: FakeControld
) -> None:
    v1 = fake.publish(snapshot_doc(app.port))
    h1 = fake.hash
    sidecar: Sidecar = await nursery.start(Sidecar(write_bootstrap(tmp_path, fake.port)).run)
    port = port_of(sidecar, "api")
    control = sidecar.control
    assert control is not None

    await fake.stop()
    await wait_until(lambda: not control.connected, "the sidecar noticing controld is gone")
    assert (await get(port)).status_code == 200
    assert control.last_error

    # A restarted controld forgot every proxy: the sidecar registers again, reports v1.
    fake.forget()
    registrations = len(fake.registrations)
    polls = len(fake.polls)
    await fake.start(nursery)
    await wait_until(lambda: len(fake.registrations) > registrations, "registering again")
    await fake.wait_poll(lambda q: q.get("hash") == h1 and q.get("version") == str(v1))
    assert len(fake.polls) > polls
    await wait_until(lambda: control.connected, "connected again")

    # And pushes flow again.
    v2 = fake.publish({**snapshot_doc(app.port), "mtls": "permissive"})
    await wait_until(
        lambda: sidecar.runtime is not None and sidecar.runtime.snapshot.version == v2, "v2"
    )
    assert (await get(port)).status_code == 200


async def test_starts_from_the_cache_when_controld_is_down(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    doc = snapshot_doc(app.port)
    digest = document_hash(doc)
    write_cache(tmp_path / "web.snapshot.json", 41, digest, doc)
    fake = FakeControld(token=TOKEN, port=closed_port())
    sidecar: Sidecar = await nursery.start(Sidecar(write_bootstrap(tmp_path, fake.port)).run)
    assert sidecar.runtime is not None and sidecar.runtime.snapshot.version == 41
    assert (await get(port_of(sidecar, "api"))).status_code == 200
    control = sidecar.control
    assert control is not None
    assert not control.connected

    # controld comes up with the same content: the sidecar reports the cached version and
    # hash (no push needed), then takes the next change.
    fake.document, fake.hash, fake.version = doc, digest, 41
    await fake.start(nursery)
    await fake.wait_poll(lambda q: q.get("hash") == digest and q.get("version") == "41")
    assert control.applied == 0
    fake.publish({**doc, "mtls": "permissive"})
    await wait_until(lambda: control.applied == 1, "the next snapshot applied")


async def test_sighup_reload_keeps_the_pushed_snapshot_and_reregisters(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp, fake: FakeControld
) -> None:
    v1 = fake.publish(snapshot_doc(app.port))
    boot = write_bootstrap(tmp_path, fake.port)
    sidecar: Sidecar = await nursery.start(Sidecar(boot).run)
    doc = yaml.safe_load(boot.read_text())
    doc["upstreams"].append({"service": "db", "port": 15992})
    doc["access_log"] = {"enabled": True}
    boot.write_text(yaml.safe_dump(doc))
    assert sidecar.reload()
    assert sidecar.runtime is not None and sidecar.runtime.snapshot.version == v1
    assert sidecar.runtime.bootstrap.access_log.enabled
    await wait_until(
        lambda: [u["service"] for u in fake.registrations[-1]["upstreams"]] == ["api", "db"],
        "the new descriptor registered",
    )
    assert (await get(port_of(sidecar, "api"))).status_code == 200

    # Switching to a snapshot file needs a restart: the reload is refused.
    doc["snapshot"] = {"file": "snapshot.yaml"}
    del doc["inbound"], doc["upstreams"]
    (tmp_path / "snapshot.yaml").write_text(yaml.safe_dump(snapshot_doc(app.port)))
    boot.write_text(yaml.safe_dump(doc))
    assert not sidecar.reload()


async def test_control_source_alone(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The service object on its own: 401, 503 backoff, 404 re-registration, NACK bookkeeping,
    malformed answers."""
    fake = FakeControld(token=TOKEN)
    await fake.start(nursery)
    applied: list[Snapshot] = []

    def apply(snapshot: Snapshot) -> None:
        if snapshot.mtls != "disabled":
            raise SnapshotRejected("mtls is not for this test")
        applied.append(snapshot)

    config = ControlSourceConfig(
        url=f"http://127.0.0.1:{fake.port}", wait_s=1, timeout_s=2, retry_max_s=0.2
    )
    descriptor = ProxyDescriptor(proxy_id="p1", service="web")
    source = ControlSource(config, descriptor, apply, token="wrong")
    await nursery.start(source.run)
    await wait_until(lambda: source.failures >= 2, "retries after 401")
    assert source.last_error is not None and "401" in source.last_error
    assert not source.registered

    source.update(config, descriptor, token=TOKEN, cache_file=tmp_path / "c.json")
    fake.publish(snapshot_doc(closed_port()))
    await wait_until(lambda: len(applied) == 1, "first snapshot")
    await wait_until((tmp_path / "c.json").exists, "the cache file")
    assert json.loads((tmp_path / "c.json").read_text())["hash"] == fake.hash

    fake.fail_status = 503
    failures = source.failures
    await wait_until(lambda: source.failures > failures + 1, "backing off on 503")
    assert source.last_error is not None and "503" in source.last_error
    fake.fail_status = None

    fake.forget()
    registrations = len(fake.registrations)
    await wait_until(lambda: len(fake.registrations) > registrations, "registering again")

    fake.publish({**snapshot_doc(closed_port()), "mtls": "strict"})
    await wait_until(lambda: len(fake.nacks) == 1, "the NACK")
    assert fake.nacks[0]["error"] == "mtls is not for this test"
    assert source.version == 1 and source.rejected == 1
    assert len(applied) == 1
    assert os.stat(tmp_path / "c.json").st_size > 0

    # A malformed answer is controld's fault: retried with backoff, not NACKed, and the
    # running snapshot stays.
    fake.garbage = b'{"version":"2","hash":"h","snapshot":{}}'
    failures = source.failures
    await wait_until(lambda: source.failures > failures + 1, "backing off on garbage")
    assert source.last_error is not None and "snapshot answer: version" in source.last_error
    assert len(fake.nacks) == 1 and len(applied) == 1 and source.version == 1


async def test_not_ready_until_the_first_snapshot(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp, fake: FakeControld
) -> None:
    sidecar = Sidecar(write_bootstrap(tmp_path, fake.port, cache_file=None))
    done = trio.Event()

    async def run() -> None:
        await sidecar.run()
        done.set()

    nursery.start_soon(run)
    await wait_until(lambda: sidecar.admin_port is not None and fake.polls, "the first poll")
    assert (await admin_get(sidecar, "/ready")).status_code == 503
    dump = (await admin_get(sidecar, "/config_dump")).json()
    assert dump["control"]["registered"] is True and dump["control"]["version"] is None
    fake.publish(snapshot_doc(app.port))
    await wait_until(sidecar.is_ready, "ready")
    assert (await admin_get(sidecar, "/ready")).status_code == 200
    assert (await get(port_of(sidecar, "api"))).status_code == 200
    sidecar.start_drain()
    with trio.fail_after(TIMEOUT):
        await done.wait()
