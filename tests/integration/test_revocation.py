"""Revoking one instance reaches its peers within seconds (a real controld, real sidecars).

Three sidecars enroll with an in-process controld: ``api`` (a STRICT inbound listener in
front of the test app) and two instances of ``web`` (``web-a`` and ``web-b``, each an
outbound listener with mTLS to ``api``), all following controld's trust bundle. Each web
instance keeps a keep-alive connection busy. ``web-a``'s identity is revoked through the API:
``api`` must refuse it (its open connection reset, new handshakes refused) within 5 s, while
``web-b``, the same service with another identity, keeps being served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from cryptography import x509
from daemon_support import running_daemon, tls_url
from helpers import RawClient, TestApp, port_of, request, start_sidecar
from test_rotation import until, write_api, write_web

from meshd.identity import IdentityService
from meshd.sidecar import Sidecar

pytestmark = pytest.mark.timeout(120)

#: How long a revocation may take to reach the peer (the must-show bound).
REACH_S = 5.0


async def status_of(client: RawClient) -> int | str:
    """One GET through a kept-alive connection: the status, or why it failed."""
    try:
        await client.send(request("GET", "/echo"))
        return (await client.read_response(timeout=10)).status
    except (EOFError, trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
        return type(exc).__name__


async def fresh_status(port: int) -> int | str:
    async with RawClient.connect(port) as client:
        return await status_of(client)


@asynccontextmanager
async def web_and_api(
    tmp_path: Path, app: TestApp
) -> AsyncIterator[tuple[httpx.AsyncClient, Sidecar, Sidecar, Sidecar]]:
    async with running_daemon(tmp_path / "data", push=False) as (daemon, http):
        url = tls_url(daemon)
        api_path = await write_api(tmp_path / "api", http, url, app)
        async with trio.open_nursery() as sidecars:
            api = await start_sidecar(sidecars, api_path)
            webs = []
            for node in ("web-a", "web-b"):
                path = await write_web(tmp_path / node, http, url, api, node=node)
                webs.append(await start_sidecar(sidecars, path))
            await until(
                lambda: all(s.tls.identity is not None for s in (api, *webs)), "all enrolled"
            )
            yield http, api, webs[0], webs[1]
            sidecars.cancel_scope.cancel()


def serial_of(sidecar: Sidecar) -> int:
    identity = sidecar.identity
    assert isinstance(identity, IdentityService) and identity.current is not None
    return x509.load_pem_x509_certificate(identity.current.cert_pem).serial_number


async def test_revoked_instance_is_refused_by_its_peer_within_seconds(
    tmp_path: Path, app: TestApp
) -> None:
    async with (
        web_and_api(tmp_path, app) as (http, api, web_a, web_b),
        RawClient.connect(port_of(web_a, "out")) as via_a,
        RawClient.connect(port_of(web_b, "out")) as via_b,
    ):
        assert await status_of(via_a) == 200
        assert await status_of(via_b) == 200

        listed = (await http.get("/v1/identities", params={"service": "web"})).json()
        by_instance = {i["instance"]: i for i in listed["identities"]}
        assert set(by_instance) == {"web-a", "web-b"}
        target = by_instance["web-a"]
        assert target["serial"] == format(serial_of(web_a), "x")
        assert by_instance["web-b"]["id"] != target["id"]

        revoked = await http.post("/v1/revocations", json={"identity": target["id"]})
        assert revoked.status_code == 200, revoked.text
        # Bounded poll: the callee refuses web-a (its kept-alive connection, then new ones).
        seen: list[int | str] = []
        with trio.move_on_after(REACH_S) as scope:
            while True:
                status = await status_of(via_a)
                seen.append(status)
                if status != 200:
                    break
                await trio.sleep(0.05)
        assert not scope.cancelled_caught, f"web-a still served after {REACH_S} s: {seen[-5:]}"
        for _ in range(3):
            assert await fresh_status(port_of(web_a, "out")) != 200
        assert api.tls.revoked.refused >= 1
        assert api.tls.revoked.reset >= 1
        # The other instance of the same service keeps working, on its open connection too.
        assert await status_of(via_b) == 200
        assert await fresh_status(port_of(web_b, "out")) == 200
        # And the revoked instance can't renew: controld refuses it (its record is revoked).
        assert isinstance(web_a.identity, IdentityService)
        after = (await http.get("/v1/identities", params={"service": "web"})).json()
        states = {i["instance"]: i["revoked"] for i in after["identities"]}
        assert states["web-a"] is not None and states["web-b"] is None
