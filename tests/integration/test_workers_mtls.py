"""A worker serves STRICT mTLS with the identity its primary enrolled (real daemon, real TLS).

controld runs in-process with its TLS listener; ``api``'s sidecar (in-process primary, one
worker process, ``workers: 2``, fixed admin ports) enrolls with a join token, ``web``'s sidecar
calls it through its outbound listener. With ``api`` STRICT, requests through ``web`` land on
both of api's processes (new upstream connections spread by SO_REUSEPORT), every one carries
web's verified SPIFFE ID to the app, and the worker counts them and refuses plaintext: the
worker serves mTLS with the certificate it got from the primary over its channel, never
having enrolled itself (one enrollment: the join token is spent once).
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import trio
from daemon_support import TIMEOUT, running_daemon
from helpers import TestApp, app_headers, closed_port, start_sidecar
from process_support import admin_port_pair
from test_mixed_endpoints import WEB_ID, bootstrap, endpoints, registry_token, until

from meshd.sidecar import Sidecar

pytestmark = pytest.mark.timeout(120)


def _inbound_requests(stats: dict[str, object]) -> int:
    return sum(
        int(v)  # type: ignore[call-overload]
        for k, v in stats.items()
        if k.startswith("http.inbound.") and k.endswith(".requests")
    )


async def test_worker_serves_strict_mtls_with_the_primary_identity(
    tmp_path: Path, app: TestApp
) -> None:
    async with running_daemon(tmp_path / "data", push=False) as (daemon, http):
        assert daemon.ports is not None
        inbound, outbound, admin = closed_port(), closed_port(), admin_port_pair()
        api_boot = await bootstrap(
            tmp_path / "api",
            http,
            daemon,
            "api",
            app=f"127.0.0.1:{app.port}",
            inbound=f"127.0.0.1:{inbound}",
            admin=f"127.0.0.1:{admin}",
            workers=2,
            registry={
                "address": daemon.ports.registry_url,
                "service_id": "api-1",
                "token": await registry_token(http, "api"),
            },
        )
        web_boot = await bootstrap(
            tmp_path / "web",
            http,
            daemon,
            "web",
            app=f"127.0.0.1:{closed_port()}",
            upstreams=[{"service": "api", "port": outbound}],
        )
        strict = {
            "kind": "ServiceDefaults",
            "metadata": {"name": "api"},
            "spec": {"mtls": "strict"},
        }
        applied = await http.put("/v1/resources", json={"resources": [strict]})
        assert applied.status_code == 200, applied.text
        async with (
            trio.open_nursery() as nursery,
            httpx.AsyncClient(timeout=TIMEOUT) as admin_client,
        ):
            with trio.fail_after(TIMEOUT):
                api = await start_sidecar(nursery, api_boot)
                web = await start_sidecar(nursery, web_boot)
            await until(lambda: endpoints(web) == [(inbound, False)], "api's endpoint")
            worker_admin = f"http://127.0.0.1:{admin + 1}"

            async def worker_stats() -> dict[str, object]:
                resp = await admin_client.get(f"{worker_admin}/stats")
                assert resp.status_code == 200
                stats: dict[str, object] = resp.json()
                return stats

            with trio.fail_after(TIMEOUT):
                while True:
                    try:
                        stats = await worker_stats()
                    except httpx.HTTPError:
                        await trio.sleep(0.1)
                        continue
                    mtls = stats.get("mtls")
                    if isinstance(mtls, dict) and mtls.get("mode") == "strict":
                        break
                    await trio.sleep(0.1)
            # The worker has the primary's leaf (not one of its own).
            dump = (await admin_client.get(f"{worker_admin}/config_dump")).json()
            assert api.identity is not None and api.tls.identity is not None
            assert dump["identity"]["from_primary"] is True
            assert dump["identity"]["identity"]["spiffe_id"] == api.tls.identity.spiffe_id

            seen: list[dict[str, list[str]]] = []

            async def one(client: httpx.AsyncClient) -> None:
                resp = await client.get("/echo")
                assert resp.status_code == 200, resp.text
                seen.append(app_headers(resp.json()))

            # Concurrent bursts make web open several upstream connections; the kernel spreads
            # them over api's two processes. Bounded: 20 bursts of 8.
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{outbound}", timeout=TIMEOUT
            ) as client:
                for _ in range(20):
                    async with trio.open_nursery() as burst:
                        for _ in range(8):
                            burst.start_soon(one, client)
                    if _inbound_requests(await worker_stats()) and _inbound_requests(
                        api.stats_info()
                    ):
                        break
            stats = await worker_stats()
            assert _inbound_requests(stats) > 0, "no request reached the worker"
            assert _inbound_requests(api.stats_info()) > 0, "no request reached the primary"
            assert seen and all(h.get("x-meshd-peer-identity") == [WEB_ID] for h in seen)

            # Plaintext straight to api's inbound listener: refused by whichever process
            # accepts it; a few tries reach the worker.
            for _ in range(40):
                answer = await trio.to_thread.run_sync(_plaintext_answer, inbound)
                assert not answer.startswith(b"HTTP/1.1 200")
                refused = (await worker_stats())["mtls"]
                if isinstance(refused, dict) and refused.get("plaintext_refused"):
                    break
            mtls = (await worker_stats())["mtls"]
            assert isinstance(mtls, dict) and mtls["plaintext_refused"] > 0
            assert workers_of(api) == [stats["snapshot.version"]]
            nursery.cancel_scope.cancel()


def workers_of(api: Sidecar) -> list[object]:
    """The snapshot versions the primary's ``/stats`` reports for its workers."""
    return [w["version"] for w in api.stats_info().get("workers", [])]


def _plaintext_answer(port: int) -> bytes:
    """What a plaintext HTTP request to ``port`` gets back (b"" when the connection is reset)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"GET /echo HTTP/1.1\r\nHost: api\r\n\r\n")
        try:
            return raw.recv(1024)
        except OSError:
            return b""
