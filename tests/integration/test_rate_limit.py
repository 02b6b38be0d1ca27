"""Local rate limits through a real sidecar: 429 with retry-after beyond the burst on http
listeners, connection-rate limits on tcp listeners (issue 12).

Refill rates are tiny (one token per 100 s), so no token comes back while a test runs: what
the client got and what the app saw depend on counts only, never on timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from helpers import (
    TIMEOUT,
    RawClient,
    RawServer,
    TestApp,
    admin_get,
    closed_port,
    cluster,
    echo_until_eof,
    port_of,
    request,
    start_sidecar,
    write_sidecar_config,
)
from mtls_ca import TRUST_DOMAIN, MiniCA, make_ca, spiffe

from meshd.sidecar import Sidecar

pytestmark = pytest.mark.timeout(60)

SLOW = 0.01  # requests per second: one token per 100 s


def _write(
    directory: Path,
    app_port: int,
    rate_limits: list[dict[str, Any]],
    *,
    protocol: str = "http",
    version: int = 1,
) -> Path:
    path = write_sidecar_config(
        directory,
        service="api",
        app_port=app_port,
        listeners=[
            {
                "name": "inbound",
                "direction": "inbound",
                "address": "127.0.0.1:0",
                "protocol": protocol,
            }
        ],
        version=version,
    )
    snapshot_file = directory / "snapshot.yaml"
    snapshot = yaml.safe_load(snapshot_file.read_text())
    snapshot["rate_limits"] = rate_limits
    snapshot_file.write_text(yaml.safe_dump(snapshot))
    return path


async def _start(nursery: trio.Nursery, path: Path) -> tuple[Sidecar, int]:
    sidecar = await start_sidecar(nursery, path)
    return sidecar, port_of(sidecar, "inbound")


async def _statuses(client: RawClient, target: str, count: int, **kw: Any) -> list[int]:
    out = []
    for _ in range(count):
        await client.send(request(kw.get("method", "GET"), target, body=kw.get("body")))
        response = await client.read_response()
        out.append(response.status)
        if response.status == 429:
            assert response.header("retry-after") == "100"
            assert response.header("x-meshd-error") == "rate_limited"
    return out


async def _ping(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read its echo; b"" if the connection was closed
    or reset instead."""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            got = b""
            try:
                await stream.send_all(data)
                while len(got) < len(data):
                    piece = await stream.receive_some(65536)
                    if not piece:
                        break
                    got += piece
            except trio.BrokenResourceError:
                pass
            return got


