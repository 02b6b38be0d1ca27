"""A real sidecar refuses a snapshot using a feature it doesn't enforce, naming the field,
and keeps serving the one it has: NACKed in controld mode, a refused start or reload with a
snapshot file.

The sidecar plays an older meshd by enforcing every feature but ``route.mirror`` (the
``enforced`` argument of :class:`~meshd.sidecar.Sidecar`): whatever this meshd enforces, the
test keeps a feature to refuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from fake_controld import FakeControld
from helpers import TIMEOUT, TestApp, admin_get, closed_port, port_of, write_sidecar_config

from meshcore.errors import ConfigError
from meshcore.model.features import FEATURES, format_features
from meshd.sidecar import Sidecar

pytestmark = pytest.mark.timeout(60)

TOKEN = "sidecar.web.0123abcd"
#: An older meshd: everything but mirroring.
OLDER = frozenset(FEATURES) - {"route.mirror"}
REFUSAL = "unsupported feature route.mirror at route_tables.0.routes.1.mirror"


def _routes(*, mirrored: bool) -> list[dict[str, Any]]:
    """Route table ``main``; the mirrored version also redirects ``/old``, so which snapshot
    serves shows in the answers."""
    default: dict[str, Any] = {"name": "default", "backends": [{"cluster": "api"}]}
    if not mirrored:
        return [{"name": "main", "routes": [default]}]
    moved = {
        "name": "moved",
        "match": {"path": {"prefix": "/old"}},
        "redirect": {"path": "/new", "status": 308},
    }
    return [{"name": "main", "routes": [moved, {**default, "mirror": {"cluster": "api"}}]}]


def _snapshot(app_port: int, *, mirrored: bool) -> dict[str, Any]:
    return {
        "version": 0,
        "listeners": [
            {
                "name": "api",
                "direction": "outbound",
                "address": "127.0.0.1:0",
                "route_table": "main",
            }
        ],
        "route_tables": _routes(mirrored=mirrored),
        "clusters": [
            {
                "name": "api",
                "service": "api",
                "endpoints": [{"host": "127.0.0.1", "port": app_port}],
            }
        ],
    }


def _controld_bootstrap(directory: Path, controld_port: int) -> Path:
    (directory / "web.token").write_text(TOKEN + "\n")
    doc = {
        "service": "web",
        "app": f"127.0.0.1:{closed_port()}",
        "admin": "127.0.0.1:0",
        "upstreams": [{"service": "api", "port": 15991}],
        "drain_timeout_s": 1,
        "snapshot": {
            "controld": {
                "url": f"http://127.0.0.1:{controld_port}",
                "token_file": "web.token",
                "wait_s": 2,
                "timeout_s": 2,
                "retry_max_s": 0.5,
            }
        },
    }
    path = directory / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def _get(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        with trio.fail_after(TIMEOUT):
            return await client.get(path, follow_redirects=False)


async def test_controld_snapshot_with_an_unsupported_feature_is_nacked(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    fake = FakeControld(token=TOKEN)
    await fake.start(nursery)
    v1 = fake.publish(_snapshot(app.port, mirrored=False))
    h1 = fake.hash
    sidecar: Sidecar = await nursery.start(
        Sidecar(_controld_bootstrap(tmp_path, fake.port), enforced=OLDER).run
    )
    port = port_of(sidecar, "api")
    assert (await _get(port, "/old/x")).json()["path"] == "/old/x"
    # Every poll declares what this sidecar enforces.
    assert fake.poll_features
    assert set(fake.poll_features) == {format_features(OLDER)}

    v2 = fake.publish(_snapshot(app.port, mirrored=True))
    with trio.fail_after(TIMEOUT):
        while not fake.nacks:
            await trio.sleep(0.02)
    assert fake.nacks[0]["version"] == v2
    assert fake.nacks[0]["error"] == REFUSAL
    # The old snapshot serves: no redirect, the request reaches the app.
    answer = await _get(port, "/old/x")
    assert answer.status_code == 200
    assert answer.json()["path"] == "/old/x"
    assert sidecar.runtime is not None and sidecar.runtime.snapshot.version == v1
    # And controld hears the old version reported again.
    await fake.wait_poll(lambda q: q.get("version") == str(v1) and q.get("hash") == h1)
    stats = (await admin_get(sidecar, "/stats")).json()
    assert stats["snapshot.updates.rejected"] == 1
    assert stats["control"]["last_nack"]["error"] == REFUSAL
    dump = (await admin_get(sidecar, "/config_dump")).json()
    assert dump["features"] == sorted(OLDER)


def _file_config(directory: Path, app_port: int, *, mirrored: bool) -> Path:
    doc = _snapshot(app_port, mirrored=mirrored)
    return write_sidecar_config(
        directory,
        service="web",
        app_port=app_port,
        listeners=doc["listeners"],
        clusters=doc["clusters"],
        route_tables=doc["route_tables"],
    )


async def test_a_snapshot_file_with_an_unsupported_feature_is_refused(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    # At start: the sidecar doesn't start, and says why.
    bootstrap = _file_config(tmp_path / "bad", app.port, mirrored=True)
    with pytest.raises(ExceptionGroup) as caught:
        await nursery.start(Sidecar(bootstrap, enforced=OLDER).run)
    assert caught.group_contains(ConfigError, match=REFUSAL)

    # On reload (SIGHUP): the running snapshot stays.
    bootstrap = _file_config(tmp_path / "good", app.port, mirrored=False)
    sidecar: Sidecar = await nursery.start(Sidecar(bootstrap, enforced=OLDER).run)
    port = port_of(sidecar, "api")
    _file_config(tmp_path / "good", app.port, mirrored=True)
    assert sidecar.reload() is False
    answer = await _get(port, "/old/x")
    assert answer.status_code == 200
    assert answer.json()["path"] == "/old/x"
    stats = (await admin_get(sidecar, "/stats")).json()
    assert stats["snapshot.updates.rejected"] == 1

    # The same file is fine for a meshd that enforces mirroring.
    assert set(FEATURES) >= OLDER | {"route.mirror"}
