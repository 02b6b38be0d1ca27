"""Sidecar features through the API: declared on polls, apply warnings and ``strict``,
``/v1/proxies`` and explain's enforcement section."""

from __future__ import annotations

from typing import Any

import pytest
from api_support import Api, serving_api

from controld.compiler import Compiler
from meshcore.model.features import FEATURES, FEATURES_HEADER, format_features

pytestmark = pytest.mark.timeout(30)

DESCRIPTOR: dict[str, Any] = {
    "proxy_id": "web-1",
    "service": "web",
    "upstreams": [{"service": "api", "port": 15001}],
}
#: An older meshd: everything but mirroring.
OLDER = format_features(set(FEATURES) - {"route.mirror"})
MIRROR_ROUTE: dict[str, Any] = {
    "kind": "HTTPRoute",
    "metadata": {"name": "api"},
    "spec": {"service": "api", "rules": [{"name": "copy", "mirror": {"service": "shadow"}}]},
}
WARNING = {
    "proxy_id": "web-1",
    "service": "web",
    "feature": "route.mirror",
    "path": "route_tables.0.routes.0.mirror",
    "message": "unsupported feature route.mirror at route_tables.0.routes.0.mirror: sidecar "
    "web-1 (service web) does not enforce it and would refuse the snapshot",
}


async def _connect(api: Api, features: str | None, proxy: str = "web-1") -> None:
    """Register and poll once (wait 0) as a sidecar declaring ``features``."""
    headers = {} if features is None else {FEATURES_HEADER: features}
    descriptor = {**DESCRIPTOR, "proxy_id": proxy}
    resp = await api.client.post(f"/v1/proxies/{proxy}", json=descriptor, headers=headers)
    assert resp.status_code == 200, resp.text
    resp = await api.client.get(f"/v1/snapshots/{proxy}?wait=0", headers=headers)
    assert resp.status_code == 304, resp.text


def _publish(api: Api) -> None:
    """What the reconciler does: compile the registered proxies, publish."""
    compiled = Compiler().compile_all(
        api.plane.view(), api.plane.resources(), api.plane.hub.descriptors()
    )
    api.plane.hub.publish(compiled, revision=api.plane.resources().revision, changed_at=0.0)


async def test_apply_warns_and_strict_refuses() -> None:
    async with serving_api() as api:
        await _connect(api, OLDER)
        await _connect(api, None, proxy="web-old")  # declares nothing: not judged
        resp = await api.client.put(
            "/v1/resources", json={"resources": [MIRROR_ROUTE], "strict": True}
        )
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"] == "unsupported features (strict)"
        assert resp.json()["problems"] == [
            {
                "document": None,
                "kind": None,
                "name": None,
                "path": WARNING["path"],
                "message": WARNING["message"],
            }
        ]
        assert len(api.plane.store.current) == 0

        resp = await api.client.put(
            "/v1/resources", json={"resources": [MIRROR_ROUTE], "dry_run": True}
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["warnings"] == [WARNING]
        assert len(api.plane.store.current) == 0

        resp = await api.client.put("/v1/resources", json={"resources": [MIRROR_ROUTE]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["warnings"] == [WARNING]
        assert len(api.plane.store.current) == 1


async def test_a_sidecar_that_enforces_it_gets_no_warning() -> None:
    async with serving_api() as api:
        await _connect(api, format_features(FEATURES))
        resp = await api.client.put(
            "/v1/resources", json={"resources": [MIRROR_ROUTE], "strict": True}
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["warnings"] == []


async def test_proxies_and_explain_show_what_the_sidecar_enforces() -> None:
    async with serving_api() as api:
        await _connect(api, OLDER)
        _publish(api)
        latest = api.plane.hub.sidecars()[0].latest_version
        digest = (await api.client.get("/v1/proxies")).json()["proxies"][0]["latest_hash"]
        # The sidecar ACKs the plain snapshot, then the mirror arrives (and it would NACK).
        await api.client.get(
            f"/v1/snapshots/web-1?wait=0&version={latest}&hash={digest}",
            headers={FEATURES_HEADER: OLDER},
        )
        await api.client.put("/v1/resources", json={"resources": [MIRROR_ROUTE]})
        api.plane.store.catch_up()
        _publish(api)

        [row] = (await api.client.get("/v1/proxies")).json()["proxies"]
        assert len(row["features"]) == len(FEATURES) - 1
        assert row["unsupported"] == [
            {"feature": "route.mirror", "path": "route_tables.0.routes.0.mirror"}
        ]

        resp = await api.client.post(
            "/v1/explain", json={"source": "web", "destination": "api", "path": "/"}
        )
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        [sidecar] = doc["sidecars"]
        assert sidecar["proxy_id"] == "web-1"
        assert sidecar["role"] == "source"
        assert sidecar["acked_version"] == latest
        assert sidecar["latest_version"] != latest
        assert sidecar["enforces"] == []  # what it runs has no feature on this path
        assert sidecar["not_enforced"] == [
            {"feature": "route.mirror", "path": "route_tables.0.routes.0.mirror"}
        ]


async def test_sidecars_of_one_shape_are_compiled_once_and_each_warned() -> None:
    async with serving_api() as api:
        for proxy, port in (("web-1", 15001), ("web-2", 16001)):
            descriptor = {
                **DESCRIPTOR,
                "proxy_id": proxy,
                "inbound": f"127.0.0.1:{port + 5}",
                "upstreams": [{"service": "api", "port": port}],
            }
            headers = {FEATURES_HEADER: OLDER}
            resp = await api.client.post(f"/v1/proxies/{proxy}", json=descriptor, headers=headers)
            assert resp.status_code == 200, resp.text
            await api.client.get(f"/v1/snapshots/{proxy}?wait=0", headers=headers)
        resp = await api.client.put(
            "/v1/resources", json={"resources": [MIRROR_ROUTE], "dry_run": True}
        )
        assert [(w["proxy_id"], w["feature"]) for w in resp.json()["warnings"]] == [
            ("web-1", "route.mirror"),
            ("web-2", "route.mirror"),
        ]