async def _metric(sidecar: Sidecar, rule: str) -> float:
    text = (await admin_get(sidecar, "/metrics")).text
    for line in text.splitlines():
        if line.startswith("meshd_rate_limited_total{") and f'rate_limit="{rule}"' in line:
            assert 'listener="inbound"' in line
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_requests_beyond_the_burst_get_429_and_never_reach_the_app(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    path = _write(
        tmp_path,
        app.port,
        [
            {"name": "all", "requests_per_second": SLOW, "burst": 5},
            {
                "name": "uploads",
                "requests_per_second": SLOW,
                "burst": 1,
                "match": {"path": {"prefix": "/upload"}, "methods": ["POST"]},
            },
        ],
    )
    sidecar, port = await _start(nursery, path)
    async with RawClient.connect(port) as client:
        # One upload passes; the next is refused by "uploads" alone and takes no token of "all".
        assert await _statuses(client, "/upload", 2, method="POST", body=b"x" * 10) == [200, 429]
        # The keep-alive connection survives a 429: 4 tokens of "all" are left.
        assert await _statuses(client, "/echo", 6) == [200, 200, 200, 200, 429, 429]
    assert app.requests == 5
    assert app.paths == ["/upload", "/echo", "/echo", "/echo", "/echo"]
    assert await _metric(sidecar, "uploads") == 1
    assert await _metric(sidecar, "all") == 2
    assert sidecar.stats.policy.value("meshd_rate_limited", "inbound", "all") == 2


async def test_buckets_survive_a_reload_unless_the_rule_changes(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    limit = {"name": "all", "requests_per_second": SLOW, "burst": 2}
    path = _write(tmp_path, app.port, [limit])
    sidecar, port = await _start(nursery, path)
    async with RawClient.connect(port) as client:
        assert await _statuses(client, "/a", 3) == [200, 200, 429]
        _write(tmp_path, app.port, [limit], version=2)
        assert sidecar.reload()
        assert sidecar.runtime is not None and sidecar.runtime.snapshot.version == 2
        # Same rule: same (empty) bucket, also for the open connection's next request.
        assert await _statuses(client, "/a", 1) == [429]
        _write(tmp_path, app.port, [{**limit, "burst": 3}], version=3)
        assert sidecar.reload()
        # A changed rule starts with a full bucket.
        assert await _statuses(client, "/a", 4) == [200, 200, 200, 429]
    assert app.requests == 5


async def test_tcp_listener_limits_the_connection_rate(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    echo = RawServer(echo_until_eof)
    await nursery.start(echo.run)
    path = _write(
        tmp_path,
        echo.port,
        [{"name": "conns", "requests_per_second": SLOW, "burst": 2}],
        protocol="tcp",
    )
    sidecar, port = await _start(nursery, path)
    echoed = [await _ping(port, b"ping %d" % i) for i in range(4)]
    assert echoed == [b"ping 0", b"ping 1", b"", b""]
    # The refused connections never reached the upstream.
    assert echo.connections == 2
    assert sidecar.stats.policy.value("meshd_rate_limited", "inbound", "conns") == 2
    assert await _metric(sidecar, "conns") == 2


async def test_tcp_listener_refuses_a_rate_limit_with_a_match(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    echo = RawServer(echo_until_eof)
    await nursery.start(echo.run)
    path = _write(tmp_path, echo.port, [], protocol="tcp")
    sidecar, port = await _start(nursery, path)
    _write(
        tmp_path,
        echo.port,
        [
            {
                "name": "by-path",
                "requests_per_second": 1,
                "burst": 1,
                "match": {"path": {"prefix": "/x"}},
            }
        ],
        protocol="tcp",
        version=2,
    )
    assert not sidecar.reload()
    assert sidecar.runtime is not None and sidecar.runtime.snapshot.version == 1
    # The snapshot in service keeps serving.
    assert await _ping(port, b"still") == b"still"


async def test_per_source_buckets_by_client_address_without_mtls(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    path = _write(
        tmp_path,
        app.port,
        [{"name": "each", "requests_per_second": SLOW, "burst": 1, "per_source": True}],
    )
    _, port = await _start(nursery, path)
    statuses = {}
    for local in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local)
        async with stream:
            statuses[local] = await _statuses(RawClient(stream), "/a", 2)
    # Each client address has a bucket of its own.
    assert statuses == {a: [200, 429] for a in ("127.0.0.1", "127.0.0.2", "127.0.0.3")}
    assert app.requests == 3


IDENTITY = {
    "state_dir": "state",
    "static": {"cert_file": "cert.pem", "key_file": "key.pem", "bundle_file": "bundle.pem"},
}


def _with_identity(directory: Path, ca: MiniCA, service: str, **snapshot: Any) -> None:
    leaf = ca.service(service)
    (directory / "cert.pem").write_bytes(leaf.cert_pem)
    (directory / "key.pem").write_bytes(leaf.key_pem)
    (directory / "bundle.pem").write_bytes(ca.root_pem)
    path = directory / "snapshot.yaml"
    doc = yaml.safe_load(path.read_text())
    doc.update(identity={"service": service, "trust_domain": TRUST_DOMAIN}, **snapshot)
    path.write_text(yaml.safe_dump(doc))


async def test_per_source_buckets_by_peer_identity_over_mtls(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    """Two calling services behind sidecars on the same address: one bucket each, by the
    SPIFFE ID of their certificates."""
    ca = make_ca()
    api_dir = tmp_path / "api"
    write_sidecar_config(
        api_dir,
        service="api",
        app_port=app.port,
        listeners=[{"name": "inbound", "direction": "inbound", "address": "127.0.0.1:0"}],
        extra={"identity": IDENTITY},
    )
    _with_identity(
        api_dir,
        ca,
        "api",
        mtls="strict",
        rate_limits=[{"name": "each", "requests_per_second": SLOW, "burst": 2, "per_source": True}],
    )
    api = await start_sidecar(nursery, api_dir / "bootstrap.yaml")
    ports = {}
    for name in ("web", "batch"):
        path = write_sidecar_config(
            tmp_path / name,
            service=name,
            app_port=closed_port(),
            listeners=[
                {"name": "out", "direction": "outbound", "address": "127.0.0.1:0", "cluster": "api"}
            ],
            clusters=[cluster("api", port_of(api, "inbound"), tls={"spiffe_id": spiffe("api")})],
            extra={"identity": IDENTITY},
        )
        _with_identity(tmp_path / name, ca, name, mtls="strict")
        ports[name] = port_of(await start_sidecar(nursery, path), "out")
    async with RawClient.connect(ports["web"]) as client:
        assert await _statuses(client, "/a", 3) == [200, 200, 429]
    async with RawClient.connect(ports["batch"]) as client:
        assert await _statuses(client, "/a", 3) == [200, 200, 429]
    assert app.requests == 4
    assert api.stats.policy.value("meshd_rate_limited", "inbound", "each") == 2
